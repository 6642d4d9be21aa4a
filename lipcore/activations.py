"""Elementwise activations: one table, and the slope interval [alpha, beta] of each as a function of its
parameters.

Why one table: the MLP loaders (modules, torch.fx functions), the graph tracer (ATen ops), the hub
architecture specs and the CLI all look activations up here, so an activation is added in one place and every
path reads *every* parameter it has. A module whose class carries a constant the table does not declare, a
parameter value with no finite Lipschitz constant (a jump, an exponential blow-up) or a bad value is refused
with a ValueError naming it, never bounded with a default.

Why numeric intervals: the bounds need alpha <= (phi(a)-phi(b))/(a-b) <= beta for all a != b. For a
differentiable phi that is the closed range of phi'. Closed forms exist for most; for SiLU, GELU, Mish we locate
the extrema of phi' on a dense float64 grid, polish them with a bounded scalar search and round *outward* by
`ROUND_OUT`, so a rounding error can only loosen a bound, never make it unsound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROUND_OUT = 1e-6
# A jump smaller than this fraction of the output's magnitude is below float32 resolution there: the computed
# function has no jump (softplus's default threshold 20 leaves 2e-9). Larger jumps have no finite constant.
_JUMP_RTOL = 2.0**-24


@dataclass(frozen=True)
class Activation:
    """A slope-restricted elementwise map. `fn` evaluates it (lower bounds need it); None for a bare slope."""

    name: str
    alpha: float
    beta: float
    fn: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, compare=False, repr=False)

    @property
    def m(self) -> float:
        return (self.alpha + self.beta) / 2

    @property
    def p(self) -> float:
        return self.alpha * self.beta

    @property
    def gain(self) -> float:
        """The activation's own Lipschitz constant max(|alpha|, |beta|) (the naive bound uses it)."""
        return max(abs(self.alpha), abs(self.beta))

    @property
    def linear(self) -> bool:
        """alpha == beta: phi(x) = alpha x + const, a linear node rather than a sector constraint."""
        return self.alpha == self.beta

    def torch_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The function itself, or for a bare slope interval a member of the class (piecewise linear)."""
        if self.fn is not None:
            return self.fn
        a, b = self.alpha, self.beta
        return lambda x: torch.where(x >= 0, b * x, a * x)


def _derivative_range(
    f: Callable[[torch.Tensor], torch.Tensor], lo: float = -30.0, hi: float = 30.0
) -> tuple[float, float]:
    """Numeric [min, max] of f' (float64 autograd on a grid, then golden-section polish), rounded outward."""
    from scipy.optimize import minimize_scalar

    x = torch.linspace(lo, hi, 600_001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(f(x).sum(), x)
    g = g.detach().numpy()
    xs = x.detach().numpy()

    def d(t: float) -> float:
        tt = torch.tensor([t], dtype=torch.float64, requires_grad=True)
        (gg,) = torch.autograd.grad(f(tt).sum(), tt)
        return float(gg[0])

    step = xs[1] - xs[0]
    out = []
    for sign, idx in ((1.0, int(np.argmin(g))), (-1.0, int(np.argmax(g)))):
        c = xs[idx]
        res = minimize_scalar(lambda t, s=sign: s * d(t), bounds=(c - 2 * step, c + 2 * step), method="bounded",
                              options={"xatol": 1e-12})
        best = min(sign * g[idx], float(res.fun)) if res.success else sign * g[idx]
        out.append(sign * best)
    gmin, gmax = out
    return math.floor((gmin - ROUND_OUT) * 1e6) / 1e6, math.ceil((gmax + ROUND_OUT) * 1e6) / 1e6


@cache
def _numeric(name: str, *params: Any) -> tuple[float, float]:
    return _derivative_range(KINDS[name].fn(*params))


# ---------------------------------------------------------------------------------------------------------
# slope intervals as functions of the parameters (ValueError: no finite Lipschitz constant)
# ---------------------------------------------------------------------------------------------------------
def _fixed(a: float, b: float) -> Callable[..., tuple[float, float]]:
    return lambda: (a, b)


def _leaky(negative_slope: float) -> tuple[float, float]:
    return min(negative_slope, 1.0), max(negative_slope, 1.0)


def _elu(alpha: float, scale: float = 1.0, input_scale: float = 1.0) -> tuple[float, float]:
    """scale*x for x > 0, scale*alpha*(exp(input_scale*x) - 1) below: slopes scale and (0, s a is]."""
    if input_scale < 0:
        raise ValueError(f"input_scale={input_scale:g} < 0 grows exponentially: no finite Lipschitz constant")
    neg = scale * alpha * input_scale
    return min(0.0, scale, neg), max(0.0, scale, neg)


def _celu(alpha: float) -> tuple[float, float]:
    if alpha <= 0:
        raise ValueError(f"alpha={alpha:g} <= 0 (exp(x/alpha) is unbounded or undefined): no finite Lipschitz constant")
    return 0.0, 1.0


def _hardtanh(min_val: float, max_val: float) -> tuple[float, float]:
    return (0.0, 1.0) if min_val < max_val else (0.0, 0.0)  # min >= max: a constant


def _softplus(beta: float, threshold: float) -> tuple[float, float]:
    """log(1+exp(beta x))/beta, switched to x above beta*x > threshold: a jump log(1+e^-t)/beta there."""
    if beta <= 0:
        raise ValueError(f"beta={beta:g} <= 0 is not supported")
    jump = math.log1p(math.exp(-threshold)) / beta if threshold > -700 else math.inf
    at = abs(threshold / beta)
    if jump > _JUMP_RTOL * max(at, 1e-30):
        raise ValueError(f"threshold={threshold:g} switches to x with a jump of {jump:.3g} at x={threshold / beta:g}: "
                         "a discontinuous function has no finite Lipschitz constant")
    return 0.0, 1.0


def _threshold(threshold: float, value: float) -> tuple[float, float]:
    if value != threshold:
        raise ValueError(f"Threshold({threshold:g}, {value:g}) jumps at x={threshold:g}: no finite Lipschitz constant")
    return 0.0, 1.0


def _hardshrink(lambd: float) -> tuple[float, float]:
    if lambd != 0:
        raise ValueError(f"hardshrink(lambd={lambd:g}) jumps at +-{lambd:g}: no finite Lipschitz constant")
    return 1.0, 1.0


def _softshrink(lambd: float) -> tuple[float, float]:
    if lambd < 0:
        raise ValueError(f"softshrink needs lambd >= 0, got {lambd:g}")
    return 0.0, 1.0


def _selu() -> tuple[float, float]:
    lam, al = 1.0507009873554805, 1.6732632423543772
    return 0.0, math.ceil(lam * al * 1e6) / 1e6


def _numeric_of(name: str) -> Callable[..., tuple[float, float]]:
    return lambda *p: _numeric(name, *p)


def _prelu(weight: torch.Tensor) -> tuple[float, float]:
    w = weight.detach().to(torch.float64)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("PReLU weight has NaN/Inf entries")
    return min(float(w.min()), 1.0), max(float(w.max()), 1.0)


# ---------------------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One parameter: its module attribute name, its default, and the ATen argument it is called there."""

    name: str
    default: Any
    aten: str | None = None
    kind: type = float

    @property
    def aten_name(self) -> str:
        return self.aten or self.name


@dataclass(frozen=True)
class ActivationKind:
    """One activation: every name it goes by, and [alpha, beta] and the function for given parameters."""

    name: str
    slope: Callable[..., tuple[float, float]]
    fn: Callable[..., Callable[[torch.Tensor], torch.Tensor]]
    params: tuple[Param, ...] = ()
    aliases: tuple[str, ...] = ()
    modules: tuple[type[nn.Module], ...] = ()
    functions: tuple[Callable[..., Any], ...] = ()  # torch / F functions (torch.fx traces)
    aten: tuple[str, ...] = ()  # ATen overload packet names (torch.export traces)
    ignore: tuple[str, ...] = ("inplace",)  # module constants / arguments with no effect on the values

    def make(self, *values: Any) -> Activation:
        """The Activation for these parameter values (in `params` order). ValueError when not Lipschitz."""
        vals = []
        for p, v in zip(self.params, values, strict=True):
            if p.kind is float:
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
                    raise ValueError(f"{self.name}: parameter {p.name}={v!r} must be a finite number")
                v = float(v)
            vals.append(v)
        a, b = self.slope(*vals)
        pv = [(p, v) for p, v in zip(self.params, vals, strict=True) if p.kind is not torch.Tensor]
        while pv and pv[-1][1] == pv[-1][0].default:  # trailing defaults are not shown
            pv.pop()
        shown = [f"{v:g}" if isinstance(v, float) else str(v) for _, v in pv]
        label = self.name + (f"({','.join(shown)})" if shown else "")
        if self.params and self.params[0].kind is torch.Tensor:
            label = f"{self.name}[{a:g},{b:g}]"
        return Activation(label, float(a), float(b), self.fn(*vals))


def _elu_fn(a: float, s: float = 1.0, i: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """ATen's elu: s*x above 0, s*a*(exp(i*x) - 1) below (nn.ELU is s = i = 1)."""
    if s == 1.0 and i == 1.0:
        return lambda x: F.elu(x, a)
    return lambda x: s * torch.where(x > 0, x, a * torch.expm1(i * x.clamp(max=0)))


def _gelu_fn(approximate: str = "none") -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: F.gelu(x, approximate=approximate)


def _gelu_slope(approximate: str) -> tuple[float, float]:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu approximate={approximate!r} is not 'none' or 'tanh'")
    return _numeric("gelu", approximate)


_F = float
KINDS: dict[str, ActivationKind] = {k.name: k for k in [
    ActivationKind("relu", _fixed(0.0, 1.0), lambda: torch.relu, modules=(nn.ReLU,),
                   functions=(F.relu, torch.relu, F.relu_, torch.relu_), aten=("relu", "relu_")),
    ActivationKind("relu6", _fixed(0.0, 1.0), lambda: F.relu6, modules=(nn.ReLU6,), functions=(F.relu6,),
                   aten=("relu6", "relu6_"), ignore=("inplace", "min_val", "max_val")),
    ActivationKind("leaky_relu", _leaky, lambda a: (lambda x: F.leaky_relu(x, a)),
                   (Param("negative_slope", 0.01),), ("leakyrelu", "leaky"), (nn.LeakyReLU,), (F.leaky_relu,),
                   ("leaky_relu", "leaky_relu_")),
    ActivationKind("prelu", _prelu, lambda w: (lambda x: F.prelu(x, w.to(x))),
                   (Param("weight", None, kind=torch.Tensor),),
                   modules=(nn.PReLU,), aten=("prelu", "_prelu_kernel"), ignore=("num_parameters",)),
    ActivationKind("elu", _elu, _elu_fn,
                   (Param("alpha", 1.0), Param("scale", 1.0), Param("input_scale", 1.0)), modules=(nn.ELU,),
                   functions=(F.elu,), aten=("elu", "elu_")),
    ActivationKind("celu", _celu, lambda a: (lambda x: F.celu(x, a)), (Param("alpha", 1.0),), modules=(nn.CELU,),
                   functions=(F.celu,), aten=("celu", "celu_")),
    ActivationKind("selu", _selu, lambda: F.selu, modules=(nn.SELU,), functions=(F.selu,), aten=("selu", "selu_")),
    ActivationKind("hardtanh", _hardtanh, lambda lo, hi: (lambda x: F.hardtanh(x, lo, hi)),
                   (Param("min_val", -1.0), Param("max_val", 1.0)), modules=(nn.Hardtanh,), functions=(F.hardtanh,),
                   aten=("hardtanh", "hardtanh_")),
    ActivationKind("tanh", _fixed(0.0, 1.0), lambda: torch.tanh, modules=(nn.Tanh,), functions=(torch.tanh, F.tanh),
                   aten=("tanh", "tanh_")),
    ActivationKind("sigmoid", _fixed(0.0, 0.25), lambda: torch.sigmoid, modules=(nn.Sigmoid,),
                   functions=(torch.sigmoid, F.sigmoid), aten=("sigmoid", "sigmoid_")),
    ActivationKind("hardsigmoid", _fixed(0.0, 1.0 / 6.0), lambda: F.hardsigmoid, aliases=("hard_sigmoid",),
                   modules=(nn.Hardsigmoid,), functions=(F.hardsigmoid,), aten=("hardsigmoid", "hardsigmoid_")),
    ActivationKind("softplus", _softplus, lambda b, t: (lambda x: F.softplus(x, b, t)),
                   (Param("beta", 1.0), Param("threshold", 20.0)), modules=(nn.Softplus,), functions=(F.softplus,),
                   aten=("softplus",)),
    ActivationKind("silu", _numeric_of("silu"), lambda: F.silu, aliases=("swish",), modules=(nn.SiLU,),
                   functions=(F.silu,), aten=("silu", "silu_")),
    ActivationKind("gelu", _gelu_slope, _gelu_fn, (Param("approximate", "none", kind=str),), modules=(nn.GELU,),
                   functions=(F.gelu,), aten=("gelu", "gelu_")),
    ActivationKind("quick_gelu", _numeric_of("quick_gelu"), lambda: (lambda x: x * torch.sigmoid(1.702 * x))),
    ActivationKind("mish", _numeric_of("mish"), lambda: F.mish, modules=(nn.Mish,), functions=(F.mish,),
                   aten=("mish", "mish_")),
    ActivationKind("hardswish", _fixed(-0.5, 1.5), lambda: F.hardswish, aliases=("hard_swish",),
                   modules=(nn.Hardswish,), functions=(F.hardswish,), aten=("hardswish", "hardswish_")),
    ActivationKind("softsign", _fixed(0.0, 1.0), lambda: F.softsign, modules=(nn.Softsign,), functions=(F.softsign,)),
    ActivationKind("logsigmoid", _fixed(0.0, 1.0), lambda: F.logsigmoid, modules=(nn.LogSigmoid,),
                   functions=(F.logsigmoid,), aten=("log_sigmoid",)),
    ActivationKind("tanhshrink", _fixed(0.0, 1.0), lambda: F.tanhshrink, modules=(nn.Tanhshrink,),
                   functions=(F.tanhshrink,)),
    ActivationKind("softshrink", _softshrink, lambda l: (lambda x: F.softshrink(x, l)), (Param("lambd", 0.5),),
                   modules=(nn.Softshrink,), functions=(F.softshrink,), aten=("softshrink",)),
    ActivationKind("hardshrink", _hardshrink, lambda l: (lambda x: F.hardshrink(x, l)), (Param("lambd", 0.5),),
                   modules=(nn.Hardshrink,), functions=(F.hardshrink,), aten=("hardshrink",)),
    ActivationKind("threshold", _threshold, lambda t, v: (lambda x: F.threshold(x, t, v)),
                   (Param("threshold", 0.0), Param("value", 0.0)), modules=(nn.Threshold,), functions=(F.threshold,),
                   aten=("threshold", "threshold_")),
    ActivationKind("identity", _fixed(1.0, 1.0), lambda: (lambda x: x), aliases=("linear", "none"),
                   modules=(nn.Identity,)),
]}
# a few names kept for the numeric grids of parameter-free members and older spellings
_EXTRA_ALIASES = {"gelu_tanh": ("gelu", ("tanh",)), "gelu_new": ("gelu", ("tanh",))}

_BY_NAME: dict[str, str] = {a: k.name for k in KINDS.values() for a in (k.name, *k.aliases)}
_BY_MODULE: dict[type, ActivationKind] = {m: k for k in KINDS.values() for m in k.modules}
_BY_FUNCTION: dict[Any, ActivationKind] = {f: k for k in KINDS.values() for f in k.functions}
_BY_ATEN: dict[str, ActivationKind] = {a: k for k in KINDS.values() for a in k.aten}

# names accepted with their default parameters (prelu needs its weight; hardshrink's default 0.5 is a jump)
SUPPORTED = sorted([k for k in KINDS if k not in ("prelu", "hardshrink")] + list(_EXTRA_ALIASES))


def _number(s: str) -> Any:
    s = s.strip()
    try:
        return float(s)
    except ValueError:
        return s.strip("'\"")


def get_activation(spec: str) -> Activation:
    """Parse 'relu', 'leaky_relu:0.1', 'leaky_relu:-0.5', 'elu(2)', 'softplus:1,20', 'gelu:tanh', ... into an
    Activation (parameters in the table's order; omitted ones take their defaults).

    Raises ValueError naming the supported list for an unknown name, or the parameter that is not admissible.
    """
    raw = spec.strip()
    name, sep, arg = raw.partition(":")
    if not sep and "(" in name and name.endswith(")"):
        name, arg = name[:-1].split("(", 1)
    key = name.strip().lower().replace("-", "_")
    if key in _EXTRA_ALIASES and not arg:
        base, vals = _EXTRA_ALIASES[key]
        return KINDS[base].make(*vals)
    if key not in _BY_NAME or key == "prelu":
        raise ValueError(f"unknown activation {spec!r}; supported: {', '.join(SUPPORTED)}")
    kind = KINDS[_BY_NAME[key]]
    given = [_number(a) for a in arg.split(",")] if arg.strip() else []
    if len(given) > len(kind.params):
        raise ValueError(f"{kind.name} takes {len(kind.params)} parameter(s) "
                         f"({', '.join(p.name for p in kind.params) or 'none'}), got {len(given)}")
    vals = given + [p.default for p in kind.params[len(given):]]
    return kind.make(*vals)


def from_slope(alpha: float, beta: float) -> Activation:
    """A bare slope interval (no function known): bounds hold for every activation with these slopes."""
    if not (math.isfinite(alpha) and math.isfinite(beta)) or alpha > beta:
        raise ValueError(f"slope interval must be finite with alpha <= beta, got [{alpha}, {beta}]")
    return Activation(f"slope[{alpha:g},{beta:g}]", float(alpha), float(beta), None)


def kind_of_module(m: nn.Module) -> ActivationKind | None:
    """The table entry of an activation module (exact class: a subclass may compute something else)."""
    return _BY_MODULE.get(type(m))


def from_module(m: nn.Module) -> Activation | None:
    """The Activation of a torch activation module, None if `m` is not one; ValueError when it is one but a
    parameter makes it unboundable or the class carries a constant the table does not read."""
    kind = kind_of_module(m)
    if kind is None:
        return None
    declared = {p.name for p in kind.params} | set(kind.ignore)
    unread = [c for c in getattr(type(m), "__constants__", []) if c not in declared]
    if unread:
        raise ValueError(f"{type(m).__name__} has parameter(s) {', '.join(unread)} that lipzoo does not read")
    consts = set(getattr(type(m), "__constants__", []))
    # a parameter the class does not have at all (nn.ELU has no `scale`) takes the value that class computes with
    return kind.make(*[getattr(m, p.name) if p.name in consts or p.kind is torch.Tensor
                       else getattr(m, p.name, p.default) for p in kind.params])


def from_function(fn: Any, args: tuple, kwargs: Mapping[str, Any]) -> Activation | None:
    """The Activation of a functional call `fn(x, *args, **kwargs)` (torch.fx), None if fn is not one.

    Arguments are bound to the function's own signature, so a positional `inplace` is never read as a slope."""
    import inspect

    kind = _BY_FUNCTION.get(fn)
    if kind is None:
        return None
    vals = {p.name: p.default for p in kind.params}
    try:
        bound = inspect.signature(fn).bind(None, *args, **kwargs).arguments
        bound.pop(next(iter(bound)))  # the tensor
    except (TypeError, ValueError):  # a builtin without a signature (F.gelu): bound in the table's order
        if len(args) > len(kind.params):
            raise ValueError(f"{kind.name}: cannot bind the arguments {args}") from None
        bound = {**dict(zip(vals, args, strict=False)), **kwargs}
    for k, v in bound.items():
        if k in vals:
            vals[k] = v
        elif k not in kind.ignore:
            raise ValueError(f"{kind.name}: argument {k}={v!r} is not read by lipzoo")
    return kind.make(*vals.values())


def aten_kind(op: str) -> ActivationKind | None:
    """The table entry for an ATen overload packet name (the graph tracer binds its arguments by name)."""
    return _BY_ATEN.get(op)


def module_class(name: str) -> type[nn.Module] | None:
    """The torch.nn class an activation name builds (architecture specs in checkpoint metadata)."""
    key = _BY_NAME.get(name.lower().replace("-", "_"))
    kind = KINDS.get(key) if key else None
    return kind.modules[0] if kind and kind.modules else None
