"""Tuned per-channel multipliers for traced models (the graph `optimized` variant, theory §5).

Parameterisation (as for MLPs): at every activation k, Lambda_k = c_k U_k / lambda_max(U_k^1/2 Gamma_k U_k^1/2)
with one U entry per channel, c_k = 2 sigmoid(a_k) in (0, 2) and U_k = exp(z_k). Every such Lambda is admissible
(2 Lambda^-1 > Gamma at every frequency), so Adam on (a_k, z_k) needs no projection.

Why a proxy. One float64 propagation of resnet18 at 224x224 takes ~90 s on a 2-core CPU and its gradient ~2.5x
that. But (a_k, z_k) are per channel, and per channel they mean the same at any input size: the convolution
symbols are the same trigonometric polynomials sampled on a coarser grid. So they are tuned on the model traced
at a small input (default 64 px per spatial dimension, complex64), and transferred by activation name.
Soundness never depends on the tuning: the full-resolution run is the ordinary float64 recursion, lambda_max
there only *chooses* Lambda, and every M block is certified by its Cholesky factorisation.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from ..errors import BudgetExceeded, CertificationError
from . import engine
from . import norms as cn
from .trace import GraphModel, build_graph

DEFAULT_C = 1.35  # the start: sh-spectral's default member


class TunedRule:
    """Lambda = c U / lambda_max(U^1/2 Gamma U^1/2) from per-activation (a, z); unseen activations start at
    (c = DEFAULT_C, U = I). `differentiable`: lambda_max is the Rayleigh quotient at detached power-iteration
    vectors (its gradient is the envelope gradient; power_iters <= 0: the exact eigenvalue); otherwise a 30-step
    power estimate that only chooses."""

    named = True

    def __init__(self, params: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
                 differentiable: bool = False, power_iters: int = 20, c0: float = DEFAULT_C) -> None:
        self.params = params if params is not None else {}
        self.differentiable = differentiable
        self.power_iters = power_iters
        self.a0 = math.log(c0 / (2 - c0))

    def __call__(self, gamma: torch.Tensor, grid: cn.Grid, name: str) -> torch.Tensor:
        c = gamma.shape[-1]
        if name not in self.params or self.params[name][1].numel() != c:
            self.params[name] = (torch.tensor(self.a0, dtype=torch.float64, requires_grad=self.differentiable),
                                 torch.zeros(c, dtype=torch.float64, requires_grad=self.differentiable))
        a, z = self.params[name]
        if not self.differentiable:
            a, z = a.detach(), z.detach()
        u = torch.exp(z - z.mean().detach())
        h = u.sqrt().to(device=gamma.device, dtype=gamma.dtype)
        x = h[:, None] * gamma * h[None, :]
        if self.differentiable:
            lm = torch.linalg.eigvalsh(x).max().to(torch.float64) if self.power_iters <= 0 else \
                _rayleigh_max(x, self.power_iters)
        else:
            lm = torch.tensor(cn.lmax_estimate(x, iters=30) * (1 + 1e-6), dtype=torch.float64)
        return (2 * torch.sigmoid(a) * u.to(gamma.device)) / lm.to(gamma.device, torch.float64)


def _rayleigh_max(x: torch.Tensor, iters: int) -> torch.Tensor:
    """max over frequencies of v^* x v at power-iteration vectors v (detached): a differentiable lambda_max."""
    v = cn.power_vectors(x, iters)
    return (v.mH @ x @ v).real.max().to(torch.float64)


def proxy_graph(g: GraphModel, size: int) -> tuple[GraphModel, str]:
    """The model traced with every spatial dimension capped at `size`, if that traces to the same activations;
    else the graph itself. Returns (graph, what it is)."""
    shape = tuple(g.input_shape)
    if len(shape) < 2 or all(n <= size for n in shape[1:]):
        return g, "the model itself"
    small = (shape[0], *[min(n, size) for n in shape[1:]])
    try:
        pg = build_graph(g.module, input_shape=small, name=g.name)
    except Exception as e:  # noqa: BLE001 - a model that only traces at its own size is tuned at that size
        return g, f"the model itself (tracing at {small} failed: {type(e).__name__})"
    acts = [n.name for n in g.nodes if n.op == "act"]
    if [n.name for n in pg.nodes if n.op == "act"] != acts or pg.unsupported:
        return g, f"the model itself (at {small} the graph differs)"
    return pg, f"the model traced at input {small}"


def tune(pg: GraphModel, grids: dict[str, tuple[int, ...]], device: torch.device, steps: int, lr: float,
         seconds: float | None, check: Callable[[], None], dtype: torch.dtype = torch.complex64,
         power_iters: int = 20, c0: float = DEFAULT_C) -> tuple[TunedRule, dict[str, Any]]:
    """Adam on log(bound of the proxy), on the grids of `engine.plan(pg)`. A step that makes the bound worse is
    taken back and retried at half the learning rate from the best point (its gradient and Adam state are kept,
    so a backtrack costs no extra run). Returns the rule at the best proxy value seen, and the trajectory."""
    rule = TunedRule(differentiable=True, power_iters=power_iters, c0=c0)
    opt: torch.optim.Optimizer | None = None
    history: list[float] = []
    best: tuple[float, dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None
    t0 = time.perf_counter()
    stopped = None
    saved: tuple[dict[str, Any], list[torch.Tensor]] | None = None  # Adam state and gradient at the best point
    backtracks = 0
    while len(history) < steps + 1:  # the last forward only evaluates the last step
        try:
            eng = engine.Engine(pg, rule, device, dry=False, grids=grids, check=check, dtype=dtype)
            val = eng.run(differentiable=True)
            v = float(val.detach())
            if not math.isfinite(v) or v <= 0:
                raise CertificationError(f"proxy bound {v}")
            if not val.requires_grad:
                history.append(v)
                stopped = "the bound does not depend on any multiplier"
                break
        except BudgetExceeded:  # anytime: the best point so far (or the untuned start) is what tuning returns
            stopped = "the model's budget ran out during tuning"
            break
        except (CertificationError, ArithmeticError, RuntimeError) as e:
            if not history and dtype != torch.complex128:  # complex64 overflows (e.g. vacuous LayerNorm scales)
                dtype = torch.complex128
                continue
            stopped = f"{type(e).__name__}: {e}"  # keep the best point so far (or the untuned start)
            break
        history.append(v)
        improved = best is None or v < best[0]
        if improved:
            best = (v, {k: (a.detach().clone(), z.detach().clone()) for k, (a, z) in rule.params.items()})
        if len(history) == steps + 1 or (seconds is not None and
                                         (time.perf_counter() - t0) * (len(history) + 1) / len(history) > seconds):
            break
        params = [p for pair in rule.params.values() for p in pair]
        if opt is None:
            opt = torch.optim.Adam(params, lr=lr)
        if improved:
            opt.zero_grad()
            torch.log(val).backward()
            saved = (copy.deepcopy(opt.state_dict()), [p.grad.clone() for p in params])
        else:  # overshoot: back to the best point, half the step along the same Adam direction (no extra run)
            assert best is not None and saved is not None  # the first evaluation always improves
            with torch.no_grad():
                for k, (a, z) in rule.params.items():
                    a.copy_(best[1][k][0])
                    z.copy_(best[1][k][1])
            opt.load_state_dict(saved[0])
            for p, gr in zip(params, saved[1], strict=True):
                p.grad = gr.clone()
            lr *= 0.5
            backtracks += 1
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    out = TunedRule(best[1] if best is not None else {}, differentiable=False, c0=c0)
    info: dict[str, Any] = {"proxy_values": history, "tune_seconds": time.perf_counter() - t0,
                            "tune_dtype": str(dtype).replace("torch.", ""), "backtracks": backtracks}
    if stopped:
        info["tuning_stopped"] = stopped
    return out, info
