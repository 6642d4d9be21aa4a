"""The certified recursion: certify() contract, rejection of inadmissible multipliers, numerics on deep nets."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lipcore import MLP, CertificationError
from lipcore.activations import from_slope, get_activation
from lipcore.mlp.benchnets import eclipse_net
from lipcore.mlp.recursion import (
    LMAX_HAIR,
    SN1,
    SYRK_MIN_N,
    Rule,
    certify,
    certify_log,
    checked_cholesky,
    form_m,
    form_m_batch,
    lanczos_extremes,
    lmax_upper,
    naive_lower_log,
    naive_value,
    run_greedy,
    run_greedy_beside,
    run_rule,
    sym_gram,
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


GREEDY_SET = [Rule("sn", 1.0), Rule("sn", 1.5), Rule("gc", 1.7), Rule("shift", 1.5, "weyl")]


@pytest.mark.parametrize("act", ["relu", "tanh", "leaky_relu"])
@pytest.mark.parametrize("size", [(6, 12), (12, 30), (4, 110), (4, 200)])  # 200 > LOCKSTEP_MAX_N: own calls
def test_greedy_beside_equals_separate_runs(act, size):
    """The lockstep batch (sh-combined's fast path) returns exactly run_rule's ECLipsE-Fast and run_greedy's mix."""
    net = eclipse_net(*size)
    net = MLP.from_arrays(net.weights, get_activation(act))
    greedy, fast = run_greedy_beside(net, GREEDY_SET, SN1)
    assert fast.value == pytest.approx(run_rule(net, SN1, keep_p=False).value, rel=1e-12)
    assert greedy.value == pytest.approx(run_greedy(net, GREEDY_SET).value, rel=1e-12)
    assert fast.choices == ["sn(1)"] * (len(net.weights) - 1)
    # both are certified trajectories: certify() recomputes the greedy value from its multipliers (p-term kept)
    assert certify_log(net, greedy.log_lambdas).value == pytest.approx(greedy.value, rel=1e-9)


def test_greedy_beside_refuses_negative_slopes():
    net = MLP.from_arrays(eclipse_net(4, 10).weights, get_activation("gelu"))
    with pytest.raises(ValueError, match="αβ ≥ 0"):
        run_greedy_beside(net, GREEDY_SET, SN1)


def test_greedy_beside_companion_backtracks_like_run_rule():
    """A companion rule the batch rejects (c near 2 on a rounding-sensitive net) falls back to run_rule's halving."""
    net = eclipse_net(8, 16)
    rule = Rule("sn", 1.99999999999999)
    _, lane = run_greedy_beside(net, GREEDY_SET, rule)
    ref = run_rule(net, rule, keep_p=False)
    assert lane.value == pytest.approx(ref.value, rel=1e-12)
    assert lane.backtracks == ref.backtracks > 0


def test_form_m_batch_matches_form_m_and_flags_failures():
    rng = np.random.default_rng(0)
    a = torch.as_tensor(rng.standard_normal((9, 9)), dtype=torch.float64)
    g = a @ a.T
    g = g / g.diagonal().max()
    lmax = float(torch.linalg.eigvalsh(g)[-1])
    lams = torch.stack([torch.full((9,), c / lmax, dtype=torch.float64) for c in (0.5, 1.0, 1.5, 2.5)])
    out = form_m_batch(lams, g)
    for lam, got in zip(lams[:3], out[:3], strict=True):
        want = form_m(lam, g, "M")
        assert got is not None
        for x, y in zip(got, want, strict=True):
            assert torch.allclose(x, y, rtol=1e-14, atol=0)
    assert out[3] is None  # c = 2.5: 2Λ − ΛΓ̂Λ is indefinite
    # one Γ̂ per candidate
    out2 = form_m_batch(lams[:2], torch.stack([g, 0.5 * g]))
    assert torch.allclose(out2[1][2], form_m(lams[1], 0.5 * g, "M")[2], rtol=1e-14, atol=0)


def test_naive_lower_log_is_below_naive():
    for size in [(3, 7), (10, 40), (4, 300)]:  # 300² > NAIVE_STACK_MAX_NUMEL: one layer at a time
        net = eclipse_net(*size)
        est = naive_lower_log(net)
        exact = naive_value(net)[1]
        assert est <= exact + 1e-12
        assert est >= exact - 0.5 * len(net.weights)  # a real estimate, not -inf: within e^0.5 per layer


def _psd(n: int, seed: int, cluster: float = 0.0) -> torch.Tensor:
    """A random PSD matrix; `cluster` > 0 pulls the top eigenvalues together (slow Lanczos convergence)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    ev = torch.rand(n, generator=g, dtype=torch.float64) ** 0.5
    if cluster:
        ev = torch.where(ev > 0.9, 0.99 + cluster * (ev - 0.9), ev)
    a = (q * ev) @ q.T
    return 0.5 * (a + a.T)


@pytest.mark.parametrize("n", [30, 255, 256, 400])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cluster", [0.0, 1e-3])
def test_lmax_upper_is_certified_and_a_hair_above(n, seed, cluster):
    """lmax_upper ≥ λ_max (dense eigvalsh as the reference) and within the hair above it, certify on or off."""
    a = _psd(n, seed, cluster)
    lm = float(torch.linalg.eigvalsh(a)[-1])
    t = lmax_upper(a)
    assert lm <= t <= lm * (1 + 20 * LMAX_HAIR)
    assert lmax_upper(a, certify=False) == t  # the certificate only proves the same number


def test_lmax_upper_never_returns_an_uncertified_estimate():
    """A Lanczos estimate below λ_max (an indefinite shift) is not returned: the dense solve decides instead."""
    a = _psd(300, 5)
    lm = float(torch.linalg.eigvalsh(a)[-1])
    from lipcore.mlp import recursion

    assert not recursion._certify_below(a, lm * (1 - 1e-6))
    assert recursion._certify_below(a, lm * (1 + 1e-9))


@pytest.mark.parametrize("shape", [(5, 3), (60, 40), (300, 200), (64, 64)])
@pytest.mark.parametrize("layout", ["c", "f", "strided"])
def test_sym_gram_is_symmetric_gram(shape, layout):
    g = torch.Generator().manual_seed(shape[0])
    y = torch.randn(*shape, generator=g, dtype=torch.float64)
    if layout == "f":
        y = y.T.contiguous().T
    elif layout == "strided":
        y = torch.randn(shape[0], 2 * shape[1], generator=g, dtype=torch.float64)[:, ::2]
    got = sym_gram(y, 0.37)
    want = 0.37 * (y.T @ y)
    if shape[1] >= SYRK_MIN_N:  # the syrk path mirrors one triangle
        assert torch.equal(got, got.T)
    assert torch.allclose(got, want, rtol=1e-13, atol=1e-13 * float(want.abs().max()))


@pytest.mark.parametrize(("layers", "width"), [(6, 40), (4, 300)])
def test_certified_rule_lmax_gives_the_same_bound(layers, width, monkeypatch):
    """Proving t ≥ λ_max for every layer (CERTIFY_RULE_LMAX) changes no value: the proof is of the same t."""
    from lipcore.mlp import recursion

    net = eclipse_net(layers, width)
    plain = run_rule(net, SN1, keep_p=False).value
    monkeypatch.setattr(recursion, "CERTIFY_RULE_LMAX", True)
    assert run_rule(net, SN1, keep_p=False).value == plain
