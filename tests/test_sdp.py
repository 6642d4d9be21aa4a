"""SDP baselines (lipcore.mlp.sdp): MATH §9 reference values, orderings, certification and the size guard."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

pytest.importorskip("cvxpy")
pytest.importorskip("clarabel")

from lipcore import MLP, analyze, get_activation  # noqa: E402
from lipcore.errors import CertificationError, Refused  # noqa: E402
from lipcore.mlp.benchnets import eclipse_net, eclipse_weights, eclipse_weights_and_biases  # noqa: E402
from lipcore.mlp.sdp import _certify_backoff, balance, eclipse, lipsdp_layer, lipsdp_neuron, size_check  # noqa: E402
from lipcore.variants import Context  # noqa: E402

pytestmark = pytest.mark.sdp


def _prod_norm(ws: list[np.ndarray]) -> float:
    p = ws[0]
    for w in ws[1:]:
        p = w @ p
    return float(np.linalg.norm(p, 2))


@pytest.fixture(scope="module")
def small() -> dict:
    """LipSDP-N / -L / ECLipsE on the 2×20 and 5×20 benchmark nets, solved once for the module."""
    out = {}
    for layers in (2, 5):
        net = eclipse_net(layers, 20)
        out[layers] = {name: fn(net, Context()) for name, fn in
                       (("neuron", lipsdp_neuron), ("layer", lipsdp_layer), ("eclipse", eclipse))}
    return out


@pytest.mark.parametrize("layers,expected", [(2, 0.383981), (5, 0.568873)])
def test_lipsdp_neuron_matches_reference(small: dict, layers: int, expected: float) -> None:
    value, params = small[layers]["neuron"]
    assert value == pytest.approx(expected, rel=1e-4)
    assert params["solver"] == "CLARABEL"
    assert params["solver_value"] == pytest.approx(value, rel=1e-6)  # certified value is the solver's, to rounding


@pytest.mark.slow
def test_lipsdp_neuron_10x20_reference() -> None:
    value, _ = lipsdp_neuron(eclipse_net(10, 20), Context())
    assert value == pytest.approx(0.0276408, rel=1e-4)


def test_lipsdp_layer_and_eclipse_match_reference(small: dict) -> None:
    assert small[2]["layer"][0] == pytest.approx(0.4467, rel=1e-4)
    assert small[5]["layer"][0] == pytest.approx(0.8692, rel=1e-4)
    assert small[2]["eclipse"][0] == pytest.approx(0.3840, rel=1e-3)
    assert small[5]["eclipse"][0] == pytest.approx(0.7901, rel=1e-4)


def test_orderings(small: dict) -> None:
    """LipSDP-Neuron ≤ ECLipsE (greedy), LipSDP-Neuron ≤ LipSDP-Layer ≤ ECLipsE-Fast, all ≥ ‖W_L⋯W_1‖."""
    from lipcore.mlp.recursion import SN1, run_rule

    for layers, res in small.items():
        net = eclipse_net(layers, 20)
        fast = run_rule(net, SN1, keep_p=False).value
        n, lay, ecl = res["neuron"][0], res["layer"][0], res["eclipse"][0]
        floor = _prod_norm(eclipse_weights(layers, 20))
        assert floor * (1 - 1e-8) <= n <= lay * (1 + 1e-6)
        assert lay <= fast * (1 + 1e-6)
        assert n <= ecl * (1 + 1e-6)


@pytest.mark.parametrize("layers", [2, 5])
def test_legacy_lipsdp_neuron_is_the_product_norm(layers: int) -> None:
    """Non-negative nets: the true constant ‖W_L⋯W_1‖ is reached by LipSDP-Neuron (and never undercut)."""
    net = eclipse_net(layers, 20, legacy=True)
    exact = _prod_norm(eclipse_weights_and_biases(layers, 20)[0])
    value, _ = lipsdp_neuron(net, Context())
    assert value >= exact * (1 - 1e-9)
    assert value == pytest.approx(exact, rel=1e-5)
    if layers == 2:
        assert value == pytest.approx(0.856097, rel=1e-5)


@pytest.mark.parametrize("activation", ["leaky_relu:0.1", "silu", "sigmoid"])
def test_general_slopes_certify_and_order(activation: str) -> None:
    """p > 0 keeps the p-term, p < 0 needs it; LipSDP-N ≤ ECLipsE ≤ naive and ≥ a measured lower bound."""
    from lipcore.lower import lower_sampled

    net = eclipse_net(3, 10, activation=activation)
    n, pn = lipsdp_neuron(net, Context())
    e, _ = eclipse(net, Context())
    lay, _ = lipsdp_layer(net, Context())
    act = get_activation(activation)
    naive = math.prod(float(np.linalg.norm(w, 2)) for w in net.weights) * act.gain ** 2
    lo = lower_sampled(net, Context())[0]
    assert lo <= n * (1 + 1e-9)
    assert n <= e * (1 + 1e-6) and n <= lay * (1 + 1e-6)
    assert max(e, lay) <= naive * (1 + 1e-9)
    if activation == "silu":  # MATH §9 general-slope table: LipSDP-Neuron 0.414 on silu 3×10
        assert n == pytest.approx(0.414, rel=2e-3)
    assert pn["backoff"] <= 1.0


def test_single_layer_and_zero_layer() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 5))
    one = MLP.from_arrays([w], [])
    for fn in (lipsdp_neuron, lipsdp_layer, eclipse):
        v, p = fn(one, Context())
        assert v == pytest.approx(float(np.linalg.norm(w, 2)), rel=1e-12) and v >= np.linalg.norm(w, 2)
    zero = MLP.from_arrays([w, np.zeros((2, 3))], get_activation("relu"))
    assert lipsdp_neuron(zero, Context())[0] == 0.0


def test_balance_is_exact_by_homogeneity() -> None:
    net = eclipse_net(5, 20)
    wb, log_a = balance(net)
    for w, b, la in zip(net.weights, wb, log_a, strict=True):
        np.testing.assert_allclose(b * math.exp(la), w, rtol=1e-13)
    # the balanced ECLipsE-Fast recursion sees λ_max(Γ̂) = 1 at every stage: its bound is exactly 1
    from lipcore.mlp.recursion import SN1, run_rule

    bal = MLP.from_arrays(wb, get_activation("relu"))
    assert run_rule(bal, SN1, keep_p=False).value == pytest.approx(1.0, rel=1e-9)


def test_certification_backs_off_rounding_failures() -> None:
    """Multipliers just outside the admissible set (λ = 2/λ_max(Γ)·(1+1e-7)) certify after a tiny backoff;
    grossly inadmissible ones raise CertificationError instead of returning a number."""
    rng = np.random.default_rng(1)
    w1, w2 = rng.standard_normal((6, 4)), rng.standard_normal((1, 6))
    net = MLP.from_arrays([w1, w2], get_activation("relu"))
    lmax = float(np.linalg.eigvalsh(w1 @ w1.T)[-1])
    lam = np.full(6, 2 / lmax * (1 + 1e-7))
    value, t = _certify_backoff(net, [lam], Context())
    assert t < 1 and math.isfinite(value) and value >= _prod_norm([w1, w2])
    with pytest.raises(CertificationError):
        _certify_backoff(net, [np.full(6, 10 / lmax)], Context())


def test_size_guard_refuses_with_the_numbers() -> None:
    net = eclipse_net(30, 60)
    with pytest.raises(Refused, match=r"LipSDP-Neuron refused: 1740 neurons > limit \d+ \(set option max_neurons\)"):
        lipsdp_neuron(net, Context())
    with pytest.raises(Refused, match=r"estimated solve time \d+ s > limit \d+ s \(120 neurons, largest clique 120"):
        lipsdp_neuron(eclipse_net(3, 60), Context())
    # the options lift the guard (checked without solving)
    opts = {"lipsdp-neuron": {"max_neurons": 5000, "max_seconds": 1e9}}
    assert size_check(net, Context(options=opts), "lipsdp-neuron")["neurons"] == 1740
    rep = analyze(eclipse_net(3, 60), variants=["lipsdp-neuron", "eclipse", "lipsdp-layer"])
    for r in rep.results.values():
        assert r.status == "refused" and "use 'optimized'" in r.reason


def test_missing_extra_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cvxpy", None)
    with pytest.raises(Refused, match=r"pip install 'lipzoo\[sdp\]'"):
        lipsdp_neuron(eclipse_net(2, 20), Context())


def test_scs_result_is_certified_too() -> None:
    net = eclipse_net(2, 20)
    v, p = lipsdp_neuron(net, Context(options={"lipsdp-neuron": {"solver": "SCS"}}))
    assert p["solver"] == "SCS"
    assert v >= 0.383981 * (1 - 1e-5)  # a certified value is never below the optimum
    assert v <= 0.383981 * 1.05


def test_analyze_reports_ok_rows() -> None:
    rep = analyze(eclipse_net(2, 20), variants=["lipsdp-neuron", "lipsdp-layer", "eclipse", "lower-sampled"])
    vals = {k: r.value for k, r in rep.results.items()}
    assert all(r.status == "ok" for r in rep.results.values()), {k: r.reason for k, r in rep.results.items()}
    assert vals["lower-sampled"] <= vals["lipsdp-neuron"] <= vals["eclipse"] * (1 + 1e-6)
    assert rep.results["lipsdp-neuron"].params["solver_value"] > 0
