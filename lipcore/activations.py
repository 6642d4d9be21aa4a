"""Elementwise activations and their slope intervals [alpha, beta].

Why numeric: the bounds need alpha <= (phi(a)-phi(b))/(a-b) <= beta for all a != b. For a differentiable
phi that is the range of phi'. Closed forms exist for some (ReLU, sigmoid); for SiLU, GELU, Mish we locate
the extrema of phi' on a dense float64 grid, polish them with a bounded scalar search and round *outward*
by `ROUND_OUT`, so a rounding error can only loosen a bound, never make it unsound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROUND_OUT = 1e-6


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


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# name -> (function, closed-form interval or None for numeric derivation)
_FIXED: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], tuple[float, float] | None]] = {
    "relu": (torch.relu, (0.0, 1.0)),
    "relu6": (lambda x: F.relu6(x), (0.0, 1.0)),
    "hardtanh": (lambda x: F.hardtanh(x), (0.0, 1.0)),
    "tanh": (torch.tanh, (0.0, 1.0)),
    "sigmoid": (torch.sigmoid, (0.0, 0.25)),
    "hardsigmoid": (lambda x: F.hardsigmoid(x), (0.0, 1.0 / 6.0)),
    "softplus": (lambda x: F.softplus(x), (0.0, 1.0)),
    "silu": (F.silu, None),
    "gelu": (F.gelu, None),
    "gelu_tanh": (_gelu_tanh, None),
    "mish": (F.mish, None),
    "hardswish": (lambda x: F.hardswish(x), (-0.5, 1.5)),
    "identity": (lambda x: x, (1.0, 1.0)),
}

ALIASES = {
    "leakyrelu": "leaky_relu", "leaky": "leaky_relu", "swish": "silu", "linear": "identity", "none": "identity",
    "gelu_new": "gelu_tanh", "quick_gelu": "gelu_tanh", "hard_swish": "hardswish", "hard_sigmoid": "hardsigmoid",
}

SUPPORTED = sorted([*_FIXED, "leaky_relu", "elu", "selu", "celu"])


@cache
def _numeric_interval(name: str) -> tuple[float, float]:
    return _derivative_range(_FIXED[name][0])


def get_activation(spec: str) -> Activation:
    """Parse 'relu', 'leaky_relu:0.1', 'elu:1.0', 'softplus', 'gelu', ... into an Activation.

    Raises ValueError naming the supported list for anything else.
    """
    raw = spec.strip().lower().replace("-", "_")
    name, _, arg = raw.partition(":")
    if not arg and "(" in name and name.endswith(")"):
        name, arg = name[:-1].split("(", 1)
    name = ALIASES.get(name, name)
    if name == "leaky_relu":
        a = float(arg) if arg else 0.01
        return Activation(f"leaky_relu({a:g})", min(a, 1.0), max(a, 1.0), lambda x, a=a: F.leaky_relu(x, a))
    if name in ("elu", "celu"):
        a = float(arg) if arg else 1.0
        if a <= 0:
            raise ValueError(f"{name} needs alpha > 0, got {a}")
        fn = (lambda x, a=a: F.elu(x, a)) if name == "elu" else (lambda x, a=a: F.celu(x, a))
        hi = max(1.0, a) if name == "elu" else 1.0
        return Activation(f"{name}({a:g})", 0.0, hi, fn)
    if name == "selu":
        lam, al = 1.0507009873554805, 1.6732632423543772
        return Activation("selu", 0.0, math.ceil(lam * al * 1e6) / 1e6, F.selu)
    if name not in _FIXED:
        raise ValueError(f"unknown activation {spec!r}; supported: {', '.join(SUPPORTED)}")
    fn, interval = _FIXED[name]
    a, b = interval if interval is not None else _numeric_interval(name)
    return Activation(name, a, b, fn)


def from_slope(alpha: float, beta: float) -> Activation:
    """A bare slope interval (no function known): bounds hold for every activation with these slopes."""
    if not (math.isfinite(alpha) and math.isfinite(beta)) or alpha > beta:
        raise ValueError(f"slope interval must be finite with alpha <= beta, got [{alpha}, {beta}]")
    return Activation(f"slope[{alpha:g},{beta:g}]", float(alpha), float(beta), None)


def from_module(m: nn.Module) -> Activation | None:
    """The Activation of a torch activation module, or None if `m` is not one we know."""
    if isinstance(m, nn.LeakyReLU):
        return get_activation(f"leaky_relu:{m.negative_slope}")
    if isinstance(m, nn.ELU):
        return get_activation(f"elu:{m.alpha}")
    if isinstance(m, nn.CELU):
        return get_activation(f"celu:{m.alpha}")
    if isinstance(m, nn.GELU):
        return get_activation("gelu_tanh" if m.approximate == "tanh" else "gelu")
    if isinstance(m, nn.Hardtanh) and not isinstance(m, nn.ReLU6):
        lo, hi = m.min_val, m.max_val
        if lo >= hi:
            return None
        return Activation(f"hardtanh({lo:g},{hi:g})", 0.0, 1.0, lambda x, lo=lo, hi=hi: F.hardtanh(x, lo, hi))
    if isinstance(m, nn.Softplus):
        b, t = m.beta, m.threshold
        return Activation("softplus", 0.0, 1.0, lambda x, b=b, t=t: F.softplus(x, b, t))
    table: dict[type, str] = {
        nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu",
        nn.Mish: "mish", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.SELU: "selu",
        nn.Identity: "identity",
    }
    for cls, name in table.items():
        if type(m) is cls:
            return get_activation(name)
    return None
