"""The graph cost guard (measured rate, cached; refusals name their limit) and anytime variants (issue 13 item 3,
issue 15 item 6): a budget that runs out returns the best certified value so far, or refuses with the estimate."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

import lipcore
from lipcore import calibrate as cal
from lipcore.errors import BudgetExceeded, Refused
from lipcore.graph import bounds as gb
from lipcore.graph import build_graph
from lipcore.variants import Context


@pytest.fixture
def cache(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    """A private calibration cache (disk and memory)."""
    monkeypatch.setenv("LIPZOO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cal, "_MEMORY", {})
    return tmp_path / "calibration.json"


def _set_rate(cache_path, rate: float) -> None:  # noqa: ANN001
    """This device's measured engine rate, as engine runs would have recorded it."""
    cache_path.write_text(json.dumps({cal.device_key(torch.device("cpu")): {"runs": [rate]}}))
    cal._MEMORY.clear()


def _net(seed: int = 0) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
                      nn.Flatten(), nn.Linear(4 * 3 * 3, 3)).double().eval()
    return m, (2, 6, 6)


def _jacobian_lower(m: nn.Module, shape: tuple[int, ...], n: int = 4) -> float:
    """max over random points of ||J(x)||_2: a lower bound on the Lipschitz constant."""
    best = 0.0
    for i in range(n):
        x = torch.randn(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        J = torch.autograd.functional.jacobian(lambda z: m(z.reshape(1, *shape)).reshape(-1), x.reshape(-1))
        best = max(best, float(torch.linalg.matrix_norm(J, 2)))
    return best


class RunsOut(Context):
    """A budget that runs out at the n-th deadline check (mid-run, wherever that falls), while time_left still
    reads as plenty: what a run whose estimate was too optimistic meets."""

    def __init__(self, n: int) -> None:
        super().__init__(deadline=time.monotonic() + 3600)
        self.calls = 0
        self.n = n

    def check_deadline(self) -> None:
        self.calls += 1
        if self.calls > self.n:
            raise BudgetExceeded("time budget exceeded")


def test_calibration_is_cached_on_disk_and_reused(cache) -> None:  # noqa: ANN001
    dev = torch.device("cpu")
    r1 = cal.engine_rate(dev)
    assert r1.flops_per_s > 0 and r1.source.startswith("calibrated")
    entry = json.loads(cache.read_text())[cal.device_key(dev)]
    assert entry["kernel"] * cal.ENGINE_SHARE == pytest.approx(r1.flops_per_s)
    cal._MEMORY.clear()  # a new process: the disk cache answers, nothing is re-measured
    t0 = time.perf_counter()
    r2 = cal.engine_rate(dev)
    assert r2 == r1 and time.perf_counter() - t0 < cal.CALIBRATE_S
    cal.record_run(dev, 1e9, 1.0)  # too small to time: ignored
    assert cal.engine_rate(dev) == r1
    cal.record_run(dev, 4e10, 2.0)
    cal.record_run(dev, 9e10, 3.0)
    cal.record_run(dev, 6e10, 2.0)
    cal._MEMORY.clear()
    r3 = cal.engine_rate(dev)
    assert r3.flops_per_s == pytest.approx(3e10) and "measured by 3 engine run" in r3.source  # the median


def test_calibration_key_names_device_and_threads(cache) -> None:  # noqa: ANN001
    n = torch.get_num_threads()
    k1 = cal.device_key(torch.device("cpu"))
    try:
        torch.set_num_threads(1 if n > 1 else 2)
        assert cal.device_key(torch.device("cpu")) != k1
    finally:
        torch.set_num_threads(n)
    assert "cpu" in k1 and f"threads={n}" in k1


@pytest.mark.parametrize("variant", ["eclipse-fast", "sh-spectral", "sh-gershgorin", "optimized"])
def test_refusal_names_the_cap(cache, variant: str) -> None:  # noqa: ANN001
    _set_rate(cache, 1.0)  # a machine where one run is estimated at days
    m, shape = _net()
    rep = lipcore.analyze(m, ["naive", variant], input_shape=shape, options={variant: {"max_est_s": 5.0}})
    r = rep.results[variant]
    assert r.status == "refused" and rep.results["naive"].status == "ok"
    assert "refused by the variant's cap (max_est_s = 5 s)" in r.reason
    assert "on this cpu" in r.reason and "on a GPU (assumed" in r.reason and "TFLOP" in r.reason


@pytest.mark.parametrize("variant", ["eclipse-fast", "sh-spectral", "sh-shift", "sh-combined", "optimized"])
def test_refusal_names_the_remaining_budget(cache, variant: str) -> None:  # noqa: ANN001
    _set_rate(cache, 1.0)
    m, shape = _net()
    t0 = time.perf_counter()
    no_cap = {v: {"max_est_s": 1e12} for v in ("eclipse-fast", "sh-spectral", "sh-gershgorin", "sh-shift",
                                               "optimized")}
    rep = lipcore.analyze(m, ["naive", variant], input_shape=shape, budget_s=60, options=no_cap)
    r = rep.results[variant]
    assert time.perf_counter() - t0 < 30  # refused at once, not after spending the budget
    if variant == "sh-combined":  # members over budget: naive is what fits, said as partial
        assert r.status == "ok" and r.value == rep.results["naive"].value and r.params["partial"]
        assert all(e.startswith("over budget") for e in r.params["skipped"].values())
    else:
        assert r.status == "refused" and r.reason.startswith("over budget")
        assert "refused by the model's remaining budget" in r.reason and "cap" not in r.reason
        assert "on a GPU (assumed" in r.reason


@pytest.mark.parametrize("variant", ["eclipse-fast", "sh-gershgorin", "sh-combined", "optimized"])
def test_a_budget_running_out_mid_run_keeps_a_certified_value(cache, variant: str) -> None:  # noqa: ANN001
    _set_rate(cache, 1e18)  # every estimate fits: the budget ends the runs instead
    m, shape = _net(1)
    g = build_graph(m, shape)
    lower = _jacobian_lower(m, shape)
    full = gb.__dict__[variant.replace("-", "_")](g, Context())[0]
    nv = gb.naive(g, Context())[0]
    fn = gb.__dict__[variant.replace("-", "_")]
    seen_partial = seen_full = 0
    for n in [0, 3, 10, 30, 60, 120, 250, 500, 1000, 4000, 10 ** 6]:
        ctx = RunsOut(n)
        try:
            v, p = fn(g, ctx)
        except Refused as e:  # only when not even naive fits
            assert str(e).startswith("over budget") and ctx.calls <= n + 1
            continue
        assert lower * (1 - 1e-9) <= v <= nv * (1 + 1e-12)
        if p.get("partial"):
            seen_partial += 1
            assert "budget" in str(p["stopped"])
        else:
            seen_full += 1
            assert v == pytest.approx(full, rel=1e-12)
    assert seen_partial and seen_full
