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
from typing import Any

import numpy as np
import torch

from ..errors import CertificationError
from ..variants import Context
from .network import MLP
from .recursion import Trajectory, certify_log


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

        Lean on purpose (this runs thousands of times): only lower triangles are trusted (cholesky and eigvalsh
        read them), so no symmetrisation; the normalisation d is a detached constant (the value is invariant).
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
            e = torch.linalg.eigvalsh(torch.outer(h, h) * g)[-1]
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
        top = out[0, 0] if out.shape[0] == 1 else torch.linalg.eigvalsh(out)[-1]
        return 0.5 * (torch.log(top) - log_mu), lams, cs


def true_log_lambdas(lams: list[tuple[torch.Tensor, float]]) -> list[np.ndarray]:
    """Per-layer true-scale log Λ_k from the forward's normalised λ̄_k and log μ_k (Λ_k = μ_k λ̄_k)."""
    return [torch.log(lam).cpu().numpy() + log_mu for lam, log_mu in lams]


def _warm(net: MLP, ctx: Context) -> tuple[str, Trajectory]:
    from .closed_form import best_trajectory

    return best_trajectory(net, ctx)


def optimized(net: MLP, ctx: Context) -> tuple[float, dict[str, Any]]:
    """Adam on log L̂ over the complete (c, U) parameterisation, warm-started, certified, ≤ sh-combined."""
    t_start = time.monotonic()
    warm_name, warm = _warm(net, ctx)
    if net.depth == 1 or warm.value == 0.0:
        return warm.value, {"warm_start": warm_name, "steps": 0}
    max_steps = int(ctx.opt("optimized", "steps", 2000))
    lr = float(ctx.opt("optimized", "lr", 0.05))
    tol = float(ctx.opt("optimized", "rtol", 1e-5))  # relative improvement of L̂ that counts as progress
    patience = int(ctx.opt("optimized", "patience", 30))  # steps without progress before the step size halves
    max_halvings = int(ctx.opt("optimized", "halvings", 6))
    max_seconds = ctx.opt("optimized", "max_seconds", 120.0)

    fwd = _Forward(net, ctx.device)
    dev = ctx.device
    z = [torch.as_tensor(ll - ll.mean(), dtype=torch.float64, device=dev) for ll in warm.log_lambdas]
    with torch.no_grad():
        _, _, cs = fwd([torch.zeros((), dtype=torch.float64)] * len(z), z, target=warm.log_lambdas)
    cs = [min(max(c, 1e-6), 2 - 1e-6) for c in cs]
    a = [torch.tensor(math.log(c / (2 - c)), dtype=torch.float64, device=dev) for c in cs]
    params = [*a, *z]
    for p_ in params:
        p_.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)

    best_loss, best_logs, since, steps, failures, halvings = math.inf, None, 0, 0, 0, 0
    best_params = [p_.detach().clone() for p_ in params]
    for step in range(1, max_steps + 1):
        steps = step
        left = ctx.time_left()
        if left is not None and left < 2.0:
            break  # stop early and leave time to certify what we have
        if max_seconds is not None and time.monotonic() - t_start > float(max_seconds):
            break
        opt.zero_grad()
        try:
            loss, logs, _ = fwd(a, z)
            if not torch.isfinite(loss):
                raise FloatingPointError("non-finite loss")
            loss.backward()
        except (torch.linalg.LinAlgError, FloatingPointError, RuntimeError):
            failures += 1
            if failures > 30 or best_logs is None:
                break
            with torch.no_grad():  # back to the best point, smaller steps
                for p_, v in zip(params, best_params, strict=True):
                    p_.copy_(v)
            for group in opt.param_groups:
                group["lr"] *= 0.5
            continue
        lv = float(loss.detach())
        if lv < best_loss - tol:  # loss is log L̂: absolute change = relative change of L̂
            since = 0
        else:
            since += 1
        if lv < best_loss:
            best_loss, best_logs = lv, logs
            best_params = [p_.detach().clone() for p_ in params]
        if since >= patience:  # plateau: halve the step size, stop after max_halvings
            halvings += 1
            if halvings > max_halvings:
                break
            since = 0
            for group in opt.param_groups:
                group["lr"] *= 0.5
        opt.step()

    out: dict[str, Any] = {"warm_start": warm_name, "warm_value": float(f"{warm.value:.9g}"), "steps": steps}
    if best_logs is None:
        return warm.value, {**out, "certified": False, "reason": "no optimisation step succeeded"}
    try:
        cert = certify_log(net, true_log_lambdas(best_logs), device=dev, check=None)
    except CertificationError as e:
        return warm.value, {**out, "certified": False, "reason": str(e)[:200]}
    out["certified"] = True
    out["vs_warm"] = float(f"{cert.value / warm.value:.6g}") if warm.value > 0 else None
    if cert.value >= warm.value:
        return warm.value, {**out, "used": "warm_start"}
    return cert.value, out
