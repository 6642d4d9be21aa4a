"""The ECLipsE benchmark generator must reproduce the upstream nets (shapes, norms, reference values)."""

import numpy as np
import pytest
import torch

from lipcore.mlp.benchnets import ALL, DEEP, STANDARD, WIDE, eclipse_net, eclipse_weights, eclipse_weights_and_biases


def _naive(ws):
    return float(np.prod([np.linalg.norm(w, 2) for w in ws]))


def test_sizes():
    assert len(STANDARD) == 40 and DEEP == [(100, 120), (100, 140), (100, 160)]
    assert WIDE[-1] == (50, 1000) and len(ALL) == 49


def test_shapes_and_norms():
    ws = eclipse_weights(5, 20)
    assert [w.shape for w in ws] == [(20, 4), (20, 20), (20, 20), (20, 20), (1, 20)]
    for w in ws:
        assert 0.4 <= np.linalg.norm(w, 2) <= 1.8
    assert (np.concatenate([w.ravel() for w in ws]) < 0).any()  # randn
    legacy = eclipse_weights(5, 20, legacy=True)
    assert all((w >= 0).all() for w in legacy)


@pytest.mark.parametrize(("legacy", "layers", "width", "naive"), [
    (False, 2, 20, 0.6956), (False, 10, 20, 0.9753), (False, 30, 20, 55.34), (False, 2, 100, 2.125),
    (True, 2, 20, 1.02), (True, 10, 20, 1.173), (True, 30, 80, 0.009885), (True, 100, 20, 0.002361),
])
def test_reference_naive_values(legacy, layers, width, naive):
    # MATH §9 tables (computed from the upstream generators)
    assert _naive(eclipse_weights(layers, width, legacy=legacy)) == pytest.approx(naive, rel=6e-4)


def test_reference_eclipse_fast_values():
    from eclipse_nn import ECLipsE_Fast

    for legacy, layers, width, ref in [(False, 2, 20, 0.514469), (False, 10, 20, 0.130171), (True, 10, 20, 0.989907)]:
        ws = [torch.as_tensor(w) for w in eclipse_weights(layers, width, legacy=legacy)]
        val = float(ECLipsE_Fast(ws, [0.0] * (layers - 1), [1.0] * (layers - 1)))
        assert val == pytest.approx(ref, rel=5e-6)


def test_deterministic_and_global_rng_independent():
    np.random.seed(123)
    a = eclipse_weights(10, 40)
    np.random.rand(1000)
    b = eclipse_weights(10, 40)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_legacy_biases_consume_rng_and_rd():
    ws, bs = eclipse_weights_and_biases(5, 20)
    assert [b.shape for b in bs] == [(20,), (20,), (20,), (20,), (1,)]
    ws1, _ = eclipse_weights_and_biases(5, 20, rd=1)
    assert not np.array_equal(ws[0], ws1[0])
    # first layer's W is drawn before any bias: same as a hand-rolled rand draw
    rng_state = np.random.RandomState(5 * 13 + 20 * 7)
    s = rng_state.uniform(0.4, 1.8)
    w = rng_state.rand(20, 4)
    np.testing.assert_allclose(ws[0], s * w / np.linalg.norm(w, 2), rtol=0, atol=0)


def test_eclipse_net():
    net = eclipse_net(5, 20)
    assert net.depth == 5 and net.widths == [4, 20, 20, 20, 20, 1]
    assert all(a.name == "relu" for a in net.activations)
    assert all(b is None for b in net.biases)
    leg = eclipse_net(5, 20, legacy=True, activation="tanh")
    assert leg.activations[0].name == "tanh" and leg.biases[0].shape == (20,)
    with pytest.raises(ValueError):
        eclipse_weights(5, 20, rd=1)
