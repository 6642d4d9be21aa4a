"""`optimized`: SDP-free tuning of the diagonal multipliers by gradient descent through the recursion (theory §5).

Why this parameterisation: every admissible Λ_k is Λ_k = c_k U_k / λ_max(U_k^{1/2} Γ̂'_k U_k^{1/2}) with
c_k ∈ (0, 2), U_k ≻ 0 diagonal (theory §2), so Adam on (a_k, z_k) with c_k = 2σ(a_k), U_k = e^{z_k} never leaves
the feasible set and needs no projection. Γ̂'_k = (β−α)² W_k M_{k-1}^{-1} W_kᵀ is the Schur form (recursion module
docstring): admissible for the full recursion *with* the p-term for any slopes, so general activations (leaky,
SiLU) are covered; for ReLU it is the ECLipsE normalisation. The run is warm-started from the best certified
closed-form trajectory of this analyze() call, the final Λ is re-certified in float64 by `recursion.certify_log`,
and the result is min(certified, warm start) — never worse than sh-combined.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import CertificationError
from ..variants import Context
from .network import MLP
from .recursion import Trajectory, certify_log, top_eigpair


class _TopEig(torch.autograd.Function):
    """λ_max of a symmetric matrix with its gradient g·v vᵀ: one eigenpair per call instead of eigvalsh's all
    (whose backward also needs all eigenvectors). Same value and gradient as eigvalsh(a)[-1] for a simple λ_max."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor) -> torch.Tensor:
        theta, v = top_eigpair(a.detach())
        ctx.save_for_backward(v)
        return theta

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (v,) = ctx.saved_tensors
        return grad * torch.outer(v, v)


class _Forward:
    """Differentiable recursion on (a_k, z_k), in normalised units with a log-scale accumulator."""

    def __init__(self, net: MLP, device: torch.device) -> None:
        self.W = [torch.as_tensor(w, dtype=torch.float64, device=device) for w in net.weights]
        self.acts = [(a.alpha, a.beta) for a in net.activations]
        self.device = device

    def coef(self, k: int) -> float:
        al, be = self.acts[k]
        c = (be - al) ** 2
        return c if c > 0 else (al + be) ** 2  # α = β > 0 (linear): p > 0, the drop form is valid

    def __call__(self, a: list[torch.Tensor], z: list[torch.Tensor], target: list[np.ndarray] | None = None
                 ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, float]], list[float]]:
        """(log L̂, per layer (λ̄_k detached, log scale), c_k). With `target` (true log Λ): the c_k reproducing it.

        Lean on purpose (this runs thousands of times): only lower triangles are trusted (cholesky and the top
        eigenpair read them), so no symmetrisation; the normalisation d is a detached constant (the value is invariant).
        """
        n0 = self.W[0].shape[1]
        m = torch.eye(n0, dtype=torch.float64, device=self.device)
        log_mu = 0.0
        lams: list[tuple[torch.Tensor, float]] = []
        cs: list[float] = []
        for k, (al, be) in enumerate(self.acts):
            w = self.W[k]
            gg = w @ torch.cholesky_solve(w.T, torch.linalg.cholesky(m))
            coef = self.coef(k)
            d = coef * float(torch.diagonal(gg).detach().max())
            g = gg * (coef / d)
            h = torch.exp(0.5 * z[k])
            e = _TopEig.apply(torch.outer(h, h) * g)
            if target is not None:
                # λ̄ (normalised) = exp(target − log μ + log d); c = λ̄ e / U
                lam_bar = np.exp(target[k] - log_mu + math.log(d))
                ratio = lam_bar / np.exp(z[k].detach().cpu().numpy())
                cs.append(float(np.mean(ratio)) * float(e.detach()))
                lam = torch.as_tensor(lam_bar, dtype=torch.float64, device=self.device)
            else:
                lam = (2 * torch.sigmoid(a[k]) / e) * torch.exp(z[k])
            p, mm = al * be, 0.5 * (al + be)
            if p != 0 or coef != 4 * mm * mm:
                s = m + (2 * p / d) * (w.T * lam[None, :]) @ w
                gs = (4 * mm * mm / d) * (w @ torch.cholesky_solve(w.T, torch.linalg.cholesky(s)))
            else:
                gs = g
            m = torch.diag_embed(2 * lam) - torch.outer(lam, lam) * gs
            log_mu -= math.log(d)
            lams.append((lam.detach(), log_mu))
        wl = self.W[-1]
        out = wl @ torch.cholesky_solve(wl.T, torch.linalg.cholesky(m))
        top = out[0, 0] if out.shape[0] == 1 else _TopEig.apply(out)
        return 0.5 * (torch.log(top) - log_mu), lams, cs


def true_log_lambdas(lams: list[tuple[torch.Tensor, float]]) -> list[np.ndarray]:
    """Per-layer true-scale log Λ_k from the forward's normalised λ̄_k and log μ_k (Λ_k = μ_k λ̄_k)."""
    return [torch.log(lam).cpu().numpy() + log_mu for lam, log_mu in lams]


def _warm(net: MLP, ctx: Context) -> tuple[str, Trajectory]:
    from .closed_form import best_trajectory

    return best_trajectory(net, ctx)


CERTIFY_EVERY = 100  # Adam steps between certifications of the best point so far (anytime: one is always at hand)


@dataclass
class _Anytime:
    """The best *certified* value so far and what it cost to get: what `optimized` returns when time runs out."""

    value: float
    step: int = 0  # the Adam step whose point certified (0: the warm start)
    cert_seconds: float = 0.0  # longest certification so far (the time reserved for the last one)
    certified: int = 0  # points that certified
    failures: list[str] = field(default_factory=list)

    def certify(self, net: MLP, logs: list[tuple[torch.Tensor, float]], step: int, dev: torch.device) -> None:
        """Certify the point `logs` (float64 recursion, every Cholesky checked); keep it if it beats the best."""
        t0 = time.monotonic()
        try:
            cert = certify_log(net, true_log_lambdas(logs), device=dev, check=None)
        except CertificationError as e:
            self.failures.append(str(e)[:200])
            return
        finally:
            self.cert_seconds = max(self.cert_seconds, time.monotonic() - t0)
        self.certified += 1
        if cert.value < self.value:
            self.value, self.step = cert.value, step


def optimized(net: MLP, ctx: Context) -> tuple[float, dict[str, Any]]:
    """Adam on log L̂ over the complete (c, U) parameterisation, warm-started, certified, ≤ sh-combined; anytime.

    Why anytime: a deep wide net can need more steps than its budget holds. The best point is certified every
    CERTIFY_EVERY steps, the loop stops while the time left still holds one more certification (and a step), and
    the best certified value is returned with how far the run got (steps of steps_planned, why it stopped). Only a
    warm start that cannot be computed in time raises BudgetExceeded (from the closed forms' deadline checks).
    """
    warm_name, warm = _warm(net, ctx)
    if net.depth == 1 or warm.value == 0.0:
        return warm.value, {"warm_start": warm_name, "steps": 0}
    max_steps = int(ctx.opt("optimized", "steps", 2000))
    best, steps, stopped = _tune(net, ctx, warm, max_steps)
    out: dict[str, Any] = {"warm_start": warm_name, "warm_value": float(f"{warm.value:.9g}"), "steps": steps,
                           "steps_planned": max_steps, "stopped": stopped}
    if not best.certified:
        reason = best.failures[-1] if best.failures else "no optimisation step succeeded"
        return warm.value, {**out, "certified": False, "reason": reason}
    out["certified"] = True
    if best.step == 0:
        return warm.value, {**out, "used": "warm_start"}
    out.update(certified_step=best.step, vs_warm=float(f"{best.value / warm.value:.6g}"))
    return best.value, out


def _tune(net: MLP, ctx: Context, warm: Trajectory, max_steps: int) -> tuple[_Anytime, int, str]:
    """The Adam loop: (best certified point, steps done, why it stopped)."""
    t_start = time.monotonic()
    lr = float(ctx.opt("optimized", "lr", 0.05))
    tol = float(ctx.opt("optimized", "rtol", 1e-5))  # relative improvement of L̂ that counts as progress
    patience = int(ctx.opt("optimized", "patience", 30))  # steps without progress before the step size halves
    max_halvings = int(ctx.opt("optimized", "halvings", 6))
    max_seconds = ctx.opt("optimized", "max_seconds", 120.0)

    fwd = _Forward(net, ctx.device)
    params, a, z = _start(fwd, warm)
    opt = torch.optim.Adam(params, lr=lr)
    best = _Anytime(warm.value)
    best_loss, best_logs, best_step, cert_step = math.inf, None, 0, 0
    since = failures = halvings = steps = 0
    step_seconds = 0.0
    budget0, last_cert = ctx.time_left(), time.monotonic()
    best_params = [p_.detach().clone() for p_ in params]
    stopped = "max_steps"
    for step in range(1, max_steps + 1):
        left = ctx.time_left()
        # stop while the budget still holds a step and the final certification (with room for timing noise)
        reserve = 1.5 * (max(best.cert_seconds, step_seconds) + step_seconds) + 0.5
        if left is not None and left < reserve:
            stopped = "budget"
            break
        if max_seconds is not None and time.monotonic() - t_start > float(max_seconds):
            stopped = "max_seconds"
            break
        t0 = time.monotonic()
        steps = step
        opt.zero_grad()
        try:
            loss, logs, _ = fwd(a, z)
            if not torch.isfinite(loss):
                raise FloatingPointError("non-finite loss")
            loss.backward()
        except (torch.linalg.LinAlgError, FloatingPointError, RuntimeError):
            failures += 1
            if failures > 30 or best_logs is None:
                stopped = "failures"
                break
            with torch.no_grad():  # back to the best point, smaller steps
                for p_, v in zip(params, best_params, strict=True):
                    p_.copy_(v)
            for group in opt.param_groups:
                group["lr"] *= 0.5
            continue
        lv = float(loss.detach())
        since = 0 if lv < best_loss - tol else since + 1  # loss is log L̂: absolute change = relative change of L̂
        if lv < best_loss:
            best_loss, best_logs, best_step = lv, logs, step
            best_params = [p_.detach().clone() for p_ in params]
        if since >= patience:  # plateau: halve the step size, stop after max_halvings
            halvings += 1
            if halvings > max_halvings:
                stopped = "converged"
                break
            since = 0
            for group in opt.param_groups:
                group["lr"] *= 0.5
        opt.step()
        step_seconds = max(step_seconds, time.monotonic() - t0)
        due = step % CERTIFY_EVERY == 0 or (budget0 is not None and time.monotonic() - last_cert > 0.25 * budget0)
        if due and best_logs is not None and best_step > cert_step:
            best.certify(net, best_logs, best_step, ctx.device)
            cert_step, last_cert = best_step, time.monotonic()
    left = ctx.time_left()
    room = left is None or left > 1.2 * max(best.cert_seconds, step_seconds)
    if best_logs is not None and best_step > cert_step and room:
        best.certify(net, best_logs, best_step, ctx.device)
    return best, steps, stopped


def _start(fwd: _Forward, warm: Trajectory) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Adam's parameters (a_k, z_k) at the warm start: U_k = its Λ_k up to scale, c_k the value reproducing it."""
    dev = fwd.device
    z = [torch.as_tensor(ll - ll.mean(), dtype=torch.float64, device=dev) for ll in warm.log_lambdas]
    with torch.no_grad():
        _, _, cs = fwd([torch.zeros((), dtype=torch.float64)] * len(z), z, target=warm.log_lambdas)
    cs = [min(max(c, 1e-6), 2 - 1e-6) for c in cs]
    a = [torch.tensor(math.log(c / (2 - c)), dtype=torch.float64, device=dev) for c in cs]
    for p_ in [*a, *z]:
        p_.requires_grad_(True)
    return [*a, *z], a, z
