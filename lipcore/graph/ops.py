"""The closed-world operator table of the graph tracer: every ATen op lipzoo accepts, declared once.

Why closed: a certified bound is only as good as the reading of the model it bounds. Each accepted ATen op has
a parser that receives the call's arguments *bound by name to the op's schema* (defaults filled in) and must
read every one of them: the tracer refuses the node, naming the argument, if a parser leaves one unread. A
parser either maps the call exactly to one engine kind (below), aliases it to its input when it provably adds a
constant only, or refuses it with the reason. Ops not in the table are refused by name.

Why kinds: the engine (`lipcore.graph.engine`) and the naive bound work on a handful of operator kinds. Each
`Kind` declares its certified naive norm, its replay (`forward`: what the node computes from its attributes,
used to check at trace time that the parsed node reproduces the traced values, and by the tests for the
dense-Jacobian oracles) and its scheduling traits; the engine's handler for kind K is `Engine._op_K`.

Coordinate maps (slicing, indexing, splitting, padding, nearest upsampling, flips, repeats, ...) are one kind,
``gather``: the map is read off the op itself, applied to a tensor holding each entry's index, so it is exact
by construction (and replay-checked); its norm is sqrt(max multiplicity) (duplication), 1 for a selection.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import activations as acts
from . import opnorms

NOT_LIPSCHITZ = "not_lipschitz"
UNKNOWN = "unknown"


# ---------------------------------------------------------------------------------------------------------
# what a parser sees and returns
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Call:
    """One traced ATen call: arguments by schema name, which of them depend on the model input, and the result.

    Reading an argument marks it read; the tracer refuses the call if any argument stays unread."""

    name: str
    op: str
    target: Any
    values: dict[str, Any]
    tainted: dict[str, list[str]]  # argument name -> graph names of the input-dependent tensors in it
    val: Any
    fx: dict[str, Any] = field(default_factory=dict)  # the same arguments as graph nodes / literals
    read: set[str] = field(default_factory=set)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self.values else default

    def ignore(self, *keys: str) -> None:
        """Arguments with no effect on the values computed (memory formats, in-place flags, cudnn switches)."""
        self.read.update(k for k in keys if k in self.values)

    def is_tainted(self, key: str) -> bool:
        return bool(self.tainted.get(key))

    @property
    def shape(self) -> tuple[int, ...]:
        return sample_shape(self.val)

    def in_shape(self, key: str) -> tuple[int, ...]:
        return sample_shape(self.values[key])


@dataclass
class Emit:
    """A graph node of `kind` reading the input-dependent argument(s) `args` (in order)."""

    kind: str
    args: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Alias:
    """The call adds a constant to (or copies) argument `arg`: its increments are the argument's."""

    arg: str


@dataclass
class Refuse:
    why: str
    category: str = UNKNOWN


@dataclass
class Items:
    """A multi-output op: what each `getitem` of it is (and the call they read, set by the tracer)."""

    items: list[Emit | Alias | Refuse]
    call: Call | None = None


Parsed = Emit | Alias | Refuse | Items


def sample_shape(v: Any) -> tuple[int, ...]:
    """The shape of one sample (the batch dimension dropped); () for a non-tensor."""
    return tuple(int(s) for s in v.shape[1:]) if isinstance(v, torch.Tensor) else ()


def _ints(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, int | float):
        return (int(v),) * n
    v = tuple(int(x) for x in v)
    return v * n if len(v) == 1 and n > 1 else v


def _dim(d: int, ndim: int) -> int:
    """A dim of the batched tensor (ndim counts the batch) normalised to >= 0."""
    return int(d) % ndim


# ---------------------------------------------------------------------------------------------------------
# kinds
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    """An operator kind the engine bounds. `naive(node, memo, device)` is a certified Lipschitz constant of the
    node (for one-input kinds: the factor on its input's constant); `forward(node, inputs)` what it computes
    (batched tensors, float64), up to an additive constant."""

    name: str
    naive: Callable[..., float] | None
    forward: Callable[..., torch.Tensor] | None
    hoistable: bool = False  # a single-input push-forward the scheduler may move up
    clean_source: bool = False  # its output is a true map (zero outside the interior): a conv reading it never restarts
    window: bool = False  # never restarts on clean inputs (the scheduler may move pushes across it)


def _conv_forward(n: Any, xs: list[torch.Tensor]) -> torch.Tensor:
    a = n.attrs
    w = a["weight"].to(xs[0])
    d = w.dim() - 2
    lo, hi = a["padding"], a["pad_hi"]
    pads = [p for i in reversed(range(d)) for p in (lo[i], hi[i])]
    conv = F.conv1d if d == 1 else F.conv2d
    return conv(F.pad(xs[0], pads), w, None, a["stride"], 0, a["dilation"], a["groups"])


def _conv_naive(n: Any, memo: dict[str, float], dev: torch.device) -> float:
    key = "conv:" + n.name
    if key not in memo:
        v = opnorms.conv_norm(n, device=dev)
        if math.isnan(v):  # 1x1 spatial input: a dense matrix of the centre taps (upper-bounded by all taps)
            w = n.attrs["weight"]
            v = opnorms.spectral_norm_matrix(w.reshape(w.shape[0], -1)) * math.sqrt(n.attrs.get("groups", 1))
        memo[key] = v
    return memo[key]


def _linear_naive(n: Any, memo: dict[str, float], dev: torch.device) -> float:
    key = "lin:" + n.name
    if key not in memo:
        memo[key] = opnorms.spectral_norm_matrix(n.attrs["weight"])
    return memo[key]


def _pool_forward(fn_name: str) -> Callable[..., torch.Tensor]:
    def fwd(n: Any, xs: list[torch.Tensor]) -> torch.Tensor:
        a = n.attrs
        d = len(a["kernel"])
        if fn_name == "max":
            f = F.max_pool1d if d == 1 else F.max_pool2d
            return f(xs[0], a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
        if d == 1:
            return F.avg_pool1d(xs[0], a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"])
        return F.avg_pool2d(xs[0], a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"],
                            a["divisor"])
    return fwd


def _gap_naive(n: Any, memo: dict[str, float], dev: torch.device) -> float:
    size = math.prod(n.in_shape[d] for d in n.attrs["dims"])
    return n.attrs["factor"] / math.sqrt(size)


def _gap_forward(n: Any, xs: list[torch.Tensor]) -> torch.Tensor:
    dims = [d + 1 for d in n.attrs["dims"]]
    return (xs[0].mean(dims) * n.attrs["factor"]).reshape(1, *n.shape)


def _reshape_forward(n: Any, xs: list[torch.Tensor]) -> torch.Tensor:
    perm = n.attrs.get("perm")
    if perm is None:
        return xs[0].reshape(1, *n.shape)
    if perm[0] == "t":
        return xs[0].transpose(perm[1], perm[2])
    return xs[0].permute(*perm)


def _gather_forward(n: Any, xs: list[torch.Tensor]) -> torch.Tensor:
    idx = n.attrs["index"]
    flat = torch.cat([xs[0].reshape(-1), xs[0].new_zeros(1)])
    return flat[torch.where(idx >= 0, idx, flat.numel() - 1)].reshape(1, *n.shape)


def _scale_forward(n: Any, xs: list[torch.Tensor]) -> torch.Tensor:
    return xs[0] * n.attrs["full"].to(xs[0])


def _norm_forward(n: Any, xs: list[torch.Tensor]) -> torch.Tensor:
    return n.attrs["call"](xs[0])


KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("input", None, None, clean_source=True),
    Kind("conv", _conv_naive, _conv_forward, hoistable=True, window=True),
    Kind("linear", _linear_naive, lambda n, xs: xs[0] @ n.attrs["weight"].to(xs[0]).T, window=True),
    Kind("scale", lambda n, m, d: float(torch.as_tensor(n.attrs["scale"]).abs().max()), _scale_forward, window=True),
    Kind("act", lambda n, m, d: n.attrs["act"].gain, lambda n, xs: n.attrs["act"].torch_fn()(xs[0]), clean_source=True,
         window=True),
    Kind("maxpool", lambda n, m, d: opnorms.maxpool_lipschitz(n), _pool_forward("max"), clean_source=True),
    Kind("avgpool", lambda n, m, d: opnorms.avgpool_norm_bound(n), _pool_forward("avg"), hoistable=True, window=True),
    Kind("gap", _gap_naive, _gap_forward),
    Kind("reshape", lambda n, m, d: 1.0, _reshape_forward),
    Kind("gather", lambda n, m, d: math.sqrt(n.attrs["multiplicity"]), _gather_forward),
    Kind("add", None, lambda n, xs: n.attrs["coef"][0] * xs[0] + n.attrs["coef"][1] * xs[1], window=True),
    Kind("cat", None, lambda n, xs: (torch.stack if n.attrs.get("stack") else torch.cat)(xs, n.attrs["dim"])),
    Kind("norm", lambda n, m, d: n.attrs["lip"], _norm_forward),
    Kind("unsupported", None, None),
]}


# ---------------------------------------------------------------------------------------------------------
# the parser table
# ---------------------------------------------------------------------------------------------------------
PARSERS: dict[str, Callable[[Call], Parsed]] = {}
# ops with no data flow (shape guards, asserts): skipped before parsing
NO_DATA = frozenset({"_assert_tensor_metadata", "sym_size", "_assert_async", "sym_constrain_range_for_size",
                     "_assert_scalar", "sym_numel", "sym_stride"})


def parser(*aten: str) -> Callable[[Callable[[Call], Parsed]], Callable[[Call], Parsed]]:
    """Register a parser for these ATen overload packet names (declared at the definition)."""
    def deco(fn: Callable[[Call], Parsed]) -> Callable[[Call], Parsed]:
        for a in aten:
            assert a not in PARSERS, a
            PARSERS[a] = fn
        return fn
    return deco


def op_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    s = getattr(target, "__name__", str(target))
    return s.split(".")[0]


def bind(target: Any, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by schema name, defaults filled (every argument the op receives is named)."""
    schema = getattr(target, "_schema", None)
    if schema is None:
        raise TypeError(f"{target} has no ATen schema")
    out: dict[str, Any] = {}
    pos = list(args)
    for a in schema.arguments:
        if a.kwarg_only:
            if a.name in kwargs:
                out[a.name] = kwargs[a.name]
            elif a.has_default_value():
                out[a.name] = a.default_value
            continue
        if pos:
            out[a.name] = pos.pop(0)
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
        else:
            raise TypeError(f"{target}: missing argument {a.name}")
    extra = set(kwargs) - set(out)
    if pos or extra:
        raise TypeError(f"{target}: arguments not in its schema: {sorted(extra) or pos}")
    return out


def _one_tainted(c: Call, key: str) -> Refuse | None:
    """The op must read the model input through argument `key` only."""
    others = [k for k, v in c.tainted.items() if v and k != key]
    if others:
        return Refuse(f"input-dependent argument '{others[0]}' (only '{key}' may depend on the input)", NOT_LIPSCHITZ
                      if others[0] in ("weight", "other", "mat2", "tensor1", "tensor2") else UNKNOWN)
    if not c.is_tainted(key):
        return Refuse(f"argument '{key}' does not depend on the input but another one does")
    return None


def _batch_ok(dims: list[int]) -> Refuse | None:
    return Refuse("operates across the batch dimension (not a per-sample function)") if 0 in dims else None


# -- identities ---------------------------------------------------------------------------------------------
@parser("clone", "alias", "detach", "detach_", "lift_fresh_copy", "contiguous")
def _identity(c: Call) -> Parsed:
    c.ignore("memory_format")
    key = "self"
    return _one_tainted(c, key) or Alias(key)


@parser("dropout", "dropout_", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "native_dropout")
def _dropout(c: Call) -> Parsed:
    key = "input"
    c["p"]
    if c["train"]:
        return Refuse("dropout in training mode (a random map)")
    if c.op == "native_dropout":
        return Items([Alias(key), Refuse("dropout mask")])
    return _one_tainted(c, key) or Alias(key)


_FLOATS = (torch.float32, torch.float64)


def _cast(c: Call, dtype: Any) -> Parsed:
    if dtype is not None and dtype not in _FLOATS:
        return Refuse(f"cast to {dtype} (rounding to {dtype} is not Lipschitz; lipzoo bounds float32/float64 models)")
    return _one_tainted(c, "self") or Alias("self")


@parser("_to_copy")
def _to_copy(c: Call) -> Parsed:
    c.ignore("device", "pin_memory", "non_blocking", "memory_format")
    if c["layout"] not in (None, torch.strided):
        return Refuse(f"layout {c['layout']}")
    return _cast(c, c["dtype"])


@parser("to")
def _to(c: Call) -> Parsed:
    c.ignore("device", "non_blocking", "copy", "memory_format", "layout", "pin_memory")
    if "other" in c.values:
        return _cast(c, c["other"].dtype)
    return _cast(c, c.get("dtype"))


@parser("type_as")
def _type_as(c: Call) -> Parsed:
    return _cast(c, c["other"].dtype)


# -- linear maps with constant weights ---------------------------------------------------------------------
@parser("conv1d", "conv2d", "convolution", "_convolution")
def _conv(c: Call) -> Parsed:
    bad = _one_tainted(c, "input")
    if bad:
        return bad
    w = c["weight"].detach().to(torch.float64)
    c["bias"]
    d = w.dim() - 2
    if c.op in ("convolution", "_convolution"):
        if c["transposed"]:
            return Refuse("transposed convolution is not supported yet")
        if any(int(x) for x in c["output_padding"]):
            return Refuse("output_padding on a forward convolution")
        c.ignore("benchmark", "deterministic", "cudnn_enabled", "allow_tf32")
    if d not in (1, 2):
        return Refuse(f"{d}-D convolution is not supported")
    stride, dil, groups = _ints(c["stride"], d), _ints(c["dilation"], d), int(c["groups"])
    pad = c["padding"]
    if isinstance(pad, str):
        if pad == "valid":
            lo = hi = (0,) * d
        elif pad == "same":
            total = [dl * (k - 1) for dl, k in zip(dil, w.shape[2:], strict=True)]
            lo = tuple(t // 2 for t in total)
            hi = tuple(t - t // 2 for t in total)
        else:
            return Refuse(f"padding mode {pad!r}")
    else:
        lo = hi = _ints(pad, d)
    if len(c.in_shape("input")) != d + 1:
        return Refuse(f"a {d}-D convolution on a tensor of shape {c.in_shape('input')}")
    return Emit("conv", ["input"], {"weight": w, "stride": stride, "padding": lo, "pad_hi": hi, "dilation": dil,
                                    "groups": groups})


@parser("linear")
def _linear(c: Call) -> Parsed:
    bad = _one_tainted(c, "input")
    if bad:
        return bad
    c["bias"]
    return Emit("linear", ["input"], {"weight": c["weight"].detach().to(torch.float64)})


@parser("matmul", "mm")
def _matmul(c: Call) -> Parsed:
    a, b = ("self", "other") if "other" in c.values else ("self", "mat2")
    if c.is_tainted(a) and c.is_tainted(b):
        return Refuse("dot-product attention is not globally Lipschitz (Kim et al. 2021)", NOT_LIPSCHITZ)
    if c.is_tainted(a) and isinstance(c[b], torch.Tensor) and c[b].dim() == 2:
        return Emit("linear", [a], {"weight": c[b].detach().to(torch.float64).T.contiguous()})
    c[a], c[b]
    return Refuse("a constant matrix multiplied from the left")


def _scale_full(const: torch.Tensor, in_shape: tuple[int, ...]) -> dict[str, Any] | Refuse:
    """Classify a constant multiplier broadcast against (1, *in_shape): scalar, per-channel, or general."""
    c = torch.as_tensor(const, dtype=torch.float64).detach()
    try:
        full_shape = torch.broadcast_shapes(tuple(c.shape), (1, *in_shape))
    except RuntimeError:
        return Refuse("product with a constant of incompatible shape")
    if tuple(full_shape) != (1, *in_shape):
        return Refuse("the constant factor broadcasts the input to a larger shape")
    full = c.reshape((1,) * (len(in_shape) + 1 - c.dim()) + tuple(c.shape)) if c.dim() <= len(in_shape) + 1 else c
    attrs: dict[str, Any] = {"full": full}
    if c.numel() == 1:
        attrs.update(scale=c.reshape(()), channel_dim=None)
        return attrs
    nz = [i for i, s in enumerate(full.shape[1:]) if s != 1]
    if len(nz) == 1:
        attrs.update(scale=full.reshape(-1), channel_dim=nz[0])
    else:
        attrs.update(scale=full[0], channel_dim="full")
    return attrs


def _scale(arg: str, const: Any, in_shape: tuple[int, ...]) -> Parsed:
    attrs = _scale_full(const, in_shape)
    if isinstance(attrs, Refuse):
        return attrs
    if not bool(torch.isfinite(attrs["full"]).all()):
        return Refuse("non-finite constant factor")
    return Emit("scale", [arg], attrs)


@parser("mul", "mul_")
def _mul(c: Call) -> Parsed:
    if c.is_tainted("self") and c.is_tainted("other"):
        return Refuse("multiplicative gating x*g(x) (e.g. squeeze-excite) is not globally Lipschitz", NOT_LIPSCHITZ)
    x, k = ("self", "other") if c.is_tainted("self") else ("other", "self")
    if c.shape != c.in_shape(x):
        c[k]
        return Refuse("the constant factor broadcasts the input to a larger shape")
    return _scale(x, c[k], c.in_shape(x))


@parser("div", "div_")
def _div(c: Call) -> Parsed:
    if c.is_tainted("other"):
        return Refuse("division by an input-dependent tensor is not globally Lipschitz", NOT_LIPSCHITZ)
    if c.get("rounding_mode") is not None:
        return Refuse(f"division with rounding_mode={c['rounding_mode']!r} is not Lipschitz")
    if c.shape != c.in_shape("self"):
        c["other"]
        return Refuse("the constant divisor broadcasts the input to a larger shape")
    return _scale("self", 1.0 / torch.as_tensor(c["other"], dtype=torch.float64), c.in_shape("self"))


@parser("neg", "neg_")
def _neg(c: Call) -> Parsed:
    return _one_tainted(c, "self") or _scale("self", -1.0, c.in_shape("self"))


@parser("add", "add_", "sub", "sub_", "rsub")
def _add(c: Call) -> Parsed:
    """self + alpha*other, self - alpha*other, other - alpha*self (rsub): every coefficient kept."""
    alpha = float(c["alpha"])
    sign = -1.0 if c.op.startswith("sub") else 1.0
    coef = {"self": -alpha, "other": 1.0} if c.op == "rsub" else {"self": 1.0, "other": sign * alpha}
    ts, to = c.is_tainted("self"), c.is_tainted("other")
    c["self"], c["other"]
    if ts and to:
        a, b = c.tainted["self"][0], c.tainted["other"][0]
        if a == b:
            return _scale("self", coef["self"] + coef["other"], c.in_shape("self"))
        if c.in_shape("self") != c.shape or c.in_shape("other") != c.shape:
            return Refuse("broadcasting addition of input-dependent tensors")
        return Emit("add", ["self", "other"], {"coef": (coef["self"], coef["other"])})
    x = "self" if ts else "other"
    if c.in_shape(x) != c.shape:
        return Refuse("adding a constant broadcasts the input to a larger shape")
    if coef[x] == 1.0:
        return Alias(x)  # x + constant: an affine shift, no effect on increments
    return _scale(x, coef[x], c.in_shape(x))


@parser("addcmul", "addcmul_")
def _addcmul(c: Call) -> Parsed:
    """self + value * tensor1 * tensor2 (timm's Affine: beta + alpha * x)."""
    value = float(c["value"])
    t = {k: c.is_tainted(k) for k in ("self", "tensor1", "tensor2")}
    c["self"], c["tensor1"], c["tensor2"]
    if t["tensor1"] and t["tensor2"]:
        return Refuse("multiplicative gating x*g(x) is not globally Lipschitz", NOT_LIPSCHITZ)
    if not t["tensor1"] and not t["tensor2"]:
        return Alias("self") if c.in_shape("self") == c.shape else Refuse("broadcasting addcmul")
    if t["self"]:
        return Refuse("addcmul adding two input-dependent terms")
    x, k = ("tensor1", "tensor2") if t["tensor1"] else ("tensor2", "tensor1")
    if c.in_shape(x) != c.shape:
        return Refuse("the constant factor broadcasts the input to a larger shape")
    return _scale(x, torch.as_tensor(c[k], dtype=torch.float64) * value, c.in_shape(x))


@parser("batch_norm", "native_batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit")
def _batch_norm(c: Call) -> Parsed:
    bad = _one_tainted(c, "input")
    if bad:
        return bad
    training = c["training"] if "training" in c.values else False
    c.ignore("momentum", "cudnn_enabled")
    w, mean, var, eps = c["weight"], c["running_mean"], c["running_var"], float(c["eps"])
    c["bias"]
    if training or mean is None or var is None:
        item: Parsed = Refuse("batch norm with batch statistics (training mode) has no fixed Lipschitz constant")
    else:
        ch = c.in_shape("input")[0]
        s = torch.ones(ch, dtype=torch.float64) if w is None else w.detach().to(torch.float64)
        s = s / torch.sqrt(var.detach().to(torch.float64) + eps)
        item = _scale("input", s.reshape(-1, *([1] * (len(c.in_shape("input")) - 1))), c.in_shape("input"))
    if c.op == "batch_norm":
        return item
    return Items([item, Refuse("batch norm statistics output"), Refuse("batch norm statistics output")])


# -- activations (lipcore.activations is the table) ----------------------------------------------------------
def _activation(c: Call) -> Parsed:
    kind = acts.aten_kind(c.op)
    assert kind is not None
    key = "self" if "self" in c.values else "input"
    vals = []
    for p in kind.params:
        v = c[p.aten_name]
        if p.kind is torch.Tensor:
            if c.is_tainted(p.aten_name):
                return Refuse(f"input-dependent {p.name}", NOT_LIPSCHITZ)
            v = v.detach()
        vals.append(v)
    bad = _one_tainted(c, key)
    if bad:
        return bad
    try:
        act = kind.make(*vals)
    except ValueError as e:
        return Refuse(f"{kind.name}: {e}")
    return Emit("act", [key], {"act": act})


for _a in sorted({a for k in acts.KINDS.values() for a in k.aten}):
    PARSERS[_a] = _activation


# -- pooling and reductions ----------------------------------------------------------------------------------
def _window(c: Call) -> dict[str, Any]:
    """The window arguments max and average pooling share (stride defaults to the kernel)."""
    d = len(c.in_shape("self")) - 1
    k = _ints(c["kernel_size"], d)
    return {"kernel": k, "stride": _ints(c["stride"] or k, d), "padding": _ints(c["padding"], d),
            "ceil_mode": bool(c["ceil_mode"])}


@parser("max_pool1d", "max_pool2d", "max_pool2d_with_indices", "max_pool1d_with_indices")
def _max_pool(c: Call) -> Parsed:
    bad = _one_tainted(c, "self")
    if bad:
        return bad
    attrs = {**_window(c), "dilation": _ints(c["dilation"], len(c.in_shape("self")) - 1)}
    e = Emit("maxpool", ["self"], attrs)
    return Items([e, Refuse("max pooling indices")]) if c.op.endswith("with_indices") else e


@parser("avg_pool1d", "avg_pool2d")
def _avg_pool(c: Call) -> Parsed:
    bad = _one_tainted(c, "self")
    if bad:
        return bad
    attrs = {**_window(c), "count_include_pad": bool(c["count_include_pad"]), "divisor": c.get("divisor_override")}
    return Emit("avgpool", ["self"], attrs)


@parser("adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d")
def _adaptive_avg(c: Call) -> Parsed:
    bad = _one_tainted(c, "self")
    if bad:
        return bad
    ins = c.in_shape("self")
    d = len(ins) - 1
    out = _ints(c["output_size"], d)
    if all(o == 1 for o in out):
        return Emit("gap", ["self"], {"dims": list(range(1, d + 1)), "factor": 1.0})
    if all(i % o == 0 for i, o in zip(ins[1:], out, strict=True)):
        k = tuple(i // o for i, o in zip(ins[1:], out, strict=True))
        return Emit("avgpool", ["self"], {"kernel": k, "stride": k, "padding": (0,) * d, "ceil_mode": False,
                                          "count_include_pad": True, "divisor": None})
    return Refuse("adaptive pooling with non-dividing output size")


@parser("mean", "sum")
def _mean(c: Call) -> Parsed:
    """mean/sum over `dim` (keepdim either way): a linear map of norm factor/sqrt(number averaged)."""
    bad = _one_tainted(c, "self")
    if bad:
        return bad
    nd = len(c.in_shape("self")) + 1
    dims = c.get("dim")
    c.get("keepdim")
    dtype = c.get("dtype")
    if dtype is not None and dtype not in _FLOATS:
        return Refuse(f"reduction to {dtype}")
    if not dims:
        return Refuse("reduction over every dimension including the batch")
    dims = sorted({_dim(x, nd) for x in ([dims] if isinstance(dims, int) else dims)})
    bad = _batch_ok(dims)
    if bad:
        return bad
    n = math.prod(c.in_shape("self")[d - 1] for d in dims)
    return Emit("gap", ["self"], {"dims": [d - 1 for d in dims], "factor": 1.0 if c.op == "mean" else float(n)})


# -- shape ops -------------------------------------------------------------------------------------------------
@parser("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "squeeze_", "unsqueeze", "unsqueeze_",
        "view_as", "expand_as_view")
def _reshape(c: Call) -> Parsed:
    """Any reshape of one sample (the batch dim stays first, of size 1): an isometry."""
    key = "self"
    bad = _one_tainted(c, key)
    if bad:
        return bad
    for k in c.values:
        c[k]
    if not isinstance(c.val, torch.Tensor) or c.val.dim() == 0 or c.val.shape[0] != 1:
        return Refuse("reshape that moves the batch dimension")
    if c.op.startswith("squeeze") and isinstance(c.values.get("dim"), int | list | tuple):
        dd = c.values["dim"]
        if 0 in [_dim(x, len(c.in_shape(key)) + 1) for x in ([dd] if isinstance(dd, int) else dd)]:
            return Refuse("squeezes the batch dimension")
    return Emit("reshape", [key], {"kind": c.op})


@parser("permute", "transpose", "swapaxes", "swapdims", "movedim", "t", "numpy_T")
def _permute(c: Call) -> Parsed:
    key = "self"
    bad = _one_tainted(c, key)
    if bad:
        return bad
    nd = len(c.in_shape(key)) + 1
    if c.op == "permute":
        perm = [_dim(p, nd) for p in c["dims"]]
    elif c.op in ("transpose", "swapaxes", "swapdims"):
        k0, k1 = ("dim0", "dim1") if "dim0" in c.values else ("axis0", "axis1")
        d0, d1 = _dim(c[k0], nd), _dim(c[k1], nd)
        perm = list(range(nd))
        perm[d0], perm[d1] = perm[d1], perm[d0]
    else:
        return _gather(c)
    if perm[0] != 0:
        return Refuse("permutes the batch dimension")
    return Emit("reshape", [key], {"kind": c.op, "perm": tuple(perm)})


_GATHER = ("slice", "select", "narrow", "index_select", "index", "split", "split_with_sizes", "chunk", "unbind",
           "tensor_split", "pad", "constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "replication_pad1d",
           "replication_pad2d", "upsample_nearest1d", "upsample_nearest2d", "_upsample_nearest_exact1d",
           "_upsample_nearest_exact2d", "expand", "repeat", "tile", "flip", "roll", "pixel_shuffle",
           "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle", "diagonal", "unfold", "narrow_copy",
           "slice_copy", "select_copy", "alias_copy", "expand_copy", "unbind_copy", "split_copy", "rot90")


def _index_map(c: Call, key: str, perm_seed: int) -> Any:
    """Apply the op to a tensor holding each entry's (1-based) index: a coordinate map moves the indices."""
    x = c.values[key]
    n = x.numel()
    codes = torch.arange(1, n + 1, dtype=torch.float64)
    if perm_seed:
        codes = codes[torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed))]
    vals = dict(c.values)
    vals[key] = codes.reshape(x.shape)
    if c.op in ("pad", "constant_pad_nd") and vals.get("value") is not None:
        vals["value"] = 0.0  # any constant pad has the increments of a zero pad
    out = c.target(**vals)
    return out, codes


def _decode(out: torch.Tensor, codes: torch.Tensor) -> torch.Tensor | None:
    """The flat source index of each output entry (-1: a constant zero), or None if `out` mixes entries."""
    flat = out.reshape(-1)
    r = flat.round()
    if not bool((r == flat).all()) or bool((r < 0).any()) or bool((r > codes.numel()).any()):
        return None
    inv = torch.empty(codes.numel() + 1, dtype=torch.long)
    inv[0] = -1
    inv[codes.long()] = torch.arange(codes.numel())
    return inv[r.long()]


def _gather_emit(idx: torch.Tensor, key: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                 extra: dict[str, Any]) -> Parsed:
    n = math.prod(in_shape)
    valid = idx[idx >= 0]
    mult = int(torch.bincount(valid, minlength=n).max()) if valid.numel() else 0
    if valid.numel() == 0:
        return Refuse("the output does not depend on the input (a constant)")
    if idx.numel() == n and bool((idx == torch.arange(n)).all()) and out_shape == in_shape:
        return Alias(key)
    attrs = {"index": idx, "multiplicity": mult, **extra}
    # a pure selection/duplication of channels (dim 0 of CHW-like tensors): the engine pushes it exactly
    if len(in_shape) >= 1 and len(out_shape) == len(in_shape) and out_shape[1:] == in_shape[1:]:
        sp = math.prod(in_shape[1:])
        grid = idx.reshape(out_shape[0], sp)
        sel = grid[:, 0] // sp if sp else grid[:, 0]
        if bool((grid[:, 0] >= 0).all()) and bool((grid == sel[:, None] * sp + torch.arange(sp)).all()):
            attrs["channel_select"] = sel
    return Emit("gather", [key], attrs)


def _gather(c: Call) -> Parsed:
    key = "self" if "self" in c.values else "input"
    if c.op in ("index",):
        if any(c.is_tainted(k) for k in c.values if k != key):
            return Refuse("indexing with input-dependent indices", NOT_LIPSCHITZ)
    bad = _one_tainted(c, key)
    if bad:
        return bad
    for k in c.values:
        c[k]
    if c.op in ("pad", "constant_pad_nd") and c.values.get("mode", "constant") not in (
            "constant", "reflect", "replicate", "circular"):
        return Refuse(f"padding mode {c.values.get('mode')!r}")
    x = c.values[key]
    nd = x.dim()
    dims = [v for k, v in c.values.items() if k in ("dim", "dims") and v is not None]
    flat_dims = [_dim(d, nd) for v in dims for d in ([v] if isinstance(v, int) else v)] if nd else []
    bad = _batch_ok(flat_dims) if c.op not in ("unfold",) else None
    if bad:
        return bad
    try:
        out1, codes1 = _index_map(c, key, 0)
        out2, codes2 = _index_map(c, key, 1 + abs(hash(c.name)) % 1000)
    except Exception as e:  # noqa: BLE001 - an op that cannot run on float64 codes is not read as a map
        return Refuse(f"cannot read the coordinate map ({type(e).__name__})")
    extra: dict[str, Any] = {}
    if c.op in ("pad", "constant_pad_nd") and c.values.get("mode", "constant") == "constant":
        extra["pad"] = [int(p) for p in c.values["pad"]]
    outs1 = list(out1) if isinstance(out1, list | tuple) else [out1]
    outs2 = list(out2) if isinstance(out2, list | tuple) else [out2]
    items: list[Parsed] = []
    for o1, o2 in zip(outs1, outs2, strict=True):
        i1, i2 = _decode(o1, codes1), _decode(o2, codes2)
        if i1 is None or i2 is None or not bool((i1 == i2).all()):
            items.append(Refuse("not a coordinate map (the op mixes entries)"))
            continue
        if o1.dim() == 0 or o1.shape[0] != 1:
            items.append(Refuse("moves the batch dimension"))
            continue
        items.append(_gather_emit(i1, key, tuple(x.shape[1:]), tuple(o1.shape[1:]), extra))
    return Items(items) if isinstance(out1, list | tuple) else items[0]


for _g in _GATHER:
    PARSERS[_g] = _gather


@parser("cat", "concat", "concatenate", "stack")
def _cat(c: Call) -> Parsed:
    """cat (or stack: cat along a new dim) of input-dependent and constant parts: norm^2 = sum of the parts'."""
    ts = c["tensors"]
    stack = c.op == "stack"
    nd = ts[0].dim() + stack
    dim = _dim(c["dim"], nd)
    if dim == 0:
        return Refuse("concatenates along the batch dimension")
    return Emit("cat", ["tensors"], {"dim": dim, "stack": stack})


# -- normalisation layers: globally Lipschitz only through eps (a vacuous bound) -------------------------------
@parser("layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "rms_norm")
def _norm(c: Call) -> Parsed:
    key = "input"
    bad = _one_tainted(c, key)
    if bad:
        return bad
    c.ignore("cudnn_enable", "cudnn_enabled")
    w = c.get("weight")
    c.get("bias")
    if c.op == "rms_norm":
        eps = c["eps"]
        eps = torch.finfo(c.values[key].dtype).eps if eps is None else float(eps)
    else:
        eps = float(c["eps"])
    for k in ("normalized_shape", "num_groups", "N", "C", "HxW", "group"):
        if k in c.values:
            c[k]
    if eps <= 0:
        return Refuse(f"{c.op} with eps={eps:g} has no finite Lipschitz constant", NOT_LIPSCHITZ)
    g = 1.0 if w is None else float(torch.as_tensor(w).abs().max())
    args = {k: v for k, v in c.values.items() if k != key}
    target = c.target

    def call(x: torch.Tensor, target: Any = target, args: dict[str, Any] = args) -> torch.Tensor:
        out = target(x.to(torch.float32), **args)
        return (out[0] if isinstance(out, tuple) else out).to(x.dtype)

    e = Emit("norm", [key], {"lip": g / math.sqrt(eps), "eps": eps, "gamma_max": g, "call": call})
    if c.op.startswith("native"):
        return Items([e, Refuse("normalisation statistics output"), Refuse("normalisation statistics output")])
    return e


@parser("scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_attention_math",
        "_scaled_dot_product_flash_attention_for_cpu", "bmm", "baddbmm", "einsum")
def _attention(c: Call) -> Parsed:
    n = sum(1 for v in c.tainted.values() if v)
    multi = n >= 2 or any(len(v) >= 2 for v in c.tainted.values())
    for k in c.values:
        c[k]
    if multi:
        return Refuse("dot-product attention is not globally Lipschitz (Kim et al. 2021)", NOT_LIPSCHITZ)
    return Refuse("no Lipschitz rule for this operator")


@parser("softmax", "_softmax", "log_softmax", "_log_softmax")
def _softmax(c: Call) -> Parsed:
    for k in c.values:
        c[k]
    return Refuse("softmax over input-dependent scores (attention) is not supported")


def replay(node: Any, inputs: list[torch.Tensor]) -> torch.Tensor:
    """What `node` computes from its input values (float64), by its kind's declaration."""
    fwd = KINDS[node.op].forward
    assert fwd is not None, node.op
    return fwd(node, [x.to(torch.float64) for x in inputs])


def dense_jacobian(node: Any) -> np.ndarray:
    """The node's linear map as a dense matrix (one-input linear kinds): the oracle the tests compare norms to."""
    n_in = math.prod(node.in_shape)
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *node.in_shape)
    y = torch.cat([replay(node, [eye[i:i + 1]]) for i in range(n_in)])
    return y.reshape(n_in, -1).T.numpy()
