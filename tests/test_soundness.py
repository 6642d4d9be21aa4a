"""Cross-variant soundness evidence: every certified upper bound against every measured lower bound and each other.

Random small nets (depth 1-5, widths 2-12) with random slopes: ReLU, leaky ReLU, tanh, sigmoid, SiLU, GELU and
bare slope intervals (including αβ < 0). Non-negative weights appear too: there ReLU nets have the exactly known
constant ‖W_L⋯W_1‖, so lower bounds come close to the truth and an unsound upper bound has nowhere to hide.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipcore import MLP, analyze, get_activation
from lipcore.activations import from_slope
from lipcore.variants import LOWER, UPPER

REL = 1e-9  # float rounding only: upper ≥ lower, and the proven orderings between variants
SDP_REL = 1e-6  # solver tolerance (the SDP value is certified, but its optimum is only reached to ~1e-8)
CLOSED = ["naive", "eclipse-fast", "sh-spectral", "sh-gershgorin", "sh-shift", "sh-combined", "optimized"]
MEMBERS = ["eclipse-fast", "sh-spectral", "sh-gershgorin", "sh-shift"]

ACTS = ["relu", "leaky_relu:0.1", "leaky_relu:0.3", "tanh", "sigmoid", "silu", "gelu",
        "slope:-0.2,1.0", "slope:-0.5,0.7", "slope:0.2,1.5"]


def _act(spec: str):
    if spec.startswith("slope:"):
        a, b = (float(x) for x in spec[6:].split(","))
        return from_slope(a, b)
    return get_activation(spec)


@st.composite
def nets(draw, max_depth: int = 5, max_width: int = 12, min_depth: int = 1) -> MLP:
    depth = draw(st.integers(min_depth, max_depth))
    dims = draw(st.lists(st.integers(2, max_width), min_size=depth + 1, max_size=depth + 1))
    seed = draw(st.integers(0, 2**31 - 1))
    nonneg = draw(st.booleans())
    mixed = draw(st.booleans())
    base = draw(st.sampled_from(ACTS))
    acts = [draw(st.sampled_from(ACTS)) if mixed else base for _ in range(depth - 1)]
    rng = np.random.default_rng(seed)
    ws, bs = [], []
    for k in range(depth):
        w = rng.random((dims[k + 1], dims[k])) if nonneg else rng.standard_normal((dims[k + 1], dims[k]))
        ws.append(w * rng.uniform(0.3, 2.0) / np.linalg.norm(w, 2))
        bs.append(rng.random(dims[k + 1]) if nonneg else rng.standard_normal(dims[k + 1]))
    name = f"rand-d{depth}-{'nonneg' if nonneg else 'randn'}-{'+'.join(sorted(set(acts))) or 'linear'}-s{seed}"
    return MLP([*ws], [_act(a) for a in acts], bs, name=name)


def _run(net: MLP) -> dict:
    rep = analyze(net, variants=[*UPPER, *LOWER], seed=1)
    return rep.results


def _check(net: MLP, res: dict) -> None:
    bad = {k: r.reason for k, r in res.items() if r.status != "ok"}
    # nothing may fail; the SDP variants may only refuse for size (never on these tiny nets)
    assert not bad, f"{net.name}: {bad}"
    val = {k: r.value for k, r in res.items()}
    lo = max(val[k] for k in LOWER)
    for k in UPPER:
        assert val[k] >= lo * (1 - REL), f"{net.name}: {k}={val[k]!r} below lower bound {lo!r}"
    assert val["sh-combined"] <= val["eclipse-fast"] * (1 + REL), net.name
    assert val["optimized"] <= val["sh-combined"] * (1 + REL), net.name
    # the SDP baselines: LipSDP-Neuron is the infimum over every recursion feasible point
    n = val["lipsdp-neuron"]
    for k in MEMBERS + ["lipsdp-layer", "eclipse"]:
        assert n <= val[k] * (1 + SDP_REL), f"{net.name}: lipsdp-neuron {n!r} > {k} {val[k]!r}"
    assert val["lipsdp-layer"] <= val["eclipse-fast"] * (1 + SDP_REL), net.name
    if all(a.p >= 0 for a in net.activations):
        # naive is a LipSDP feasible point only for αβ ≥ 0 (for αβ < 0 its sector is not implied by [α, β]),
        # and sh-combined / optimized may fall back to naive
        for k in CLOSED:
            assert n <= val[k] * (1 + SDP_REL), f"{net.name}: lipsdp-neuron {n!r} > {k} {val[k]!r}"
    assert val["optimized"] <= 1.05 * n, f"{net.name}: optimized {val['optimized']!r} vs lipsdp-neuron {n!r}"


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(net=nets())
def test_cross_variant_soundness(net: MLP) -> None:
    _check(net, _run(net))


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(net=nets(max_depth=1))
def test_single_layer_every_upper_is_the_norm(net: MLP) -> None:
    res = _run(net)
    exact = float(np.linalg.norm(net.weights[0], 2))
    for k in UPPER:
        assert res[k].status == "ok", (k, res[k].reason)
        assert res[k].value == pytest.approx(exact, rel=1e-9), k
        assert res[k].value >= exact * (1 - 1e-12), k
    for k in LOWER:
        assert res[k].value == pytest.approx(exact, rel=1e-6), k


def test_nonneg_relu_net_is_tight() -> None:
    """A fixed legacy-style net: the lower bounds reach ‖W_L⋯W_1‖ = the true constant, LipSDP-Neuron meets it."""
    rng = np.random.default_rng(11)
    dims = [4, 10, 10, 1]
    ws = [rng.random((dims[k + 1], dims[k])) for k in range(3)]
    net = MLP(ws, [get_activation("relu")] * 2, [rng.random(d) for d in dims[1:]], name="nonneg")
    res = _run(net)
    _check(net, res)
    p = ws[2] @ ws[1] @ ws[0]
    exact = float(np.linalg.norm(p, 2))
    assert max(res[k].value for k in LOWER) == pytest.approx(exact, rel=1e-6)
    assert res["lipsdp-neuron"].value == pytest.approx(exact, rel=1e-5)
    assert math.isfinite(res["naive"].value) and res["naive"].value >= exact


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=nets())
def test_cross_variant_soundness_sweep(net: MLP) -> None:
    _check(net, _run(net))
