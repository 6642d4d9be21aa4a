"""The closed world of the graph tracer: every argument read, every reading replayed, every bound sound.

Properties over families of small models built from the op table's vocabulary (scalar arguments, reduction
axes, duplicated indices, pads, activation parameters): each certified upper bound is >= the largest dense
Jacobian norm measured at random inputs; exact where the map is linear; refused by name where it is not
Lipschitz. And the table's own guards: an unread argument or a wrong reading refuses the node.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipcore
from lipcore import activations as acts
from lipcore.graph import build_graph, ops

UPPER = ["naive", "eclipse-fast", "sh-combined"]


class Net(nn.Module):
    def __init__(self, fn, *mods: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.m = nn.ModuleList(mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.m, x)


def _conv(ci: int = 3, co: int = 4, k: int = 3, **kw) -> nn.Conv2d:
    return nn.Conv2d(ci, co, k, **kw)


def jacobian_lower(m: nn.Module, shape: tuple[int, ...], n: int = 5) -> float:
    m = copy.deepcopy(m).double().eval()
    g = torch.Generator().manual_seed(1)
    best = 0.0
    for i in range(n):
        x = torch.randn(int(np.prod(shape)), dtype=torch.float64, generator=g) * (1 + i)
        J = torch.autograd.functional.jacobian(lambda z: m(z.reshape(1, *shape)).reshape(-1), x)
        best = max(best, float(torch.linalg.matrix_norm(J, 2)))
    return best


def _check_sound(m: nn.Module, shape: tuple[int, ...], exact: float | None = None) -> dict:
    rep = lipcore.analyze(m, UPPER, input_shape=shape, name="t")
    lb = jacobian_lower(m, shape)
    res = rep.results
    for v in UPPER:
        r = res[v]
        assert r.status == "ok", (v, r.reason)
        assert r.value >= lb * (1 - 1e-6), (v, r.value, lb)
        if exact is not None:
            assert r.value >= exact * (1 - 1e-6)
    return {v: res[v].value for v in UPPER} | {"lower": lb}


# -- scalar arguments --------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [5.0, -3.0, 0.5])
@pytest.mark.parametrize("form", ["add_const_first", "sub", "rsub", "add_both"])
def test_add_sub_alpha_is_read(form: str, alpha: float) -> None:
    torch.manual_seed(0)
    fns = {
        "add_const_first": lambda m, x: torch.add(1.0, m[0](x).relu(), alpha=alpha).flatten(1),
        "sub": lambda m, x: torch.sub(m[0](x).relu(), m[0](x), alpha=alpha).flatten(1),
        "rsub": lambda m, x: (torch.rsub(m[0](x), 2.0, alpha=alpha).relu() - m[0](x).relu()).flatten(1),
        "add_both": lambda m, x: torch.add(m[0](x).relu(), m[0](x).tanh(), alpha=alpha).flatten(1),
    }
    _check_sound(Net(fns[form], _conv(padding=1)).eval(), (3, 5, 5))


def test_sign_of_a_constant_minus_input_is_kept() -> None:
    """relu(x) - relu(-x) = x: dropping the sign would make it 0 (a bound far below the truth)."""
    torch.manual_seed(0)
    m = Net(lambda m, x: (m[0](x).relu() - (0.0 - m[0](x)).relu()).flatten(1), _conv(padding=1)).eval()
    vals = _check_sound(m, (3, 4, 4))
    assert vals["lower"] > 0.5


# -- reductions over every axis -------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [(1,), (2,), (3,), (1, 2), (2, 3), (1, 3), (-1,), (-3, -1)])
@pytest.mark.parametrize("op", ["mean", "sum"])
def test_reductions_over_any_axes(dims: tuple[int, ...], op: str) -> None:
    torch.manual_seed(0)
    m = Net(lambda m, x: getattr(m[0](x).relu(), op)(dim=dims).flatten(1), _conv(3, 6, padding=1)).eval()
    _check_sound(m, (3, 3, 5))


@pytest.mark.parametrize("dims", [(1,), (2,), (3,), (1, 2, 3), (2, 3)])
def test_mean_of_a_linear_map_is_exact(dims: tuple[int, ...]) -> None:
    """A linear net: the bound is >= its exact norm (dense Jacobian) for every reduction axis, and equal to it
    for a mean over the spatial axes of a circularly exact conv (padding 0, stride 1: the lifted symbol is the
    zero-padded operator's restriction, so equality needs no padding) - see test_graph_fourier for circular runs."""
    torch.manual_seed(0)
    m = Net(lambda m, x: m[0](x).mean(dim=dims).reshape(1, -1), _conv(3, 5, padding=1)).eval()
    rep = lipcore.analyze(m, ["naive", "eclipse-fast"], input_shape=(3, 4, 6), name="lin")
    exact = jacobian_lower(m, (3, 4, 6), n=1)
    assert rep.results["eclipse-fast"].value >= exact * (1 - 1e-9)
    assert rep.results["naive"].value >= exact * (1 - 1e-9)
    assert rep.results["eclipse-fast"].value <= rep.results["naive"].value * (1 + 1e-9)


# -- duplication and coordinate maps ---------------------------------------------------------------------------
COORD = {
    "index_select_dup": lambda t: t.flatten(1).index_select(1, torch.tensor([0, 0, 0, 0, 5, 5, 7])),
    "getitem_dup": lambda t: t[:, [1, 1, 1, 0]],
    "advanced_index": lambda t: t[:, :, [0, 0, 2], :],
    "repeat": lambda t: t.repeat(1, 3, 1, 1),
    "expand": lambda t: t[:, :, :1].expand(1, 4, 5, 4),
    "upsample3": lambda t: F.interpolate(t, scale_factor=3, mode="nearest"),
    "pad_reflect": lambda t: F.pad(t, (2, 2, 1, 1), mode="reflect"),
    "pad_replicate": lambda t: F.pad(t, (3, 0, 0, 2), mode="replicate"),
    "pad_zero_asym": lambda t: F.pad(t, (0, 2, 1, 0)),
    "pad_const": lambda t: F.pad(t, (1, 1, 1, 1), value=2.5),
    "split_sum": lambda t: t.split([2, 2], dim=1)[1] - 3 * t.split(2, dim=1)[0],
    "chunk_cat": lambda t: torch.cat(t.chunk(2, dim=2)[::-1], 2),
    "unbind_stack": lambda t: torch.stack([u * 2 for u in t.unbind(1)], 1),
    "flip": lambda t: t + t.flip(3),
    "roll": lambda t: t.roll(1, dims=2),
    "slice_step": lambda t: t[:, :, ::2, 1:],
    "narrow": lambda t: t.narrow(1, 1, 2),
    "select": lambda t: t.select(1, 2),
    "channel_dup_conv": lambda t: t.index_select(1, torch.tensor([0, 0, 0, 3])),
}


@pytest.mark.parametrize("name", sorted(COORD))
def test_coordinate_maps_linear_exact_and_relu_sound(name: str) -> None:
    torch.manual_seed(0)
    f = COORD[name]
    lin = Net(lambda m, x: f(m[0](x)).flatten(1), _conv(3, 4, padding=1)).eval()
    rep = lipcore.analyze(lin, ["naive", "eclipse-fast"], input_shape=(3, 4, 4), name=name)
    exact = jacobian_lower(lin, (3, 4, 4), n=1)
    for v in ("naive", "eclipse-fast"):
        assert rep.results[v].status == "ok", rep.results[v].reason
        assert rep.results[v].value >= exact * (1 - 1e-6), (v, rep.results[v].value, exact)
    nl = Net(lambda m, x: m[1](f(m[0](x).relu()).relu().reshape(1, 4, -1)[..., None]).flatten(1),
             _conv(3, 4, padding=1), _conv(4, 2, 1)).eval()
    if name in ("select", "narrow", "getitem_dup", "channel_dup_conv", "index_select_dup", "split_sum"):
        nl = Net(lambda m, x: f(m[0](x).relu()).relu().flatten(1), _conv(3, 4, padding=1)).eval()
    _check_sound(nl, (3, 4, 4))


@pytest.mark.parametrize("seed", range(6))
def test_gather_norm_is_sqrt_multiplicity(seed: int) -> None:
    """Random index maps with repeats: the gather's naive norm equals its dense operator norm exactly."""
    rng = np.random.default_rng(seed)
    idx = torch.as_tensor(rng.integers(0, 12, size=int(rng.integers(3, 20))))
    m = Net(lambda m, x: x.flatten(1).index_select(1, idx)).eval()
    g = build_graph(m, (3, 2, 2))
    (node,) = [n for n in g.nodes if n.op == "gather"]
    J = ops.dense_jacobian(node)
    assert ops.KINDS["gather"].naive(node, {}, torch.device("cpu")) == pytest.approx(np.linalg.norm(J, 2), rel=1e-12)


# -- activation parameters -----------------------------------------------------------------------------------
ACT_MODULES = [nn.LeakyReLU(-3.0), nn.LeakyReLU(7.0), nn.LeakyReLU(0.2), nn.ELU(-2.0), nn.ELU(5.0), nn.CELU(0.3),
               nn.Hardtanh(-5.0, 5.0), nn.Softplus(beta=5.0), nn.Softplus(beta=0.3, threshold=40.0),
               nn.PReLU(4, init=-2.0), nn.GELU("tanh"), nn.Softshrink(0.7), nn.Threshold(0.5, 0.5), nn.SELU()]


@pytest.mark.parametrize("act", ACT_MODULES, ids=repr)
def test_activation_parameters_are_read_in_the_graph(act: nn.Module) -> None:
    torch.manual_seed(0)
    m = Net(lambda m, x: m[1](m[0](x)).flatten(1), _conv(padding=1), act).eval()
    _check_sound(m, (3, 4, 4))


@pytest.mark.parametrize("act", [nn.Softplus(threshold=0.0), nn.Softplus(threshold=5.0), nn.Threshold(0.5, 2.0),
                                 nn.Hardshrink(0.5), nn.CELU(-1.0)], ids=repr)
def test_discontinuous_activations_are_refused_by_name(act: nn.Module) -> None:
    m = Net(lambda m, x: m[1](m[0](x)).flatten(1), _conv(padding=1), act).eval()
    rep = lipcore.analyze(m, UPPER, input_shape=(3, 4, 4), name="jump")
    for v in UPPER:
        assert rep.results[v].status == "refused" and "at node" in rep.results[v].reason


def _derivative_range(fn, lo: float = -40, hi: float = 40) -> tuple[float, float]:
    x = torch.linspace(lo, hi, 400_001, dtype=torch.float64)
    y = fn(x)
    q = (y[1:] - y[:-1]) / (x[1:] - x[:-1])
    return float(q.min()), float(q.max())


PARAMS = {  # name -> parameter tuples to try (in the table's order)
    "leaky_relu": [(-2.0,), (0.3,), (4.0,)], "elu": [(0.5,), (3.0,), (-1.5,), (1.0, 2.0, 0.5)],
    "celu": [(0.2,), (2.0,)], "hardtanh": [(-3.0, 2.0), (0.0, 6.0), (1.0, 1.0)], "softplus": [(1.0, 20.0), (4.0, 60.0)],
    "softshrink": [(0.0,), (1.5,)], "hardshrink": [(0.0,)], "threshold": [(0.0, 0.0), (-1.0, -1.0)],
    "gelu": [("none",), ("tanh",)],
}


@pytest.mark.parametrize("name", sorted(k for k in acts.KINDS if k != "prelu"))
def test_every_table_activation_interval_holds_at_several_parameters(name: str) -> None:
    kind = acts.KINDS[name]
    for vals in PARAMS.get(name, [()]):
        a = kind.make(*vals, *[p.default for p in kind.params[len(vals):]])
        qmin, qmax = _derivative_range(a.fn)
        assert a.alpha <= qmin + 1e-7 and qmax <= a.beta + 1e-7, (name, vals, (a.alpha, a.beta), (qmin, qmax))


def test_activation_names_with_negative_parameters_parse() -> None:
    assert acts.get_activation("leaky_relu:-0.5").alpha == -0.5
    assert acts.get_activation("leaky_relu(-2)").alpha == -2.0
    assert acts.get_activation("elu:-1.5").alpha == -1.5
    with pytest.raises(ValueError, match="jump"):
        acts.get_activation("softplus:1,0")


# -- the table's guards --------------------------------------------------------------------------------------
def test_an_unread_argument_refuses_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    def lazy(c: ops.Call) -> ops.Parsed:  # forgets to read alpha
        c["self"], c["other"]
        return ops.Emit("add", ["self", "other"], {"coef": (1.0, 1.0)})

    monkeypatch.setitem(ops.PARSERS, "add", lazy)
    m = Net(lambda m, x: torch.add(m[0](x).relu(), m[0](x), alpha=2.0).flatten(1), _conv(padding=1)).eval()
    g = build_graph(m, (3, 4, 4))
    assert any("argument 'alpha' is not read" in u.why for u in g.unsupported)


def test_a_wrong_reading_is_caught_by_the_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    """A parser that reads alpha but maps it wrongly: the replay against the traced values refuses the node."""
    def wrong(c: ops.Call) -> ops.Parsed:
        c["alpha"], c["self"], c["other"]
        return ops.Emit("add", ["self", "other"], {"coef": (1.0, 1.0)})

    monkeypatch.setitem(ops.PARSERS, "add", wrong)
    m = Net(lambda m, x: torch.add(m[0](x).relu(), m[0](x), alpha=5.0).flatten(1), _conv(padding=1)).eval()
    rep = lipcore.analyze(m, ["naive"], input_shape=(3, 4, 4), name="wrong")
    assert rep.results["naive"].status == "refused" and "does not compute what lipzoo reads" in \
        rep.results["naive"].reason


def test_unknown_op_refused_by_name() -> None:
    m = Net(lambda m, x: torch.cumsum(m[0](x), dim=2).flatten(1), _conv(padding=1)).eval()
    rep = lipcore.analyze(m, ["naive"], input_shape=(3, 4, 4), name="cumsum")
    assert rep.results["naive"].status == "refused" and "cumsum" in rep.results["naive"].reason


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int32])
def test_lossy_casts_are_refused(dtype: torch.dtype) -> None:
    m = Net(lambda m, x: m[0](x).to(dtype).float().flatten(1), _conv(padding=1)).eval()
    rep = lipcore.analyze(m, ["naive"], input_shape=(3, 4, 4), name="cast")
    assert rep.results["naive"].status == "refused" and "cast" in rep.results["naive"].reason


def test_forward_hooks_are_bounded() -> None:
    """What is bounded is what the module computes: a hook scaling a layer by 10 is in the bound (both the MLP
    path, which hands hooked modules to the graph engine, and the graph path)."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    base = lipcore.analyze(mlp, ["naive"]).results["naive"].value
    mlp[0].register_forward_hook(lambda mod, i, o: o * 10)
    hooked = lipcore.analyze(mlp, ["naive", "eclipse-fast"], input_shape=(4,))
    assert hooked.results["naive"].value == pytest.approx(10 * base, rel=1e-5)
    assert hooked.results["eclipse-fast"].value >= jacobian_lower(mlp, (4,)) * (1 - 1e-6)


# -- no failed on supported ops ----------------------------------------------------------------------------------
NO_FAIL = {
    "linear_to_map_conv": (lambda m, x: m[1](m[0](x.flatten(1)).relu().view(1, 4, 3, 3)).flatten(1),
                           [nn.Linear(12, 36), _conv(4, 2, 3, padding=1)], (3, 2, 2)),
    "branches_on_different_grids": (lambda m, x: (m[0](x).relu() + m[1](x)).flatten(1),
                                    [_conv(3, 4, 3, stride=2), _conv(3, 4, 5)], (3, 7, 7)),
    "constant_activation": (lambda m, x: (m[1](m[0](x)) + m[0](x)).flatten(1),
                            [_conv(padding=1), nn.Hardtanh(0.5, 0.5 + 1e-7)], (3, 4, 4)),
    "symmetric_slope": (lambda m, x: m[2](m[1](m[0](x))).flatten(1),
                        [_conv(padding=1), nn.Hardtanh(-1, 1), _conv(4, 2, 1)], (3, 4, 4)),
}


@pytest.mark.parametrize("name", sorted(NO_FAIL))
def test_supported_graphs_never_fail(name: str) -> None:
    torch.manual_seed(0)
    fn, mods, shape = NO_FAIL[name]
    _check_sound(Net(fn, *mods).eval(), shape)


@pytest.mark.parametrize("slope", [(0.0, 0.0), (-1.0, 1.0), (1.0, 1.0), (-2.0, -2.0), (-0.5, 0.5)])
def test_degenerate_slopes_on_mlps(slope: tuple[float, float]) -> None:
    rng = np.random.default_rng(0)
    Ws = [rng.standard_normal((6, 4)), rng.standard_normal((5, 6)), rng.standard_normal((3, 5))]
    net = lipcore.MLP(Ws, [acts.from_slope(*slope)] * 2)
    rep = lipcore.analyze(net, ["naive", "eclipse-fast", "sh-combined", "optimized", "lower-sampled"])
    for v in ("naive", "eclipse-fast", "sh-combined", "optimized"):
        assert rep.results[v].status == "ok", rep.results[v].reason
    if slope[0] == slope[1]:  # a linear net: every variant is exact
        exact = np.linalg.norm(slope[0] ** 2 * Ws[2] @ Ws[1] @ Ws[0], 2)
        assert rep.results["eclipse-fast"].value == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_state_dict_batchnorm_without_eps_bounds_every_eps(tmp_path) -> None:
    """A model trained with eps = 1e-8 and tiny running variances: without eps the bound must not assume 1e-5."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5, eps=1e-8), nn.ReLU(), nn.Linear(5, 3)).eval()
    m[1].running_var.uniform_(1e-7, 1e-6)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "bn.safetensors"))
    lb = jacobian_lower(m, (6,))
    rep = lipcore.analyze(tmp_path / "bn.safetensors", UPPER, activation="relu")
    assert "does not store eps" in rep.summary["assumptions"][0]
    for v in UPPER:
        assert rep.results[v].value >= lb * (1 - 1e-6)
    exact_eps = lipcore.analyze(tmp_path / "bn.safetensors", ["naive"], activation="relu", bn_eps=1e-8)
    assert exact_eps.results["naive"].value == pytest.approx(lipcore.analyze(m, ["naive"]).results["naive"].value,
                                                             rel=1e-6)
    assert math.isfinite(exact_eps.results["naive"].value)
