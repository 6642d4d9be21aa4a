"""`optimized`: certified, never worse than the closed forms, close to LipSDP-Neuron / the true constant."""

import math
import time

import numpy as np
import pytest
import torch

from lipcore import MLP, analyze, get_activation
from lipcore.mlp.benchnets import eclipse_net, eclipse_weights
from lipcore.mlp.closed_form import sh_combined
from lipcore.mlp.optimize import _Forward, optimized, true_log_lambdas
from lipcore.mlp.recursion import certify_log
from lipcore.variants import Context


def test_close_to_lipsdp_neuron_2x20():
    net = eclipse_net(2, 20)
    ctx = Context()
    vc, _ = sh_combined(net, ctx)
    v, params = optimized(net, ctx)
    assert params["certified"] is True
    assert v <= vc
    # LipSDP-Neuron (certified Clarabel solution, MATH §9) is the infimum over all multipliers
    assert 0.383981 * (1 - 1e-6) <= v <= 0.383981 * 1.002


def test_legacy_net_reaches_true_constant():
    net = eclipse_net(5, 20, legacy=True)
    prod = net.weights[0]
    for w in net.weights[1:]:
        prod = w @ prod
    true = np.linalg.norm(prod, 2)  # = true Lipschitz constant on non-negative ReLU nets (MATH §8)
    v, params = optimized(net, Context())
    assert true * (1 - 1e-12) <= v <= true * 1.001, params


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_parameter_point_is_admissible(seed):
    """The (c, U) parameterisation never leaves the feasible set: random points certify, incl. αβ < 0."""
    gen = torch.Generator().manual_seed(seed)
    for act in ("relu", "silu", "leaky_relu:0.2"):
        net = eclipse_net(4, 12, activation=act)
        fwd = _Forward(net, torch.device("cpu"))
        a = [torch.randn((), generator=gen, dtype=torch.float64) * 2 for _ in range(3)]
        z = [torch.randn(12, generator=gen, dtype=torch.float64) * 2 for _ in range(3)]
        with torch.no_grad():
            loss, logs, cs = fwd(a, z)
        assert all(0 < c < 2 for c in cs)
        cert = certify_log(net, true_log_lambdas(logs))
        assert cert.value == pytest.approx(math.exp(float(loss)), rel=1e-6)


@pytest.mark.parametrize("act", ["silu", "leaky_relu:0.1"])
def test_general_slopes_not_worse_than_closed_forms(act):
    ws = eclipse_weights(4, 16)
    net = MLP.from_arrays(ws, get_activation(act))
    rep = analyze(net, variants=["naive", "eclipse-fast", "sh-combined", "optimized"],
                  options={"optimized": {"steps": 300}})
    vals = {k: r.value for k, r in rep.results.items()}
    assert all(r.status == "ok" for r in rep.results.values()), rep.results
    assert vals["optimized"] <= vals["sh-combined"] <= min(vals["eclipse-fast"], vals["naive"])
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f = net.torch_callable()
    jac = torch.vmap(torch.func.jacrev(lambda v: f(v[None])[0]))(x)
    assert vals["optimized"] >= float(torch.linalg.matrix_norm(jac, ord=2).max())


def test_deadline_returns_certified_warm_start_or_better():
    net = eclipse_net(10, 20)
    ctx = Context(deadline=time.monotonic() + 2.5)
    vc, _ = sh_combined(net, ctx)
    v, params = optimized(net, ctx)
    assert v <= vc and params["steps"] < 1500


@pytest.mark.slow
@pytest.mark.parametrize(("layers", "width", "lipsdp"), [
    (5, 20, 0.568873), (10, 20, 0.0276408), (20, 20, 0.000472701), (30, 20, 0.00087189), (2, 40, 0.206466),
    (5, 40, 0.017804), (3, 60, 0.174029)])
def test_close_to_lipsdp_neuron_reference(layers, width, lipsdp):
    v, _ = optimized(eclipse_net(layers, width), Context())
    assert lipsdp * (1 - 1e-5) <= v <= lipsdp * 1.06


class _Budget(Context):
    """A budget measured in calls of time_left(): plenty for the first `calls`, then none (a deterministic clock
    for the anytime contract; the code under test is not touched)."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls

    def time_left(self) -> float | None:
        self.calls -= 1
        return 1e9 if self.calls > 0 else 0.0


@pytest.mark.parametrize(("calls", "layers"), [(130, 5), (215, 4)])
def test_anytime_returns_best_certified_point_when_budget_ends(calls, layers):
    """Budget gone after `calls` steps: the value is the last periodic certificate (no room for a final one),
    re-certifiable from nothing, below the warm start, with how far the run got."""
    net = eclipse_net(layers, 10)
    ctx = _Budget(calls)
    vc, _ = sh_combined(net, ctx)
    v, params = optimized(net, ctx)
    assert params["stopped"] == "budget" and params["steps"] < params["steps_planned"] == 2000
    assert params["certified"] is True and v < vc
    assert 0 < params["certified_step"] <= 100 * (params["steps"] // 100)  # a periodic certificate (every 100)
    assert params["vs_warm"] == pytest.approx(v / vc, rel=1e-5)


def test_anytime_without_budget_for_a_step_returns_the_warm_start():
    net = eclipse_net(5, 12)
    ctx = _Budget(2)
    vc, _ = sh_combined(net, ctx)
    v, params = optimized(net, ctx)
    assert v == vc and params["steps"] == 0 and params["stopped"] == "budget"


def test_budget_spent_before_the_warm_start_raises():
    from lipcore import BudgetExceeded

    with pytest.raises(BudgetExceeded):
        optimized(eclipse_net(5, 12), Context(deadline=time.monotonic() - 1.0))


@pytest.mark.parametrize("n", [3, 40, 300])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_eig_value_and_gradient_equal_eigvalsh(n, seed):
    """The one-eigenpair λ_max the optimizer differentiates gives eigvalsh's value and gradient."""
    from lipcore.mlp.optimize import _TopEig

    g = torch.Generator().manual_seed(seed)
    b = torch.randn(n, n, generator=g, dtype=torch.float64)
    a1 = (b @ b.T).requires_grad_(True)
    a2 = a1.detach().clone().requires_grad_(True)
    w = torch.randn(n, n, generator=g, dtype=torch.float64)
    e1 = _TopEig.apply(a1 * (w @ w.T))  # symmetric: a Hadamard product of two symmetric matrices
    e2 = torch.linalg.eigvalsh(a2 * (w @ w.T))[-1]
    (3.0 * e1).backward()
    (3.0 * e2).backward()
    assert float(e1.detach()) == pytest.approx(float(e2.detach()), rel=1e-12)
    assert torch.allclose(a1.grad, a2.grad, rtol=1e-8, atol=1e-10 * float(a2.grad.abs().max()))
