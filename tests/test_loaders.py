"""Loaders: every input form gives the same float64 MLP, modules fold exactly, bad input is one InputError line."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.io import savemat
from torch import nn

from lipcore import MLP, InputError, get_activation
from lipcore.mlp.loaders import NotAnMLP, load, mlp_from_module

WIDTHS = [4, 6, 5, 3]


def random_weights(seed: int = 0, widths: list[int] = WIDTHS) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    Ws = [rng.standard_normal((o, i)) for i, o in zip(widths[:-1], widths[1:], strict=True)]
    bs = [rng.standard_normal(o) for o in widths[1:]]
    return Ws, bs


def state_dict_of(Ws: list[np.ndarray], bs: list[np.ndarray | None], dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Keys as nn.Sequential(Linear, ReLU, Linear, ...) names them: 0, 2, 4, ..."""
    sd: dict[str, torch.Tensor] = {}
    for k, (W, b) in enumerate(zip(Ws, bs, strict=True)):
        sd[f"{2 * k}.weight"] = torch.tensor(W, dtype=dtype)
        if b is not None:
            sd[f"{2 * k}.bias"] = torch.tensor(b, dtype=dtype)
    return sd


def write_weights(tmp: Path, fmt: str, Ws: list[np.ndarray], bs: list[np.ndarray | None] | None = None,
                  activation: str | None = None, stem: str = "net") -> Path:
    """Write an MLP in one of the supported formats the way its usual producer does."""
    bs = list(bs) if bs is not None else [None] * len(Ws)
    if fmt == "npz":
        p = tmp / f"{stem}.npz"
        arrays = {f"W{k}": W for k, W in enumerate(Ws, 1)}
        arrays |= {f"b{k}": b for k, b in enumerate(bs, 1) if b is not None}
        if activation:
            arrays["activation"] = np.array(activation)
        np.savez(p, **arrays)
    elif fmt == "npz-object":
        p = tmp / f"{stem}.npz"
        w = np.empty(len(Ws), dtype=object)
        for k, W in enumerate(Ws):
            w[k] = W
        arrays = {"weights": w}
        if all(b is not None for b in bs):
            b_arr = np.empty(len(bs), dtype=object)
            for k, b in enumerate(bs):
                b_arr[k] = b
            arrays["biases"] = b_arr
        np.savez(p, **arrays)
    elif fmt == "npz-positional":
        p = tmp / f"{stem}.npz"
        seq = [x for W, b in zip(Ws, bs, strict=True) for x in (W, b) if x is not None]
        np.savez(p, *seq)
    elif fmt == "npy":  # one object array of matrices (no biases)
        p = tmp / f"{stem}.npy"
        w = np.empty(len(Ws), dtype=object)
        for k, W in enumerate(Ws):
            w[k] = W
        np.save(p, w)
    elif fmt == "mat":  # ECLipsE: a (1, L) cell array `weights`, optional `biases` (see its generate scripts)
        p = tmp / f"{stem}.mat"
        cells = np.empty((1, len(Ws)), dtype=object)
        for k, W in enumerate(Ws):
            cells[0, k] = W
        data: dict = {"weights": cells}
        if all(b is not None for b in bs):
            bcells = np.empty((1, len(bs)), dtype=object)
            for k, b in enumerate(bs):
                bcells[0, k] = b
            data["biases"] = bcells
        if activation:
            data["activation"] = activation
        savemat(p, data)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        p = tmp / f"{stem}.safetensors"
        save_file(state_dict_of(Ws, bs), str(p), metadata={"activation": activation} if activation else None)
    elif fmt in ("pt", "pth"):
        p = tmp / f"{stem}.{fmt}"
        sd = state_dict_of(Ws, bs)
        torch.save({"state_dict": sd, "epoch": 3, **({"activation": activation} if activation else {})}
                   if fmt == "pth" else sd, p)
    else:
        raise ValueError(fmt)
    return p


FORMATS = ["npz", "npz-object", "npz-positional", "mat", "safetensors", "pt", "pth"]


def assert_same_net(mlp: MLP, Ws: list[np.ndarray], bs: list[np.ndarray | None]) -> None:
    assert mlp.depth == len(Ws)
    for got, want in zip(mlp.weights, Ws, strict=True):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want)
    for got, want in zip(mlp.biases, bs, strict=True):
        if want is None:
            assert got is None
        else:
            np.testing.assert_array_equal(got, want)


# -- round trips -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips_to_the_same_mlp(tmp_path: Path, fmt: str) -> None:
    Ws, bs = random_weights(1)
    p = write_weights(tmp_path, fmt, Ws, bs)
    mlp = load(p, activation="tanh")
    assert_same_net(mlp, Ws, bs)
    assert [a.name for a in mlp.activations] == ["tanh"] * 2
    assert mlp.name == p.name
    assert mlp.widths == WIDTHS


def test_npy_object_array(tmp_path: Path) -> None:
    Ws, _ = random_weights(18)
    assert_same_net(load(write_weights(tmp_path, "npy", Ws), activation="relu"), Ws, [None] * 3)


@pytest.mark.parametrize("fmt", ["npz", "mat", "safetensors", "pt"])
def test_round_trip_without_biases(tmp_path: Path, fmt: str) -> None:
    Ws, _ = random_weights(2)
    mlp = load(write_weights(tmp_path, fmt, Ws, None), activation="relu")
    assert_same_net(mlp, Ws, [None] * 3)


def test_in_memory_forms_and_passthrough() -> None:
    Ws, bs = random_weights(3)
    assert_same_net(load(Ws, activation="relu"), Ws, [None] * 3)
    assert_same_net(load([x for pair in zip(Ws, bs, strict=True) for x in pair], activation="relu"), Ws, bs)
    assert_same_net(load(list(zip(Ws, bs, strict=True)), activation="relu"), Ws, bs)
    assert_same_net(load({f"W{k}": W for k, W in enumerate(Ws, 1)}, activation="relu"), Ws, [None] * 3)
    assert_same_net(load(state_dict_of(Ws, bs), activation="relu"), Ws, bs)
    assert_same_net(load([torch.tensor(W) for W in Ws], activation="relu"), Ws, [None] * 3)
    mlp = MLP.from_arrays(Ws, get_activation("relu"))
    assert load(mlp) is mlp


def test_float32_safetensors_is_widened_exactly(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    Ws, bs = random_weights(4)
    sd = state_dict_of(Ws, bs, dtype=torch.float32)
    save_file(sd, str(tmp_path / "f32.safetensors"))
    mlp = load(tmp_path / "f32.safetensors", activation="relu")
    assert_same_net(mlp, [sd[f"{2 * k}.weight"].double().numpy() for k in range(3)],
                    [sd[f"{2 * k}.bias"].double().numpy() for k in range(3)])


def test_state_dict_layers_in_natural_order(tmp_path: Path) -> None:
    """layers.10 comes after layers.2 (a plain string sort would swap them)."""
    widths = [3] + [4] * 10 + [2]
    Ws, bs = random_weights(5, widths)
    sd = {f"layers.{k}.weight": torch.tensor(W) for k, W in enumerate(Ws)}
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "deep.safetensors"))
    assert_same_net(load(tmp_path / "deep.safetensors", activation="relu"), Ws, [None] * len(Ws))


def test_state_dict_falls_back_to_file_order_when_names_do_not_sort(tmp_path: Path) -> None:
    Ws, bs = random_weights(6)
    sd = OrderedDict([("input.weight", torch.tensor(Ws[0])), ("hidden.weight", torch.tensor(Ws[1])),
                      ("output.weight", torch.tensor(Ws[2]))])
    torch.save(sd, tmp_path / "named.pt")
    assert_same_net(load(tmp_path / "named.pt", activation="relu"), Ws, [None] * 3)


# -- activations ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["npz", "mat", "safetensors", "pth"])
def test_activation_stored_in_the_file(tmp_path: Path, fmt: str) -> None:
    Ws, bs = random_weights(7)
    p = write_weights(tmp_path, fmt, Ws, bs, activation="leaky_relu:0.2")
    mlp = load(p)
    assert [(a.alpha, a.beta) for a in mlp.activations] == [(0.2, 1.0)] * 2
    assert load(p, activation="sigmoid").activations[0].beta == 0.25  # the argument wins


def test_slope_and_per_layer_activations(tmp_path: Path) -> None:
    Ws, bs = random_weights(8)
    p = write_weights(tmp_path, "npz", Ws, bs)
    mlp = load(p, slope=(-0.1, 1.1))
    assert [(a.alpha, a.beta) for a in mlp.activations] == [(-0.1, 1.1)] * 2
    assert load(p, slope="0,0.5").activations[0].beta == 0.5
    mlp = load(p, activation="tanh,elu")
    assert [a.name for a in mlp.activations] == ["tanh", "elu"]
    single = load([Ws[0]])  # one layer: no hidden activation needed
    assert single.depth == 1 and single.activations == []


# -- modules -------------------------------------------------------------------------------------------------
def _randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
                if m.weight is not None:
                    m.weight.copy_(torch.randn(n, generator=g))
                    m.bias.copy_(torch.randn(n, generator=g))
    return module.double().eval()


def assert_same_function(mlp: MLP, module: nn.Module, n_in: int, tol: float = 1e-10) -> None:
    x = torch.randn(64, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        want = module(x)
        got = mlp.torch_callable()(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < tol


def test_sequential_with_batchnorm_folded_exactly() -> None:
    torch.manual_seed(0)
    net = _randomize_bn(nn.Sequential(
        nn.Flatten(), nn.BatchNorm1d(4),                      # BN before the first Linear: columns
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),  # BN after a Linear: rows
        nn.Sequential(nn.Linear(8, 8, bias=False), nn.BatchNorm1d(8, affine=False), nn.Identity(), nn.Tanh()),
        nn.Linear(8, 6), nn.Linear(6, 3)))                     # consecutive Linear layers: multiplied out
    mlp = mlp_from_module(net, name="bn-net")
    assert mlp.widths == [4, 8, 8, 3]
    assert [a.name for a in mlp.activations] == ["relu", "tanh"]
    assert mlp.name == "bn-net"
    assert_same_function(mlp, net, 4)


def test_batchnorm_between_activations_becomes_a_diagonal_layer() -> None:
    net = _randomize_bn(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)))
    mlp = mlp_from_module(net)
    assert mlp.widths == [4, 5, 5, 2]
    assert np.count_nonzero(mlp.weights[1] - np.diag(np.diag(mlp.weights[1]))) == 0
    assert_same_function(mlp, net, 4)


class FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 7), nn.Linear(7, 7), nn.Linear(7, 2)
        self.bn = nn.BatchNorm1d(7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.size(0), -1)
        x = F.leaky_relu(self.bn(self.fc1(x)), 0.2)
        x = torch.tanh(self.fc2(x)).relu()
        x = F.gelu(F.dropout(x, 0.1, self.training), approximate="tanh")
        return self.fc3(F.silu(x))


def test_fx_traced_module_with_functional_calls() -> None:
    net = _randomize_bn(FunctionalNet())
    mlp = mlp_from_module(net, input_shape=(2, 3))
    # fc1+bn, act (leaky_relu), fc2, tanh>relu>gelu>silu composed into one activation, fc3
    assert mlp.widths == [6, 7, 7, 2]
    comp = mlp.activations[1]
    assert comp.name == "tanh>relu>gelu(tanh)>silu"
    silu, gelu = get_activation("silu"), get_activation("gelu_tanh")
    corners = [p * q for p in (gelu.alpha, gelu.beta) for q in (silu.alpha, silu.beta)]
    assert (comp.alpha, comp.beta) == (min(corners), max(corners))
    x = torch.randn(32, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        assert (mlp.torch_callable()(x.reshape(32, -1)) - net(x)).abs().max().item() < 1e-10


class LoopNet(nn.Module):
    """The common hand-written MLP: a ModuleList walked in a loop (fx unrolls it)."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:], strict=True))
        self.act = nn.ELU(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


def test_fx_module_list_loop() -> None:
    net = LoopNet([3, 8, 8, 8, 2]).double().eval()
    mlp = mlp_from_module(net)
    assert mlp.widths == [3, 8, 8, 8, 2] and [a.name for a in mlp.activations] == ["elu(0.5)"] * 3
    np.testing.assert_array_equal(mlp.weights[2], net.layers[2].weight.detach().numpy())
    assert_same_function(mlp, net, 3)


class LinearFn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(5, 3, dtype=torch.float64))
        self.b1 = nn.Parameter(torch.randn(5, dtype=torch.float64))
        self.out = nn.Linear(5, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.softplus(F.linear(x, self.w1, self.b1), beta=2.0))


def test_fx_functional_linear() -> None:
    net = LinearFn().eval()
    mlp = mlp_from_module(net)
    assert mlp.widths == [3, 5, 1]
    assert_same_function(mlp, net, 3)


@pytest.mark.parametrize("act,interval", [
    (nn.ReLU(), (0.0, 1.0)), (nn.LeakyReLU(0.1), (0.1, 1.0)), (nn.Tanh(), (0.0, 1.0)), (nn.Sigmoid(), (0.0, 0.25)),
    (nn.ELU(), (0.0, 1.0)), (nn.Softplus(), (0.0, 1.0)), (nn.SiLU(), (-0.0998, 1.0998)),
    (nn.GELU(), (-0.1289, 1.1289)),
])
def test_each_activation_module(act: nn.Module, interval: tuple[float, float]) -> None:
    net = nn.Sequential(nn.Linear(3, 6), act, nn.Linear(6, 2)).double().eval()
    mlp = mlp_from_module(net)
    a = mlp.activations[0]
    assert a.alpha == pytest.approx(interval[0], abs=2e-4) and a.beta == pytest.approx(interval[1], abs=2e-4)
    assert a.alpha <= interval[0] + 1e-4 and a.beta >= interval[1] - 1e-4 or interval[0] == 0
    assert_same_function(mlp, net, 3)


class DoubledSequential(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def test_sequential_subclass_with_its_own_forward_is_traced() -> None:
    net = DoubledSequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)).double()
    with pytest.raises(NotAnMLP, match="unsupported operation mul"):
        mlp_from_module(net)


def test_prelu_per_channel_slopes() -> None:
    prelu = nn.PReLU(6)
    with torch.no_grad():
        prelu.weight.copy_(torch.linspace(-0.3, 0.4, 6))
    net = nn.Sequential(nn.Linear(3, 6), prelu, nn.Linear(6, 2)).double().eval()
    mlp = mlp_from_module(net)
    a = mlp.activations[0]
    assert (a.alpha, a.beta) == (pytest.approx(-0.3), 1.0)
    assert_same_function(mlp, net, 3)


def _max_jacobian_norm(module: nn.Module, n_in: int, n: int = 400) -> float:
    x = torch.randn(n, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2
    jac = torch.func.vmap(torch.func.jacrev(lambda v: module(v[None])[0]))(x)
    return torch.linalg.matrix_norm(jac, ord=2).max().item()


def test_activation_after_last_linear_and_before_first_is_exact_and_sound() -> None:
    net = nn.Sequential(nn.Tanh(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.Sigmoid()).double().eval()
    mlp = mlp_from_module(net)
    assert mlp.widths == [4, 4, 6, 3, 3]
    np.testing.assert_array_equal(mlp.weights[0], np.eye(4))
    np.testing.assert_array_equal(mlp.weights[-1], np.eye(3))
    assert [a.name for a in mlp.activations] == ["tanh", "relu", "sigmoid"]
    assert_same_function(mlp, net, 4)
    naive = np.prod([np.linalg.norm(W, 2) for W in mlp.weights]) * 1 * 1 * 0.25
    lower = _max_jacobian_norm(net, 4)
    assert 0 < lower <= naive
    closed_form = pytest.importorskip("lipcore.mlp.closed_form")
    from lipcore.variants import Context

    for fn in (closed_form.naive, closed_form.eclipse_fast, closed_form.sh_combined):
        value, _ = fn(mlp, Context())
        assert value >= lower * (1 - 1e-9)
    assert closed_form.naive(mlp, Context())[0] == pytest.approx(naive, rel=1e-9)


def test_analyze_accepts_a_module() -> None:
    pytest.importorskip("lipcore.mlp.closed_form")
    import lipcore

    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    rep = lipcore.analyze(net, variants=["naive"], name="seq")
    want = np.linalg.norm(net[0].weight.detach().numpy(), 2) * np.linalg.norm(net[2].weight.detach().numpy(), 2)
    assert rep.model == "seq"
    assert rep.results["naive"].status == "ok"
    assert rep.results["naive"].value == pytest.approx(want, rel=1e-12)


# -- not an MLP ----------------------------------------------------------------------------------------------
class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.fc(x))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.fc(x)
        return x


@pytest.mark.parametrize("module,needle", [
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)), "unsupported layer Conv2d at '0'"),
    (nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.LayerNorm(4))), "unsupported layer LayerNorm at '1.1'"),
    (Residual(), "combines several tensors"),
    (Branchy(), "torch.fx cannot trace Branchy"),
    (nn.Sequential(nn.ReLU()), "no Linear layer"),
    (nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)), "unsupported layer Softmax at '1'"),
])
def test_not_an_mlp_names_the_layer(module: nn.Module, needle: str) -> None:
    with pytest.raises(NotAnMLP) as ei:
        mlp_from_module(module)
    assert needle in str(ei.value)
    assert "\n" not in str(ei.value)
    assert isinstance(ei.value, InputError)


def test_batchnorm_without_running_stats_is_refused() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.ReLU(), nn.Linear(4, 1))
    with pytest.raises(InputError, match="no running statistics"):
        mlp_from_module(net)


def test_module_shape_mismatch_and_input_shape() -> None:
    with pytest.raises(InputError, match=r"shape mismatch: '0' outputs 4 features but '1' expects 5"):
        mlp_from_module(nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)))
    with pytest.raises(InputError, match="input shape"):
        mlp_from_module(nn.Sequential(nn.Linear(3, 4)), input_shape=(7,))


# -- state dicts with BatchNorm and convolutions -----------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_state_dict_with_batchnorm_is_folded(tmp_path: Path, fmt: str) -> None:
    net = _randomize_bn(nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(),
                                      nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)), seed=4)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    p = tmp_path / f"bn.{fmt}"
    if fmt == "pt":
        torch.save(sd, p)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(p))
    mlp = load(p, activation="relu", bn_eps=1e-5)  # the eps the modules used (a state dict does not store it)
    assert mlp.widths == [5, 8, 6, 2]
    assert_same_function(mlp, net, 5)
    assert all("eps = 1e-05 (given)" in a for a in mlp.assumptions)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_conv_state_dict_is_refused(tmp_path: Path, fmt: str) -> None:
    sd = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).state_dict()
    p = tmp_path / f"cnn.{fmt}"
    if fmt == "pt":
        torch.save(sd, p)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(p))
    with pytest.raises(NotAnMLP) as ei:
        load(p, activation="relu")
    msg = str(ei.value)
    assert msg.startswith(str(p)) and "'0.weight' is a 4-D tensor" in msg and "state-dict files must hold MLPs" in msg


# -- the bad-input matrix ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["npz", "npz-object", "npy", "mat", "safetensors", "pt", "pth"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_files(tmp_path: Path, fmt: str, damage: str) -> None:
    Ws, bs = random_weights(9, [4, 30, 30, 2])
    p = write_weights(tmp_path, fmt, Ws, bs)
    raw = p.read_bytes()
    if damage == "garbage":
        p.write_bytes(np.random.default_rng(0).bytes(2000))
    elif damage == "truncated":
        p.write_bytes(raw[: len(raw) // 2])
    else:
        p.write_bytes(b"")
    with pytest.raises(InputError) as ei:
        load(p, activation="relu")
    msg = str(ei.value)
    assert msg.startswith(f"{p}: ") and "\n" not in msg
    assert ("empty file" in msg) if damage == "empty" else ("corrupt or truncated" in msg)


@pytest.mark.parametrize("fmt", ["npz", "npz-object", "mat", "safetensors", "pt"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_weights(tmp_path: Path, fmt: str, bad: float) -> None:
    Ws, bs = random_weights(10)
    Ws[1][2, 3] = bad
    p = write_weights(tmp_path, fmt, Ws, bs)
    with pytest.raises(InputError) as ei:
        load(p, activation="relu")
    word = "NaN" if np.isnan(bad) else "Inf"
    assert str(ei.value) == f"{p}: layer 2 weight contains {word} values"


def test_nan_bias_and_batchnorm_stats(tmp_path: Path) -> None:
    Ws, bs = random_weights(11)
    bs[0][1] = np.nan
    with pytest.raises(InputError, match="layer 1 bias contains NaN"):
        load(write_weights(tmp_path, "npz", Ws, bs), activation="relu")


@pytest.mark.parametrize("fmt", ["npz", "mat", "safetensors", "pt"])
def test_shape_mismatch(tmp_path: Path, fmt: str) -> None:
    Ws, bs = random_weights(12)
    Ws[1] = Ws[1][:, :4]  # layer 1 outputs 6, layer 2 expects 4
    p = write_weights(tmp_path, fmt, Ws, [None] * 3)
    with pytest.raises(InputError) as ei:
        load(p, activation="relu")
    assert str(ei.value).startswith(f"{p}: shape mismatch: ") and "outputs 6 features" in str(ei.value)
    assert "expects 4" in str(ei.value)


def test_transposed_weights_get_a_hint(tmp_path: Path) -> None:
    Ws, _ = random_weights(17)
    p = write_weights(tmp_path, "npz", [W.T for W in Ws])
    with pytest.raises(InputError, match=r"shape mismatch: .*look stored as in x out.*transpose them"):
        load(p, activation="relu")


def test_activation_problems(tmp_path: Path) -> None:
    Ws, bs = random_weights(13)
    p = write_weights(tmp_path, "npz", Ws, bs)
    with pytest.raises(InputError, match=r"net\.npz: the file does not record the activation: pass --activation NAME"):
        load(p)
    with pytest.raises(InputError, match=r"unsupported activation 'swishy'; supported: .*relu"):
        load(p, activation="swishy")
    with pytest.raises(InputError, match="bad activation 'leaky_relu:abc'"):
        load(p, activation="leaky_relu:abc")
    with pytest.raises(InputError, match="bad slope interval"):
        load(p, slope=(1.0, 0.0))
    with pytest.raises(InputError, match="not both"):
        load(p, activation="relu", slope=(0, 1))
    with pytest.raises(InputError, match="3 activations given for 2 hidden layers"):
        load(p, activation="relu,relu,relu")


def test_other_bad_files(tmp_path: Path) -> None:
    Ws, bs = random_weights(14)
    with pytest.raises(InputError, match="file not found"):
        load(tmp_path / "nope.npz", activation="relu")
    with pytest.raises(InputError, match="is a directory"):
        load(tmp_path, activation="relu")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(InputError, match=r"unsupported file type '\.onnx'"):
        load(tmp_path / "w.onnx", activation="relu")
    np.savez(tmp_path / "gap.npz", W1=Ws[0], W3=Ws[2])
    with pytest.raises(InputError, match="missing W2"):
        load(tmp_path / "gap.npz", activation="relu")
    np.savez(tmp_path / "none.npz", foo=np.ones(3))
    with pytest.raises(InputError, match="no weight matrices found"):
        load(tmp_path / "none.npz", activation="relu")
    np.savez(tmp_path / "text.npz", W1=np.array([["a", "b"]]))
    with pytest.raises(InputError, match="array 'W1' is not numeric"):
        load(tmp_path / "text.npz", activation="relu")
    np.savez(tmp_path / "cube.npz", W1=np.ones((2, 3, 4)), W2=np.ones((1, 2)))
    with pytest.raises(InputError, match="layer 1 weight must be a non-empty 2-D matrix"):
        load(tmp_path / "cube.npz", activation="relu")
    with pytest.raises(InputError, match="no weight matrices"):
        load([], activation="relu")


def test_object_npz_never_unpickles_foreign_objects(tmp_path: Path) -> None:
    evil = np.empty(2, dtype=object)
    evil[0], evil[1] = np.ones((2, 2)), OrderedDict(a=1)
    np.savez(tmp_path / "evil.npz", weights=evil)
    with pytest.raises(InputError, match="refusing to unpickle collections.OrderedDict"):
        load(tmp_path / "evil.npz", activation="relu")


def test_pickled_module_is_refused_with_advice(tmp_path: Path) -> None:
    torch.save(nn.Sequential(nn.Linear(2, 2)), tmp_path / "whole.pt", pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(InputError, match=r"save model\.state_dict\(\) instead"):
        load(tmp_path / "whole.pt", activation="relu")


def test_mat_struct_and_matlab_column_cells(tmp_path: Path) -> None:
    Ws, bs = random_weights(15)
    cells = np.empty((len(Ws), 1), dtype=object)  # a column cell array {W1; W2; W3}
    for k, W in enumerate(Ws):
        cells[k, 0] = W
    savemat(tmp_path / "col.mat", {"weights": cells, "activation": "relu"})
    assert_same_net(load(tmp_path / "col.mat"), Ws, [None] * 3)
    savemat(tmp_path / "wk.mat", {f"W{k}": W for k, W in enumerate(Ws, 1)})
    assert_same_net(load(tmp_path / "wk.mat", activation="relu"), Ws, [None] * 3)


def test_state_dict_order_that_is_ambiguous_is_refused(tmp_path: Path) -> None:
    """An autoencoder's names sort decoder-first, and that order also fits: refuse rather than guess."""
    rng = np.random.default_rng(16)
    sd = OrderedDict([("encoder.0.weight", torch.tensor(rng.standard_normal((8, 4)))),
                      ("encoder.2.weight", torch.tensor(rng.standard_normal((3, 8)))),
                      ("decoder.0.weight", torch.tensor(rng.standard_normal((8, 3)))),
                      ("decoder.2.weight", torch.tensor(rng.standard_normal((4, 8))))])
    torch.save(sd, tmp_path / "ae.pt")
    with pytest.raises(InputError, match=r"ambiguous layer order: the names sort as \[decoder\.0, decoder\.2, "
                                         r"encoder\.0, encoder\.2\] but the file stores \[encoder\.0"):
        load(tmp_path / "ae.pt", activation="relu")
