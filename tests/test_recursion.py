"""The certified recursion: certify() contract, rejection of inadmissible multipliers, numerics on deep nets."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipcore import MLP, CertificationError
from lipcore.activations import from_slope, get_activation
from lipcore.benchnets import eclipse_net
from lipcore.recursion import (
    SN1,
    Rule,
    certify,
    certify_log,
    checked_cholesky,
    lanczos_extremes,
    naive_value,
    run_greedy,
    run_rule,
)


def _lams(traj):
    return [np.exp(ll) for ll in traj.log_lambdas]


def test_certify_reproduces_trajectory():
    net = eclipse_net(5, 20)
    traj = run_rule(net, SN1)
    assert traj.value == pytest.approx(1.443415, rel=1e-6)  # ECLipsE-Fast, MATH §9
    assert certify(net, _lams(traj)) == pytest.approx(traj.value, rel=1e-13)
    # log Λ round-trips through exp/log (and the per-layer normalisation), so agreement is to a few ulps, not bits
    assert certify_log(net, traj.log_lambdas).value == pytest.approx(traj.value, rel=1e-14)


def test_certify_matches_hand_recursion_literal_formula():
    """Independent numpy evaluation of MATH §2 with explicit inverses on a tiny net."""
    rng = np.random.default_rng(3)
    ws = [rng.standard_normal((5, 3)), rng.standard_normal((4, 5)), rng.standard_normal((2, 4))]
    net = MLP.from_arrays(ws, get_activation("relu"))
    lams = [np.full(5, 0.05), np.full(4, 0.02)]
    m = np.eye(3)
    for w, lam in zip(ws[:-1], lams, strict=True):
        g = w @ np.linalg.inv(m) @ w.T
        m = 2 * np.diag(lam) - np.diag(lam) @ g @ np.diag(lam)
        assert np.linalg.eigvalsh(m).min() > 0
    ref = math.sqrt(np.linalg.eigvalsh(ws[-1] @ np.linalg.inv(m) @ ws[-1].T).max())
    assert certify(net, lams) == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("bad", ["scale3", "zero", "negative", "nan", "length", "size"])
def test_certify_rejects_inadmissible(bad):
    net = eclipse_net(5, 20)
    lams = _lams(run_rule(net, SN1))
    if bad == "scale3":  # c = 3 > 2: M_1 not PD
        lams = [3 * lam for lam in lams]
    elif bad == "zero":
        lams[1] = np.zeros_like(lams[1])
    elif bad == "negative":
        lams[2] = -lams[2]
    elif bad == "nan":
        lams[0] = lams[0] * np.nan
    elif bad == "length":
        lams = lams[:-1]
    else:
        lams[0] = lams[0][:5]
    with pytest.raises(CertificationError):
        certify(net, lams)


def test_certify_boundary_c_two_fails_just_below_passes():
    net = eclipse_net(2, 10)
    (lam,) = _lams(run_rule(net, SN1))
    # one hidden layer: SN(1.999) is admissible, SN(2.001) is not (λ_max(Λ^½Γ̂Λ^½) = c)
    with pytest.raises(CertificationError):
        certify(net, [2.001 * lam])
    assert certify(net, [1.999 * lam]) > certify(net, [lam])


def test_deep_width20_underflow_case_certifies():
    net = eclipse_net(100, 20)
    traj = run_rule(net, SN1, keep_p=False)
    assert traj.value == pytest.approx(5.73653e-11, rel=1e-5)  # MATH §9 precision table
    assert certify(net, _lams(traj)) == pytest.approx(traj.value, rel=1e-12)
    assert max(float(np.max(np.abs(ll))) for ll in traj.log_lambdas) > 20  # multipliers live far from O(1)


def test_checked_cholesky():
    a = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    with pytest.raises(CertificationError):
        checked_cholesky(a, "A")
    b = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    shifted, r = checked_cholesky(b, "B")
    assert torch.allclose(r @ r.T, shifted) and bool(torch.all(torch.diagonal(shifted) < 2))


def test_lanczos_matches_eigvalsh():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(300, 300, generator=g, dtype=torch.float64)
    a = a @ a.T / 300
    ev = torch.linalg.eigvalsh(a)
    lo, hi = lanczos_extremes(a)
    assert hi == pytest.approx(float(ev[-1]), rel=1e-12)
    assert lo == pytest.approx(float(ev[0]), abs=1e-9 * float(ev[-1]))


def test_rule_validation_and_zero_layer():
    with pytest.raises(ValueError):
        run_rule(eclipse_net(3, 10), Rule("gc", 2.0))
    with pytest.raises(ValueError):
        run_rule(eclipse_net(3, 10), Rule("shift", 1.0))
    ws = [np.ones((3, 2)), np.zeros((3, 3)), np.ones((1, 3))]
    assert run_rule(MLP.from_arrays(ws, get_activation("relu")), SN1).value == 0.0


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), depth=st.integers(2, 5), width=st.integers(1, 7),
       alpha=st.floats(-0.5, 0.9), span=st.floats(0.05, 1.5),
       rule=st.sampled_from([("sn", 1.0), ("sn", 1.6), ("gc", 1.0), ("gc", 1.9), ("shift", 1.5), ("shift", 3.0)]))
def test_random_nets_valid_and_recertifiable(seed, depth, width, alpha, span, rule):
    """For any slopes: value ≥ β^{L-1}‖W_L⋯W_1‖ (the linear map with slope β is in the class) and
    certify() of the trajectory's multipliers reproduces it (keep_p: same arithmetic)."""
    rng = np.random.default_rng(seed)
    beta = alpha + span
    dims = [int(rng.integers(1, 6))] + [width] * (depth - 1) + [int(rng.integers(1, 4))]
    ws = [rng.standard_normal((dims[i + 1], dims[i])) for i in range(depth)]
    net = MLP.from_arrays(ws, from_slope(alpha, beta))
    traj = run_rule(net, Rule(*rule))
    prod = ws[0]
    for w in ws[1:]:
        prod = w @ prod
    for s in (alpha, beta):
        floor = abs(s) ** (depth - 1) * np.linalg.norm(prod, 2)
        assert traj.value >= floor * (1 - 1e-9)
    # the log/exp round trip of the multipliers is amplified by ~1/margin per layer on near-singular M_k
    rtol = min(1e-3, 1e-11 / min(1.0, traj.min_margin) ** (depth - 1))
    assert certify(net, _lams(traj)) == pytest.approx(traj.value, rel=rtol)
    greedy = run_greedy(net, [Rule("sn", 1.0), Rule("gc", 1.7), Rule("shift", 1.5, "weyl")])
    assert greedy.value >= floor * (1 - 1e-9)
    assert naive_value(net)[0] > 0
