"""Lower bounds (lipcore.lower): measured values that never exceed the truth, reach it where it is known."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from lipcore import MLP, get_activation
from lipcore.lower import lower_ascent, lower_sampled
from lipcore.mlp.benchnets import eclipse_net, eclipse_weights_and_biases
from lipcore.variants import Context

RELU = get_activation("relu")
IDENT = get_activation("identity")


def _both(target, seed: int = 0, options: dict | None = None) -> tuple[float, float]:
    ctx = Context(seed=seed, options=options or {})
    return lower_sampled(target, ctx)[0], lower_ascent(target, ctx)[0]


def _prod_norm(ws: list[np.ndarray]) -> float:
    p = ws[0]
    for w in ws[1:]:
        p = w @ p
    return float(np.linalg.norm(p, 2))


def test_single_layer_reaches_the_spectral_norm() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 7))
    net = MLP.from_arrays([w], [], biases=[rng.standard_normal(5)], name="one-layer")
    exact = float(np.linalg.norm(w, 2))
    for val in _both(net):
        assert val == pytest.approx(exact, rel=1e-6)
        assert val <= exact * (1 + 1e-12)


@pytest.mark.parametrize("depth", [2, 4])
def test_linear_net_reaches_the_product_norm(depth: int) -> None:
    rng = np.random.default_rng(depth)
    dims = [6] + [9] * (depth - 1) + [3]
    ws = [rng.standard_normal((dims[k + 1], dims[k])) for k in range(depth)]
    net = MLP.from_arrays(ws, IDENT, biases=[rng.standard_normal(d) for d in dims[1:]])
    exact = _prod_norm(ws)
    for val in _both(net):
        assert val == pytest.approx(exact, rel=1e-6)
        assert val <= exact * (1 + 1e-12)


@pytest.mark.parametrize("layers,width", [(2, 20), (10, 20), (5, 80)])
def test_legacy_relu_nets_reach_the_true_constant(layers: int, width: int) -> None:
    # non-negative weights and biases: the true constant is exactly ‖W_L⋯W_1‖ (MATH §8)
    ws, _ = eclipse_weights_and_biases(layers, width)
    net = eclipse_net(layers, width, legacy=True)
    exact = _prod_norm(ws)
    for val in _both(net):
        assert val <= exact * (1 + 1e-9)
        assert val >= 0.97 * exact


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "leaky_relu:0.1", "silu"])
def test_never_above_an_exact_upper_bound(activation: str) -> None:
    """Compare with the naive bound computed here and, for ReLU, with the certified LipSDP-Neuron value."""
    net = eclipse_net(5, 20, activation=activation)
    act = get_activation(activation)
    naive = math.prod(float(np.linalg.norm(w, 2)) for w in net.weights) * act.gain ** (net.depth - 1)
    lo = _both(net)
    assert 0 < min(lo) and max(lo) <= naive
    if activation == "relu":
        assert max(lo) <= 0.568873 * (1 + 1e-5)  # LipSDP-Neuron (MATH §9), certified
        assert max(lo) >= 0.17  # MATH §9 reference LB 0.1785


def test_deterministic_with_the_seed() -> None:
    net = eclipse_net(10, 20)
    opts = {"lower-sampled": {"samples": 2048}, "lower-ascent": {"steps": 60, "jv_steps": 30}}
    a = _both(net, seed=5, options=opts)
    b = _both(net, seed=5, options=opts)
    assert a == b
    c = _both(net, seed=6, options=opts)
    assert c != a  # another seed samples other points
    assert all(x > 0 for x in c)


def test_ascent_starts_from_the_sampled_best() -> None:
    net = eclipse_net(5, 60)
    ctx = Context(seed=0)
    s = lower_sampled(net, ctx)[0]
    a = lower_ascent(net, ctx)[0]  # reuses lower-sampled's points via ctx.memo
    assert a >= s * (1 - 1e-9)
    assert lower_ascent(net, Context(seed=0))[0] == pytest.approx(a, rel=1e-12)  # same without the memo


def test_default_cost_is_modest_on_a_deep_mlp() -> None:
    net = eclipse_net(20, 100)
    t0 = time.perf_counter()
    lo = _both(net)
    assert time.perf_counter() - t0 < 15  # ~2 s on an idle core; generous for a shared 2-core box
    assert 0 < min(lo)


def test_an_expired_deadline_stops_after_one_measured_batch() -> None:
    # analyze() does not start a variant with no time left; a variant already running when the deadline
    # passes keeps what it measured: one batch (a sound lower bound), never a failure with nothing
    ctx = Context(deadline=time.monotonic() - 1, options={"lower-sampled": {"samples": 64, "batch": 16}})
    v, p = lower_sampled(eclipse_net(2, 20), ctx)
    assert p["samples"] == 16 and v > 0


# ------------------------------------------------------------------------------------------ graph targets


class ModuleTarget:
    """What the graph engine hands the lower bounds: a module, an input shape, a name."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...], name: str = "conv") -> None:
        self.module = module.eval()
        self.input_shape = input_shape
        self.name = name
        self.calls: list[torch.dtype] = []

    def torch_callable(self, device, dtype):
        self.calls.append(dtype)
        return self.module.to(device=device, dtype=dtype)


def _conv_net(relu: bool) -> nn.Module:
    torch.manual_seed(0)
    act = nn.ReLU() if relu else nn.Identity()
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), act, nn.Conv2d(4, 3, 3, stride=2, padding=1), act,
                         nn.Flatten(), nn.Linear(3 * 5 * 5, 80)).double()


def _dense(layer: nn.Module, shape: tuple[int, ...]) -> np.ndarray:
    """The matrix of a linear layer (bias removed) on flattened inputs, by its exact Jacobian."""
    x = torch.zeros((1, *shape), dtype=torch.float64)
    jac = torch.func.jacrev(lambda z: layer(z.reshape(1, *shape)).reshape(-1))(x.reshape(-1))
    return jac.detach().numpy()


def _linear_parts(net: nn.Module, shape: tuple[int, ...]) -> list[np.ndarray]:
    mats, x = [], torch.zeros((1, *shape), dtype=torch.float64)
    for layer in net:
        if isinstance(layer, nn.Conv2d | nn.Linear):
            mats.append(_dense(layer, tuple(x.shape[1:])))
        x = layer(x)
    return mats


def test_conv_module_linear_reaches_the_operator_norm() -> None:
    net = _conv_net(relu=False)
    shape = (2, 10, 10)
    exact = _prod_norm(_linear_parts(net, shape))
    target = ModuleTarget(net, shape)
    for val in _both(target):
        assert val <= exact * (1 + 1e-9)
        assert val >= exact * (1 - 1e-3)


def test_conv_module_relu_below_the_naive_bound() -> None:
    net = _conv_net(relu=True)
    shape = (2, 10, 10)
    naive = math.prod(float(np.linalg.norm(m, 2)) for m in _linear_parts(net, shape))
    target = ModuleTarget(net, shape)
    lo = _both(target)
    assert 0 < min(lo) and max(lo) <= naive


def test_conv_module_float32_is_remeasured_in_float64() -> None:
    net = _conv_net(relu=False)
    shape = (2, 10, 10)
    exact = _prod_norm(_linear_parts(net, shape))
    target = ModuleTarget(net, shape)
    opts = {"lower-sampled": {"dtype": "float32"}, "lower-ascent": {"dtype": "float32"}}
    ctx = Context(seed=0, options=opts)
    s, ps = lower_sampled(target, ctx)
    a, pa = lower_ascent(target, ctx)
    assert ps["dtype"] == "float32" and ps.get("remeasured_float64")
    assert torch.float64 in target.calls
    for val in (s, a):
        assert val <= exact * (1 + 1e-9)
        assert val >= exact * (1 - 1e-2)
    assert next(target.module.parameters()).dtype == torch.float32  # handed back in the working dtype
