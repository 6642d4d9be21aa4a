"""Measured lower bounds on the Lipschitz constant: Jacobian norms at sampled points and gradient ascent.

Why: a lower bound is the only check an upper bound cannot fake. Every number returned here is a value
that was actually *measured* on the function -- ‖J(x)v‖ with a unit v, ‖J(x)ᵀu‖ with a unit u, the spectral
norm of a full Jacobian, or a pair ratio ‖f(x)−f(y)‖/‖x−y‖ -- never an extrapolation, so it can never exceed
the true constant (up to float64 rounding; float32 work is re-measured in float64 at the end).

Works on any target with `.torch_callable(device, dtype) -> f(batch) -> batch`, `.input_shape` (no batch
dim) and `.name`: plain MLPs and traced graph models alike. f must treat batch rows independently (eval
mode), which lets one batched jvp/vjp give every sample's own Jacobian-vector product.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from .errors import BudgetExceeded
from .variants import Context

Fn = Callable[[torch.Tensor], torch.Tensor]

# torch.func's forward-mode AD keeps its dual levels in one process-wide stack: two threads that enter and leave
# levels interleaved release each other's level ("Trying to access a forward AD level with an invalid index") or
# pair a tangent with the wrong level ("Mismatch in shape: grad_output"). Every measurement here therefore runs
# under one process-wide lock; the bound variants (no forward AD) still run in parallel beside it.
AD_LOCK = threading.RLock()


def _serialized(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with AD_LOCK:
            return fn(*args, **kwargs)

    return wrapper


BIG_INPUT = 10_000  # above this many input entries: float32 by default and a much smaller iteration budget
FULL_JACOBIAN_MAX = 64  # full Jacobian (then SVD) when the input or output has at most this many entries
FULL_JACOBIAN_CHUNK = 512  # Jacobian rows per stacked pass while sampling (the deadline is checked between)


# ---------------------------------------------------------------------------------------------------------
# helpers


def _dtype(ctx: Context, variant: str, n_in: int) -> torch.dtype:
    d = ctx.opt(variant, "dtype", None)
    if d is None:
        return torch.float64 if n_in <= BIG_INPUT else torch.float32
    if isinstance(d, torch.dtype):
        return d
    return {"float32": torch.float32, "float64": torch.float64, "fp32": torch.float32, "fp64": torch.float64,
            "double": torch.float64, "float": torch.float32}[str(d).replace("torch.", "")]


def _flat(y: torch.Tensor) -> torch.Tensor:
    return y.reshape(y.shape[0], -1)


def _bnorm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample ℓ2 norm of a batch of any shape."""
    return _flat(t).norm(dim=1)


def _unit(t: torch.Tensor) -> torch.Tensor:
    n = _bnorm(t).clamp_min(torch.finfo(t.dtype).tiny)
    return t / n.reshape(-1, *([1] * (t.dim() - 1)))


def _gen(ctx: Context, salt: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed((int(ctx.seed) * 1_000_003 + salt) % (2**63 - 1))
    return g


def _randn(shape: tuple[int, ...], g: torch.Generator, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # drawn on the CPU so a seed gives the same points on every device
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _radii(b: int, g: torch.Generator, scale: float, spread: float) -> torch.Tensor:
    """Per-sample radii log-uniform in [scale/spread, scale*spread] (spread 1: all equal to scale)."""
    if spread <= 1:
        return torch.full((b,), float(scale), dtype=torch.float64)
    u = torch.rand((b,), generator=g, dtype=torch.float64)
    return scale * torch.exp((2 * u - 1) * math.log(spread))


def _points(n: int, shape: tuple[int, ...], g: torch.Generator, scale: float, spread: float,
            dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Gaussian directions, each scaled so its per-entry RMS is a radius drawn around `scale`."""
    x = torch.randn((n, *shape), generator=g, dtype=torch.float64)
    r = _radii(n, g, scale, spread)
    x = x * r.reshape(-1, *([1] * len(shape)))
    return x.to(device=device, dtype=dtype)


class _Lin:
    """J(X) for a batch X: jv(V) = per-sample J v, jtv(U) = per-sample Jᵀ u (one vjp graph, reused).

    Forward-mode jvp is preferred; if the model has an op without forward-AD support, Jv falls back to a
    central finite difference, used only to *steer* the power iteration: values are then reported from
    ‖Jᵀu‖ (exact vjp), never from the finite difference.
    """

    def __init__(self, f: Fn, x: torch.Tensor, exact_jv: bool = True) -> None:
        self.f, self.x = f, x
        self.out, self._vjp = torch.func.vjp(f, x)
        self.exact_jv = exact_jv

    def jv(self, v: torch.Tensor) -> torch.Tensor:
        if self.exact_jv:
            try:
                return torch.func.jvp(self.f, (self.x,), (v,))[1]
            except (RuntimeError, NotImplementedError):
                self.exact_jv = False
        h = 1e-3 * (1 + _bnorm(self.x)).reshape(-1, *([1] * (v.dim() - 1)))
        with torch.no_grad():
            return (self.f(self.x + h * v) - self.f(self.x - h * v)) / (2 * h)

    def jtv(self, u: torch.Tensor) -> torch.Tensor:
        return self._vjp(u)[0]


@torch.no_grad()
def _power(f: Fn, x: torch.Tensor, v0: torch.Tensor, iters: int,
           ctx: Context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Power iteration on J(x)ᵀJ(x) per sample. Returns (best measured ‖J v‖ or ‖Jᵀu‖ per sample, the unit
    input direction v and unit output direction u that achieved it, and whether jv was exact)."""
    lin = _Lin(f, x)
    v = _unit(v0)
    best = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    best_v = v.clone()
    best_u = torch.zeros_like(lin.out)
    for it in range(max(1, iters)):
        if it and ctx.expired():  # every iteration measured a value: stop at the deadline with the best so far
            break
        u = lin.jv(v)
        un = _bnorm(u)
        if lin.exact_jv:  # ‖J v‖ with unit v: a measured directional derivative
            better = un.double() > best
            best = torch.where(better, un.double(), best)
            best_v[better] = v[better]
            best_u[better] = _unit(u)[better]
        u = _unit(u)
        w = lin.jtv(u)
        wn = _bnorm(w)  # ‖Jᵀu‖ with unit u: also a measured value (≥ ‖Jv‖ by the Rayleigh argument)
        better = wn.double() > best
        best = torch.where(better, wn.double(), best)
        best_u[better] = u[better]
        v = _unit(w)
        best_v[better] = v[better]
    return best, best_v, best_u, lin.exact_jv


@torch.no_grad()
def _full_jacobian_norms(f: Fn, x: torch.Tensor, chunk: int = 4096,
                         ctx: Context | None = None) -> torch.Tensor:
    """Spectral norms of the full per-sample Jacobians (small input or output dims): stacked jvps or vjps.

    With `ctx`, its deadline is checked between chunks and the norms measured so far are returned when it
    passes (the first `len(result)` samples of x): one chunk, not a whole batch, is the most it overruns."""
    b = x.shape[0]
    n_in = x[0].numel()
    out0 = f(x[:1])
    n_out = out0[0].numel()
    norms = []
    step = max(1, chunk // max(1, min(n_in, n_out)))
    for i in range(0, b, step):
        if ctx is not None and norms and ctx.expired():
            break
        xb = x[i:i + step]
        m = xb.shape[0]
        if n_in <= n_out:
            eye = torch.eye(n_in, dtype=x.dtype, device=x.device)
            xr = xb.repeat_interleave(n_in, dim=0)
            tang = eye.repeat(m, 1).reshape(xr.shape)
            _, cols = torch.func.jvp(f, (xr,), (tang,))
            jac = _flat(cols).reshape(m, n_in, n_out).transpose(1, 2)
        else:
            xr = xb.repeat_interleave(n_out, dim=0)
            out, fn = torch.func.vjp(f, xr)
            eye = torch.eye(n_out, dtype=x.dtype, device=x.device)
            cot = eye.repeat(m, 1).reshape(out.shape)
            rows = fn(cot)[0]
            jac = _flat(rows).reshape(m, n_out, n_in)
        norms.append(torch.linalg.matrix_norm(jac.double(), ord=2))
    return torch.cat(norms)


def _pair_ratio(f: Fn, x: torch.Tensor, y: torch.Tensor, safe: bool = False) -> torch.Tensor:
    """‖f(x)−f(y)‖/‖x−y‖. With safe=True a rounding allowance is subtracted (the difference of two nearby
    outputs cancels digits: without it a float64 ratio can overshoot the true constant by ~1e-12)."""
    with torch.no_grad():
        fx, fy = f(x), f(y)
        num = _bnorm(fx - fy).double()
        den = _bnorm(x - y).double().clamp_min(1e-300)
        if safe:
            eps = torch.finfo(fx.dtype).eps
            num = num * (1 - 1e6 * eps) - 1e3 * eps * (_bnorm(fx).double() + _bnorm(fy).double())
        return (num / den).clamp_min(0.0)


@torch.no_grad()
def _remeasure(target: Any, ctx: Context, dtype: torch.dtype, kind: str, a: torch.Tensor,
               b: torch.Tensor) -> float:
    """Re-measure the best candidate in float64: ‖J(a) b‖ for kind 'jv' (b unit input direction), ‖J(a)ᵀb‖ for
    'jtv' (b unit output direction), or the pair ratio for kind 'pair' (b the second point)."""
    try:
        f64 = target.torch_callable(ctx.device, torch.float64) if dtype != torch.float64 else None
    except Exception:  # a model that cannot run in float64: fall through to the safety margin below
        f64 = None
    if f64 is None and dtype != torch.float64:
        f, shrink = target.torch_callable(ctx.device, dtype), 1 - 1e-4  # float32 rounding margin
    else:
        f, shrink = (f64 or target.torch_callable(ctx.device, torch.float64)), 1.0
    a = a.to(dtype=torch.float64 if f64 is not None or dtype == torch.float64 else dtype)
    b = b.to(dtype=a.dtype)
    if kind == "pair":
        val = _pair_ratio(f, a, b, safe=True)
    elif kind == "jv":
        val = _bnorm(torch.func.jvp(f, (a,), (_unit(b),))[1]).double()
    else:
        val = _bnorm(torch.func.vjp(f, a)[1](_unit(b))[0]).double()
    v = float(val.detach().max()) * shrink
    if f64 is not None:
        target.torch_callable(ctx.device, dtype)  # a module converted in place goes back to the working dtype
    return v if math.isfinite(v) else 0.0


class _Setup:
    def __init__(self, target: Any, ctx: Context, variant: str) -> None:
        self.shape = tuple(int(s) for s in target.input_shape)
        self.n_in = math.prod(self.shape)
        self.big = self.n_in > BIG_INPUT
        self.dtype = _dtype(ctx, variant, self.n_in)
        self.device = ctx.device
        self.f = target.torch_callable(ctx.device, self.dtype)
        self.scale = float(ctx.opt(variant, "scale", 1.0))
        self.spread = float(ctx.opt(variant, "spread", 1.0 if self.big else 10.0))
        with torch.no_grad():
            probe = self.f(torch.zeros((1, *self.shape), dtype=self.dtype, device=self.device))
        self.n_out = probe[0].numel()
        self.full = min(self.n_in, self.n_out) <= int(ctx.opt(variant, "full_jacobian_max", FULL_JACOBIAN_MAX))


def _sample(s: _Setup, ctx: Context, variant: str, g: torch.Generator, samples: int, iters: int,
            batch: int) -> tuple[float, dict[str, Any], torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Sampled Jacobian norms. Returns (best, params, all points, their norms, the measured unit directions:
    input directions v if jv was exact, else output directions u; None for full Jacobians)."""
    xs, vals, dirs = [], [], []
    exact_jv, done = True, 0
    for i in range(0, samples, batch):
        if vals and ctx.expired():  # a partial sample is still a measured lower bound (the first batch always runs:
            break  # analyze() does not start a variant with no time left, and one batch is its overrun at most)
        m = min(batch, samples - i)
        done += m
        x = _points(m, s.shape, g, s.scale, s.spread, s.dtype, s.device)
        if s.full:
            val = _full_jacobian_norms(s.f, x, chunk=FULL_JACOBIAN_CHUNK, ctx=ctx)
            done -= m - val.shape[0]
            x = x[:val.shape[0]]
        else:
            v0 = _randn((m, *s.shape), g, s.dtype, s.device)
            val, bv, bu, ex = _power(s.f, x, v0, iters, ctx)
            exact_jv = exact_jv and ex
            dirs.append(bv if ex else bu)
        xs.append(x.detach())
        vals.append(val.detach().double())
    x_all, v_all = torch.cat(xs), torch.cat(vals)
    kinds = {tuple(d.shape[1:]) for d in dirs}
    d_all = torch.cat(dirs) if dirs and len(kinds) == 1 and len(dirs) == len(xs) else None
    best = float(v_all.max())
    params = {"method": "full-jacobian-svd" if s.full else "power-iteration", "samples": done,
              "dtype": str(s.dtype).replace("torch.", ""), "scale": s.scale, "spread": s.spread}
    if not s.full:
        params.update(power_iters=iters, exact_jvp=exact_jv)
    return best, params, x_all, v_all, d_all


def _sample_defaults(s: _Setup, ctx: Context) -> tuple[int, int, int]:
    v = "lower-sampled"
    samples = int(ctx.opt(v, "samples", 4 if s.big else (16384 if s.full else 256)))
    iters = int(ctx.opt(v, "power_iters", 3 if s.big else 30))
    batch = int(ctx.opt(v, "batch", 2 if s.big else (4096 if s.full else 256)))
    return samples, iters, batch


_MEMO_KEY = "lower:sampled-top"
_MEMO_TOP = 64


def _sampled_top(target: Any, s: _Setup, ctx: Context, variant: str,
                 k: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The k best sampled points (descending by measured norm) and their values; reuses lower-sampled's round
    from ctx.memo when it ran on this target with the same dtype."""
    memo = ctx.memo.get(_MEMO_KEY)
    if memo is not None and memo[0] is target and memo[1] == s.dtype and memo[2].shape[0] >= min(k, memo[4]):
        return memo[2][:k], memo[3][:k], memo[5]
    samples, iters, batch = _sample_defaults(s, ctx)
    _, params, x_all, vals, _ = _sample(s, ctx, variant, _gen(ctx, 1), samples, iters, batch)
    order = torch.argsort(vals, descending=True)[:max(k, _MEMO_TOP)]
    exact = bool(params.get("exact_jvp", True))
    ctx.memo[_MEMO_KEY] = (target, s.dtype, x_all[order], vals[order], x_all.shape[0], exact)
    return x_all[order][:k], vals[order][:k], exact


# ---------------------------------------------------------------------------------------------------------
# variants


@_serialized
def lower_sampled(target: Any, ctx: Context) -> tuple[float, dict[str, Any]]:
    """max over random Gaussian inputs x of ‖J(x)‖₂ (full Jacobian SVD for small dims, else power iteration).

    Options (ctx.opt("lower-sampled", ...)): samples, power_iters, batch, scale (per-entry RMS of the inputs),
    spread (radii log-uniform in [scale/spread, scale*spread]), dtype ("float32"/"float64").
    """
    v = "lower-sampled"
    t0 = time.perf_counter()
    s = _Setup(target, ctx, v)
    samples, iters, batch = _sample_defaults(s, ctx)
    g = _gen(ctx, 1)
    best, params, x_all, vals, dirs = _sample(s, ctx, v, g, samples, iters, batch)
    order = torch.argsort(vals, descending=True)[:_MEMO_TOP]
    ctx.memo[_MEMO_KEY] = (target, s.dtype, x_all[order], vals[order], x_all.shape[0],
                           bool(params.get("exact_jvp", True)))
    if s.dtype != torch.float64 and best > 0:
        # re-measure the best point in float64 (float32 rounding could overshoot the true value by ~1e-6)
        i = int(vals.argmax())
        x = x_all[i:i + 1]
        if s.full:
            f64 = target.torch_callable(ctx.device, torch.float64)
            best = float(_full_jacobian_norms(f64, x.double()).max())
            target.torch_callable(ctx.device, s.dtype)
        elif dirs is not None:
            ex = bool(params.get("exact_jvp", True))
            best = _remeasure(target, ctx, s.dtype, "jv" if ex else "jtv", x, dirs[i:i + 1])
        else:  # mixed jv modes across batches: measure afresh at the best point
            _, bv, bu, ex = _power(s.f, x, _randn((1, *s.shape), g, s.dtype, s.device), iters, ctx)
            best = _remeasure(target, ctx, s.dtype, "jv" if ex else "jtv", x, bv if ex else bu)
        params["remeasured_float64"] = True
    params["seconds"] = time.perf_counter() - t0
    return best, params


def _pair_ascent(s: Any, ctx: Context, v: str, x: torch.Tensor, d0: torch.Tensor, xr: torch.Tensor, steps: int,
                 lr: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised-gradient ascent on ‖f(x)−f(x+d)‖/‖d‖ with per-start step sizes (Adam's per-coordinate steps
    would ignore the very different scales of x and d); each d kept near its radius. Best (ratio, x, y) per start."""
    starts = x.shape[0]
    h = (xr.clamp_min(1e-3) * torch.logspace(-3, 0, starts, dtype=torch.float64)).to(s.device)
    h = float(ctx.opt(v, "radius", 0)) * torch.ones_like(h) if ctx.opt(v, "radius", 0) else h
    bshape = (-1, *([1] * len(s.shape)))
    d = (d0 * (h * math.sqrt(s.n_in)).to(s.dtype).reshape(bshape)).clone()
    xp = x.clone().requires_grad_(True)
    dp = d.clone().requires_grad_(True)
    step_x = (lr * xr.clamp_min(1e-3)).to(s.dtype).reshape(bshape)
    step_d = (lr * h).to(s.dtype).reshape(bshape)
    best_r = torch.zeros(starts, dtype=torch.float64, device=s.device)
    best_x, best_y = x.clone(), (x + d).clone()
    for it in range(steps + 1):
        if it % 10 == 0:
            ctx.check_deadline()
        y = xp + dp
        r = _bnorm(s.f(xp) - s.f(y)) / _bnorm(dp).clamp_min(torch.finfo(s.dtype).tiny)
        rd = r.detach().double()
        better = rd > best_r
        if better.any():
            best_r = torch.where(better, rd, best_r)
            best_x[better] = xp.detach()[better]
            best_y[better] = y.detach()[better]
        if it == steps:
            break
        gx, gd = torch.autograd.grad(torch.log(r.clamp_min(1e-300)).sum(), (xp, dp))
        decay = 1.0 - 0.9 * it / max(1, steps)
        with torch.no_grad():
            xp += decay * step_x * _unit(gx) * math.sqrt(s.n_in)
            dp += decay * step_d * _unit(gd) * math.sqrt(s.n_in)
            # keep each d near its radius: a collapsing d would make the ratio a float-noise measurement
            dn = _bnorm(dp).reshape(bshape)
            target_n = (h * math.sqrt(s.n_in)).to(s.dtype).reshape(bshape)
            dp *= torch.clamp(target_n / dn.clamp_min(torch.finfo(s.dtype).tiny), 0.5, 2.0)
    return best_r, best_x, best_y


def _jv_ascent(s: Any, ctx: Context, xm: torch.Tensor, v0: torch.Tensor, step_q: torch.Tensor, jv_steps: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ascent on ‖J(x)v‖ in x and v from the given points. Best (value, x, v) per start."""
    xq = xm.clone().requires_grad_(True)
    vq = v0.clone().requires_grad_(True)
    best_j = torch.zeros(xm.shape[0], dtype=torch.float64, device=s.device)
    bx, bvv = xq.detach().clone(), vq.detach().clone()
    for it in range(jv_steps + 1):
        if it % 10 == 0:
            ctx.check_deadline()
        vu = _unit(vq)
        jvv = _bnorm(torch.func.jvp(s.f, (xq,), (vu,))[1])
        jd = jvv.detach().double()
        better = jd > best_j
        if better.any():
            best_j = torch.where(better, jd, best_j)
            bx[better] = xq.detach()[better]
            bvv[better] = vu.detach()[better]
        if it == jv_steps:
            break
        gx, gv = torch.autograd.grad(torch.log(jvv.clamp_min(1e-300)).sum(), (xq, vq), allow_unused=True)
        decay = 1.0 - 0.9 * it / max(1, jv_steps)
        with torch.no_grad():
            if gx is not None:
                xq += decay * step_q * _unit(gx) * math.sqrt(s.n_in)
            if gv is not None:
                vq.copy_(_unit(vu + 0.5 * _unit(gv)))
    return best_j, bx, bvv


@_serialized
def lower_ascent(target: Any, ctx: Context) -> tuple[float, dict[str, Any]]:
    """Gradient ascent on the pair ratio ‖f(x)−f(y)‖/‖x−y‖ and on ‖J(x)v‖ from several starts.

    Why both: for piecewise-linear nets ‖J(x)‖ is locally constant (zero gradient a.e.), so only the pair ratio
    moves x across activation regions; for smooth nets ‖J(x)v‖ is the sharper objective. Starts are the best
    points of a short sampling round; the value is the best *re-measured* pair ratio or Jacobian norm.

    Options (ctx.opt("lower-ascent", ...)): starts, steps, jv_steps, lr, radius, power_iters,
    scale, spread, dtype.
    """
    v = "lower-ascent"
    t0 = time.perf_counter()
    s = _Setup(target, ctx, v)
    starts = int(ctx.opt(v, "starts", 2 if s.big else 16))
    steps = int(ctx.opt(v, "steps", 5 if s.big else 200))
    jv_steps = int(ctx.opt(v, "jv_steps", 3 if s.big else 100))
    iters = int(ctx.opt(v, "power_iters", 3 if s.big else 20))
    lr = float(ctx.opt(v, "lr", 0.1))
    g = _gen(ctx, 2)
    params: dict[str, Any] = {"starts": starts, "steps": steps, "jv_steps": jv_steps,
                              "dtype": str(s.dtype).replace("torch.", "")}
    cands: list[tuple[float, str, torch.Tensor, torch.Tensor]] = []  # (value, kind, a, b)
    try:
        # 1) starts: the best points of the sampling round (the same points lower-sampled measures, shared via
        #    ctx.memo when it ran first), with their top singular directions from a short power iteration
        x_top, val_top, exact0 = _sampled_top(target, s, ctx, v, max(starts, 1))
        x = x_top[:starts].detach()
        val0, vdir0, udir0, exact = _power(s.f, x, _randn(tuple(x.shape), g, s.dtype, s.device), iters, ctx)
        exact = exact and exact0
        kind0 = ("fulljac" if s.dtype == torch.float64 else "fulljac32") if s.full else ("jv" if exact else "jtv")
        cands.append((float(val_top[0]), kind0, x_top[:1], (vdir0 if exact else udir0)[:1]))
        cands.append((float(val0.max()), "jv" if exact else "jtv", x[int(val0.argmax())][None],
                      (vdir0 if exact else udir0)[int(val0.argmax())][None]))
        d0 = vdir0
        starts = x.shape[0]

        # 2) pair-ratio ascent: y = x + d, radii spread over three decades (small = local, large = cross-region)
        xr = _bnorm(x).double() / math.sqrt(s.n_in)  # per-entry RMS of each start
        bshape = (-1, *([1] * len(s.shape)))
        best_r, best_x, best_y = _pair_ascent(s, ctx, v, x, d0, xr, steps, lr)
        j = int(best_r.argmax())
        cands.append((float(best_r[j]), "pair", best_x[j:j + 1], best_y[j:j + 1]))
        params["pair_ratio"] = float(best_r[j])

        # 3) ‖J(x)v‖ ascent from the best pair midpoints (smooth nets: moves x; piecewise linear: only v moves)
        xm = (0.5 * (best_x + best_y)).detach()
        if jv_steps > 0 and exact:
            try:
                best_j, bx, bvv = _jv_ascent(s, ctx, xm, vdir0, (lr * xr.clamp_min(1e-3)).to(s.dtype).reshape(
                    bshape), jv_steps)
                j = int(best_j.argmax())
                cands.append((float(best_j[j]), "jv", bx[j:j + 1], bvv[j:j + 1]))
                params["jv_ascent"] = float(best_j[j])
                xm = bx
            except (RuntimeError, NotImplementedError) as e:  # no double-differentiable jvp for some op
                params["jv_ascent_skipped"] = type(e).__name__

        # 4) polish: power iteration at the final points (the top singular value there, measured)
        if s.full:
            fv = _full_jacobian_norms(s.f, xm.detach())
            j = int(fv.argmax())
            cands.append((float(fv[j]), "fulljac" if s.dtype == torch.float64 else "fulljac32",
                          xm[j:j + 1], xm[j:j + 1]))
        else:
            val, bv, bu, ex = _power(s.f, xm.detach(), _randn(tuple(xm.shape), g, s.dtype, s.device),
                                     max(iters, 2 * iters if not s.big else iters), ctx)
            j = int(val.argmax())
            cands.append((float(val[j]), "jv" if ex else "jtv", xm[j:j + 1], (bv if ex else bu)[j:j + 1]))
    except BudgetExceeded:
        if not cands:
            raise
        params["partial"] = True
    # the best candidate, re-measured (float64, exact pair ratio / jvp); earlier candidates as fallbacks
    best, how = 0.0, None
    for val, kind, a, b in sorted(cands, key=lambda c: -c[0])[:3]:
        if kind == "fulljac":
            m = val
        elif kind == "fulljac32":
            f64 = target.torch_callable(ctx.device, torch.float64)
            m = float(_full_jacobian_norms(f64, a.double()).max())
            target.torch_callable(ctx.device, s.dtype)
        elif s.dtype == torch.float64 and kind == "pair":
            m = float(_pair_ratio(s.f, a, b, safe=True).max())
        else:
            m = _remeasure(target, ctx, s.dtype, kind, a, b)
        if m > best:
            best, how = m, kind
    params.update(method=how, seconds=time.perf_counter() - t0)
    return best, params
