"""The graph `optimized` variant: multipliers tuned on a proxy, certified at full size (lipcore.graph.tune)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_graph_fourier import _lower, _nets
from torch import nn

from lipcore.graph import bounds as gb
from lipcore.graph import build_graph
from lipcore.graph import engine as fourier
from lipcore.graph import tune as gt
from lipcore.variants import Context

CPU = torch.device("cpu")


class Pooled(nn.Module):
    """Conv net with global pooling: traces at any input size."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(x + self.c2(x))
        x = torch.relu(self.c3(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Flat(nn.Module):
    """A classifier on the flattened map: only traces at its own size."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 48 * 48, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c(x)).flatten(1))


@pytest.mark.parametrize("idx", [0, 1, 2, 3])
def test_optimized_is_sound_and_beats_the_closed_form_members(idx: int) -> None:
    name, m, shape = _nets()[idx]
    g = build_graph(m, shape, name=name)
    ctx = Context()
    ef, _ = gb.eclipse_fast(g, ctx)
    sp, _ = gb.sh_spectral(g, ctx)
    op, p = gb.optimized(g, Context())
    assert _lower(m, shape) <= op
    assert op < 0.95 * sp < ef  # 26.9/35.2, 842/1002, 1349/1778, 10.3/13.0 (idx 2: gradients through a restart)
    vals = p["proxy_values"]
    assert len(vals) == 9 and min(vals) < 0.95 * vals[0]
    assert p["proxy"] == "the model itself" and p["backoffs"] == 0
    both, _ = gb.optimized(g, ctx)  # with the closed-form runs in the same analyze(): never worse than them
    assert both <= min(sp, ef)


def test_a_worse_step_is_taken_back_at_half_the_rate() -> None:
    name, m, shape = _nets()[1]
    g = build_graph(m, shape, name=name)
    grids, _ = fourier.plan(g, CPU)
    rule, info = gt.tune(g, grids, CPU, steps=8, lr=1.5, seconds=None, check=lambda: None)
    vals = info["proxy_values"]
    assert info["backtracks"] >= 1 and len(vals) == 9
    worse = [i for i in range(1, 9) if vals[i] >= min(vals[:i])]
    assert len(worse) == info["backtracks"]
    final, _ = fourier.run_recursion(g, rule, CPU)  # the rule kept is the best point seen
    assert final == pytest.approx(min(vals), rel=2e-3)


def test_untuned_rule_is_sh_spectral() -> None:
    """Start of the tuning: c = 1.35, U = I, i.e. the sh-spectral member."""
    name, m, shape = _nets()[1]
    g = build_graph(m, shape, name=name)
    sp, _ = gb.sh_spectral(g, Context())
    start, _ = fourier.run_recursion(g, gt.TunedRule(), CPU)
    assert start == pytest.approx(sp, rel=2e-3)  # power estimates of 30 vs 8 steps choose slightly different Lambda


def test_differentiable_run_is_the_bound_and_its_gradient() -> None:
    name, m, shape = _nets()[2]  # with a max-pool restart: the gradient flows through sigma^2
    g = build_graph(m, shape, name=name)
    grids, _ = fourier.plan(g, CPU)
    rule = gt.TunedRule(differentiable=True, power_iters=0)

    def bound(diff: bool) -> torch.Tensor | float:
        return fourier.Engine(g, rule, CPU, dry=False, grids=grids).run(differentiable=diff)

    val = bound(True)
    assert float(val.detach()) == pytest.approx(bound(False), rel=1e-5)  # certified lambda_max is inflated by ~1e-6
    val.backward()
    name0 = next(iter(rule.params))
    a, z = rule.params[name0]
    ga, gz = float(a.grad), z.grad.clone()
    with torch.no_grad():
        a += 1e-5
        hi = float(bound(True))
        a -= 2e-5
        lo = float(bound(True))
        a += 1e-5
    assert ga == pytest.approx((hi - lo) / 2e-5, rel=1e-3, abs=1e-6 * float(val.detach()))
    assert torch.isfinite(gz).all() and float(gz.abs().max()) > 0


def test_proxy_is_the_model_at_a_small_input_or_the_model_itself() -> None:
    torch.manual_seed(0)
    pooled = build_graph(Pooled().eval(), (3, 96, 96), name="pooled")
    pg, what = gt.proxy_graph(pooled, 64)
    assert pg.input_shape == (3, 64, 64) and "traced at input (3, 64, 64)" in what
    assert gt.proxy_graph(pooled, 128)[0] is pooled
    flat = build_graph(Flat().eval(), (3, 96, 96), name="flat")
    pg, what = gt.proxy_graph(flat, 64)
    assert pg is flat and what.startswith("the model itself (")


def test_multipliers_tuned_on_the_proxy_certify_at_full_size() -> None:
    torch.manual_seed(0)
    m = Pooled().eval()
    g = build_graph(m, (3, 96, 96), name="pooled")
    ctx = Context(options={"optimized": {"steps": 4}})
    sp, _ = gb.sh_spectral(g, Context())
    op, p = gb.optimized(g, ctx)
    assert "traced at input (3, 64, 64)" in p["proxy"] and len(p["proxy_values"]) == 5
    assert _lower(m, (3, 96, 96), n=16) <= op < sp
