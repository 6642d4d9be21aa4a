"""Closed-form variants: ECLipsE-Fast reproduces eclipse-nn, the ECLipsE figure, oracles and orderings."""

import numpy as np
import pytest
import torch

from lipcore import MLP, analyze, get_activation
from lipcore.mlp.benchnets import DEEP, STANDARD, eclipse_net, eclipse_weights
from lipcore.mlp.closed_form import eclipse_fast, naive, sh_combined, sh_gershgorin, sh_shift, sh_spectral
from lipcore.variants import Context

CF = ["naive", "eclipse-fast", "sh-spectral", "sh-gershgorin", "sh-shift", "sh-combined"]


def _pkg_fast(ws):
    from eclipse_nn import ECLipsE_Fast

    n = len(ws) - 1
    return float(ECLipsE_Fast([torch.as_tensor(w) for w in ws], [0.0] * n, [1.0] * n))


QUICK = [(2, 20), (5, 40), (10, 20), (30, 20), (100, 20), (10, 100), (50, 60)]


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize(("layers", "width"), QUICK)
def test_eclipse_fast_matches_package(layers, width, legacy):
    net = eclipse_net(layers, width, legacy=legacy)
    v, params = eclipse_fast(net, Context())
    assert v == pytest.approx(_pkg_fast(net.weights), rel=1e-9)
    assert v >= _pkg_fast(net.weights) * (1 - 1e-13)  # the certification shift only ever loosens
    assert params["c"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize(("layers", "width"), STANDARD + DEEP)
def test_eclipse_fast_matches_package_all(layers, width, legacy):
    net = eclipse_net(layers, width, legacy=legacy)
    assert eclipse_fast(net, Context())[0] == pytest.approx(_pkg_fast(net.weights), rel=1e-9)


def test_eclipse_figure_ratios_legacy_width80():
    """ECLipsE paper figure (legacy generator, rd = 0): ECLipsE-Fast / naive for 2…100 layers."""
    ratios = []
    for layers in (2, 5, 10, 20, 30, 50, 75, 100):
        net = eclipse_net(layers, 80, legacy=True)
        ctx = Context()
        ratios.append(eclipse_fast(net, ctx)[0] / naive(net, ctx)[0])
    np.testing.assert_allclose(ratios, [0.925, 0.905, 0.914, 0.881, 0.864, 0.823, 0.796, 0.751], atol=0.005)


def test_single_layer_every_variant_is_spectral_norm():
    w = np.random.default_rng(0).standard_normal((7, 5))
    rep = analyze(MLP.from_arrays([w], get_activation("relu")), variants=[*CF, "optimized"])
    for vid in [*CF, "optimized"]:
        r = rep.results[vid]
        assert r.status == "ok", (vid, r.reason)
        assert r.value == pytest.approx(np.linalg.norm(w, 2), rel=1e-12)


@pytest.mark.parametrize(("layers", "width"), [(2, 20), (5, 20), (10, 80), (30, 20)])
def test_legacy_nonnegative_nets_true_constant_is_floor(layers, width):
    """On non-negative ReLU nets the true constant is ‖W_L⋯W_1‖: every certified bound must be ≥ it."""
    net = eclipse_net(layers, width, legacy=True)
    prod = net.weights[0]
    for w in net.weights[1:]:
        prod = w @ prod
    true = np.linalg.norm(prod, 2)
    rep = analyze(net, variants=CF)
    for vid in CF:
        assert rep.results[vid].status == "ok"
        assert rep.results[vid].value >= true * (1 - 1e-12), vid
    # GC(c=1) is the only member that beats ECLipsE-Fast on these nets (MATH §4)
    assert rep.results["sh-gershgorin"].params["c"] == 1.0
    assert rep.results["sh-combined"].value <= rep.results["eclipse-fast"].value


@pytest.mark.parametrize(("layers", "width", "fast", "best9"), [
    (2, 20, 0.5145, 0.4156), (10, 20, 0.1302, 0.05768), (30, 20, 0.06951, 0.005872), (20, 60, 0.002673, 0.0004446),
])
def test_randn_members_and_combined(layers, width, fast, best9):
    net = eclipse_net(layers, width)
    ctx = Context()
    vf = eclipse_fast(net, ctx)[0]
    vn = naive(net, ctx)[0]
    members = [sh_spectral(net, ctx), sh_gershgorin(net, ctx), sh_shift(net, ctx)]
    vc, pc = sh_combined(net, ctx)
    assert vf == pytest.approx(fast, rel=1e-3)
    assert vc <= vf and vc <= vn
    assert vc <= min(v for v, _ in members)
    # min over c grids and greedy mixing should match or beat the reference "best of 9" (MATH §9)
    assert vc <= best9 * 1.001
    assert pc["vs_fast"] < 1


def test_combined_alone_is_at_most_fast_and_naive():
    for layers, width, legacy in [(5, 20, True), (20, 20, False), (75, 20, True)]:
        net = eclipse_net(layers, width, legacy=legacy)
        ctx = Context()
        vc, _ = sh_combined(net, ctx)
        assert vc <= eclipse_fast(net, ctx)[0] and vc <= naive(net, ctx)[0]


def test_gershgorin_margin_collapse_stays_certified():
    """GC(1.99) on a deep width-20 net exceeds naive (MATH §4) but the member still reports a valid bound."""
    net = eclipse_net(20, 20)
    ctx = Context(options={"sh-gershgorin": {"c_grid": [1.99]}})
    v, params = sh_gershgorin(net, ctx)
    assert v > naive(net, ctx)[0] and params.get("above_naive") is True


def _jacobian_lower_bound(net: MLP, n: int = 400, seed: int = 0) -> float:
    f = net.torch_callable()
    x = torch.randn(n, net.widths[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
    jac = torch.vmap(torch.func.jacrev(lambda v: f(v[None])[0]))(x)
    return float(torch.linalg.matrix_norm(jac, ord=2).max())


@pytest.mark.parametrize("act", ["silu", "leaky_relu:0.1", "sigmoid", "tanh", "gelu"])
def test_general_slopes_certify_and_dominate_jacobian_lower_bound(act):
    ws = eclipse_weights(5, 20)
    rng = np.random.default_rng(1)
    bs = [rng.standard_normal(w.shape[0]) for w in ws]
    net = MLP.from_arrays(ws, get_activation(act), biases=bs)
    lb = _jacobian_lower_bound(net)
    rep = analyze(net, variants=CF)
    for vid in CF:
        r = rep.results[vid]
        assert r.status == "ok", (vid, r.reason)
        assert r.value >= lb, vid
    assert rep.results["sh-combined"].value <= rep.results["eclipse-fast"].value
    assert rep.results["sh-combined"].value <= rep.results["naive"].value


def test_leaky_p_term_refinement_tightens():
    net = eclipse_net(10, 20, activation="leaky_relu:0.1")
    ctx = Context(options={"sh-gershgorin": {"c_grid": [1.99], "keep_p": False}})
    v_drop = sh_gershgorin(net, ctx)[0]
    ctx2 = Context(options={"sh-gershgorin": {"c_grid": [1.99]}})
    v_keep = sh_gershgorin(net, ctx2)[0]
    assert v_drop == pytest.approx(0.183, rel=0.01) and v_keep == pytest.approx(0.05865, rel=0.01)  # MATH §9


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU smoke test needs one")


@CUDA
@pytest.mark.parametrize(("layers", "width", "act"), [(6, 40, "relu"), (4, 300, "relu"), (5, 30, "leaky_relu:0.1")])
def test_gpu_smoke_same_values_as_cpu(layers, width, act):
    """device="cuda" runs every MLP variant through the same code path and certifies the same numbers."""
    net = eclipse_net(layers, width, activation=act)
    variants = [*CF, "optimized"]
    opts = {"optimized": {"steps": 40}}
    cpu = analyze(net, variants=variants, options=opts, device="cpu")
    gpu = analyze(net, variants=variants, options=opts, device="cuda")
    for vid in variants:
        assert gpu.results[vid].status == "ok", (vid, gpu.results[vid].reason)
        rel = 1e-3 if vid == "optimized" else 1e-9  # Adam's trajectory may differ in the last bits
        assert gpu.results[vid].value == pytest.approx(cpu.results[vid].value, rel=rel), vid
