"""The sequential LipSDP-Neuron recursion (theory §2) with pluggable diagonal multiplier rules, certified as it runs.

Why one generic recursion: every closed-form bound (ECLipsE-Fast, the Syed–Hu members, greedy mixing) and the
optimizer's certificate are the same Schur-complement recursion with a different rule for Λ_k. Running them all
through one code path (torch float64, on the context's device) means one place to get the numerics right:

* per layer the Gram matrix Γ̂_k = coef·W_k M_{k-1}^{-1} W_k^T comes from a Cholesky factor, a triangular
  solve (never an explicit inverse) and a symmetric rank-k update (syrk on the CPU), and is renormalised by its
  largest diagonal entry; the scale is kept as a log accumulator (every rule is homogeneous of degree −1,
  theory §2), so 100-layer nets neither under- nor overflow;
* λ_max only of symmetric matrices (one-eigenvalue dense solve, or a converged Lanczos estimate for large layers;
  what a rule's Λ needs is enforced by the Cholesky check anyway, see `LayerCache.lmax` and `lmax_upper`);
* certification in-line: after Λ_k is chosen, M_k (and S_{k-1} when the p-term is kept) is factorised with a
  relative shift τ(n)·diag ≥ the Cholesky backward-error bound (`form_m`, `checked_cholesky`; invariant under
  the Jacobi scaling that makes the diagonal 1). Success proves the exact matrix PD;
  the recursion then *continues with the shifted matrix* M_k − τ·diag(M_k) ⪯ M_k, which by monotonicity (theory §2)
  can only increase the final value. So the number a trajectory returns is exactly what `certify` recomputes
  from its Λ sequence, and it is an upper bound for that sequence with the floating-point error covered.

General slopes [α, β] (p = αβ, m = (α+β)/2):
* p ≥ 0, mode "drop": the rule sees Γ̂ = (α+β)² W M^{-1} W^T (p-term dropped, ECLipsE-Fast's convention);
  with ``keep_p`` the p-term is then put back (S = M + 2p WᵀΛW ⪰ M only shrinks Γ̂: still admissible, tighter).
* any p, mode "schur": Λ is admissible for the full recursion with the p-term iff
  M_{k-1} − ((β−α)²/2) Wᵀ Λ W ≻ 0 (Schur complement of the 2×2 block of Z the other way round), i.e. iff
  λ_max(Λ^{1/2} Γ̂' Λ^{1/2}) < 2 with Γ̂' = (β−α)² W M^{-1} W^T. Every rule applied to Γ̂' is therefore
  admissible for αβ < 0 too; halving backtracking (theory §5) stays as the rounding fallback.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg as _la
import torch
from scipy.linalg import blas as _blas

from ..errors import CertificationError
from .network import MLP

EPS = float(np.finfo(np.float64).eps)
MAX_BACKTRACK = 100


def tau(n: int) -> float:
    """Relative Cholesky margin for an n×n unit-diagonal matrix.

    (n+1)·n·eps is Higham's worst-case Cholesky backward-error bound (‖ΔH‖₂ ≤ γ_{n+1}‖R‖_F²); it is capped at
    1e-11 (reached at n ≈ 210), still ≥ 1e4× the typical √n·eps error, because the shift also loosens the value
    (≈ L·τ/2 relative) and ECLipsE-Fast must match the eclipse-nn package to 1e-9 on 50-layer width-1000 nets.
    """
    return max(1e-12, min((n + 1) * n * EPS, 1e-11))


# ---------------------------------------------------------------------------------------------------- linear algebra
LANCZOS_MIN_N = 256  # below this a dense top-eigenvalue solve is cheaper than Lanczos with its Python overhead
F32_START_MIN_N = 512  # from here a float32 run's start vector saves more matvec traffic than it costs
SYRK_MIN_N = 48  # below this one matmul call is cheaper than syrk plus the symmetrising copy
CERTIFY_RULE_LMAX = False  # see LayerCache.lmax: M_k's own Cholesky is the certificate the bound needs
LMAX_HAIR = 2e-11  # relative lift of a Lanczos estimate before its Cholesky certificate (> τ(n) ≥ its need)


def sym(a: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a + a.T)


def _cpu64(a: torch.Tensor) -> bool:
    """True where LAPACK/BLAS can be called on the tensor's own memory (CPU float64, no autograd)."""
    return a.device.type == "cpu" and a.dtype == torch.float64 and not a.requires_grad


def sym_gram(y: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha·yᵀy (y: n_in×n_out, or a batch of them).

    Why: only one triangle of a Gram matrix needs computing. On the CPU that is BLAS syrk on the tensor's memory
    (half the flops of yᵀy: measured 22 vs 41 ms at n = 1000), mirrored once, so exactly symmetric; elsewhere
    (CUDA, batches, n < SYRK_MIN_N) one matmul, symmetric to rounding (Cholesky and eigvalsh read one triangle).
    """
    n = y.shape[-1]
    if y.dim() != 2 or not _cpu64(y) or n < SYRK_MIN_N:
        g = y.mT @ y
        return g.mul_(alpha) if alpha != 1.0 else g
    if not y.is_contiguous():
        y = y.contiguous() if not y.T.is_contiguous() else y
    # BLAS sees Fortran order: a C-ordered y is the Fortran array yᵀ (a·aᵀ = yᵀy), a transposed one is y (aᵀa)
    a, trans = (y.T.numpy(), 0) if y.is_contiguous() else (y.numpy(), 1)
    c = np.zeros((n, n), order="F")  # the upper triangle stays 0 (syrk writes the lower one only)
    c = torch.from_numpy(_blas.dsyrk(alpha, a, c=c, trans=trans, lower=1, overwrite_c=1))
    g = c + c.T
    g.diagonal().mul_(0.5)  # 2x·0.5 = x exactly
    return g


def top_eig_dense(a: torch.Tensor) -> float:
    """Largest eigenvalue of a symmetric matrix by a dense solve (LAPACK's MRRR for one eigenvalue on the CPU)."""
    if _cpu64(a):
        return float(_la.eigh(a.numpy(), eigvals_only=True, subset_by_index=[a.shape[0] - 1] * 2, driver="evr",
                              check_finite=False)[0])
    return float(torch.linalg.eigvalsh(a)[-1])


def top_eigpair(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(λ_max, a unit eigenvector) of a symmetric matrix (lower triangle read): one eigenpair by MRRR on the CPU,
    the full eigh elsewhere. For `optimized`'s gradient, d λ_max = vᵀ dA v, which needs no other eigenpair."""
    if _cpu64(a):
        n = a.shape[0]
        w, v = _la.eigh(a.numpy(), subset_by_index=[n - 1, n - 1], driver="evr", check_finite=False)
        return torch.tensor(w[0], dtype=a.dtype), torch.from_numpy(np.ascontiguousarray(v[:, 0]))
    w, v = torch.linalg.eigh(a)
    return w[-1], v[:, -1]


def lanczos_extremes(a: torch.Tensor, k_max: int = 300, rtol: float = 1e-13, seed: int = 0,
                     need_lo: bool = True) -> tuple[float, float]:
    """(λ_min, λ_max) of a symmetric matrix by Lanczos with full reorthogonalisation, converged to ~rtol.

    Why: O(n²·iters) instead of eigvalsh's (4/3)n³ (15 vs 93 ms at n = 1000). Ritz values are inner estimates
    (λ_max under-estimated): `lmax_upper` certifies an upper bound from one, and the recursion's Cholesky checks
    enforce admissibility of whatever multipliers an estimate gives. For λ_max alone on large matrices the start
    vector comes from a float32 run (half the memory traffic per matvec) converged to ~1e-5: the float64 run then
    needs a third of its steps, and only float64 Ritz values are returned.
    """
    n = a.shape[0]
    if n <= 2 * 8 + 2:
        ev = torch.linalg.eigvalsh(a)
        return float(ev[0]), float(ev[-1])
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(n, generator=g, dtype=a.dtype).to(a.device)
    if not need_lo and n >= F32_START_MIN_N:
        warm = _lanczos(a.to(torch.float32), q.to(torch.float32), k_max, 3e-5, None, False)
        q = q if warm is None else warm[2].to(a.dtype)
    out = _lanczos(a, q, k_max, 1e-7, rtol, need_lo)
    if out is None:
        ev = torch.linalg.eigvalsh(a)
        return float(ev[0]), float(ev[-1])
    return out[0], out[1]


def _lanczos(a: torch.Tensor, q: torch.Tensor, k_max: int, res_tol: float, rtol: float | None, need_lo: bool
             ) -> tuple[float, float, torch.Tensor] | None:
    """(θ_min, θ_max, top Ritz vector) once the residuals are ≤ res_tol·|θ| (and θ moved ≤ rtol·|θ| over the last
    4 steps, unless rtol is None); None if k_max steps do not get there. θ_min is NaN unless need_lo."""
    n = a.shape[0]
    k_max = min(k_max, n)
    Q = torch.empty((k_max, n), dtype=a.dtype, device=a.device)
    Q[0] = q / torch.linalg.vector_norm(q)
    alphas: list[float] = []
    betas: list[float] = []
    prev_hi = prev_lo = math.nan
    for j in range(k_max):
        basis = Q[: j + 1]
        w = torch.mv(a, Q[j])
        h = torch.mv(basis, w)  # classical Gram–Schmidt twice = full reorthogonalisation; h[j] is α_j
        w = torch.addmv(w, basis.T, h, alpha=-1.0)
        h2 = torch.mv(basis, w)
        w = torch.addmv(w, basis.T, h2, alpha=-1.0)
        alphas.append(float(h[j] + h2[j]))
        beta = float(torch.linalg.vector_norm(w))
        last = beta < 1e-300 or j == k_max - 1
        if j >= 4 and (j % 4 == 0 or last):
            hi, res_hi, x = _ritz(alphas, betas, beta, top=True)
            lo, res_lo, _ = _ritz(alphas, betas, beta, top=False) if need_lo else (math.nan, 0.0, None)
            scale = max(abs(hi), 0.0 if math.isnan(lo) else abs(lo), 1e-300)
            converged = res_hi <= res_tol * scale and res_lo <= res_tol * scale  # Ritz error ~ res²/gap
            stable = rtol is None or (abs(hi - prev_hi) <= rtol * scale and (
                not need_lo or abs(lo - prev_lo) <= rtol * scale))
            if beta < 1e-300 or (converged and stable):
                return lo, hi, torch.as_tensor(x[:, 0], dtype=a.dtype, device=a.device) @ basis
            prev_hi, prev_lo = hi, lo
        if last:
            break
        betas.append(beta)
        Q[j + 1] = w / beta
    return None


def _ritz(alphas: list[float], betas: list[float], beta: float, top: bool) -> tuple[float, float, np.ndarray]:
    """(θ, residual norm, eigenvector of T) of the top (or bottom) Ritz pair of the Lanczos tridiagonal T (LAPACK,
    a few tens of µs)."""
    i = len(alphas) - 1 if top else 0
    v, x = _la.eigh_tridiagonal(np.asarray(alphas), np.asarray(betas), select="i", select_range=(i, i),
                                check_finite=False)
    return float(v[0]), abs(beta * float(x[-1, 0])), x


def lmax_sym(a: torch.Tensor) -> float:
    """Largest eigenvalue of a symmetric matrix (dense for small n, Lanczos for large): an estimate."""
    if a.shape[0] < LANCZOS_MIN_N:
        return top_eig_dense(a)
    return lanczos_extremes(a, need_lo=False)[1]


def extremes_sym(a: torch.Tensor) -> tuple[float, float]:
    """(λ_min, λ_max) estimates of a symmetric matrix (dense for small n, Lanczos for large)."""
    if a.shape[0] < LANCZOS_MIN_N:
        ev = torch.linalg.eigvalsh(a)
        return float(ev[0]), float(ev[-1])
    return lanczos_extremes(a)


def lmax_upper(a: torch.Tensor, certify: bool = True) -> float:
    """t ≥ λ_max of a symmetric matrix, a hair above the estimate; with `certify` (the default) t is proven.

    Dense solves (n < LANCZOS_MIN_N) are backward stable: the computed eigenvalue is exact for a + E with
    ‖E‖ ≤ 4(n+1)·eps·‖a‖ (the rounding `naive_value` always used), so t = θ + that bound. A Lanczos estimate θ is
    a Ritz value (≤ λ_max) with no such bound: t = θ + LMAX_HAIR·|θ|, proven by a Cholesky of the Jacobi-scaled
    t·I − a with the relative margin τ(n) (as `checked_cholesky`); on failure the hair grows tenfold (twice), then
    the dense solve decides. The same t with or without `certify`: the flag only adds the proof.
    """
    n = a.shape[0]
    if n < LANCZOS_MIN_N:
        return top_eig_dense(a) + 4 * (n + 1) * EPS * float(torch.linalg.matrix_norm(a))  # ‖a‖₂ ≤ ‖a‖_F
    theta = lanczos_extremes(a, need_lo=False)[1]
    scale = max(abs(theta), float(torch.diagonal(a).abs().max()), 1e-300)
    if not certify:
        return theta + LMAX_HAIR * scale
    for hair in (LMAX_HAIR, 10 * LMAX_HAIR, 100 * LMAX_HAIR):
        if _certify_below(a, theta + hair * scale):
            return theta + hair * scale
    return top_eig_dense(a) + 4 * (n + 1) * EPS * float(torch.linalg.matrix_norm(a))


def _certify_below(a: torch.Tensor, t: float) -> bool:
    """True iff a Cholesky proves t·I − a ≻ 0 (Jacobi-scaled, relative margin τ(n), as `checked_cholesky`)."""
    d = t - torch.diagonal(a)
    if not bool(torch.all(d > 0)):
        return False
    s = torch.rsqrt(d)
    c = (a * s[:, None]).mul_(s[None, :]).neg_()
    c.diagonal().fill_(1.0 - tau(a.shape[0]))
    return int(torch.linalg.cholesky_ex(c)[1]) == 0


def checked_cholesky(a: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Certify a ≻ 0 with a relative margin and return (a', chol(a')) with a' = a − τ·diag(a) ⪯ a.

    Jacobi scaling C = D a D (D = diag(a)^{-1/2}) makes the test scale-free; chol(C − τI) succeeding proves the
    exact C ≻ 0 when τ covers the Cholesky backward error. Raises CertificationError otherwise.
    """
    n = a.shape[0]
    d = torch.diagonal(a)
    if not bool(torch.all(d > 0)) or not bool(torch.isfinite(a).all()):
        raise CertificationError(f"{what} is not positive definite (non-positive or non-finite diagonal)")
    t = tau(n)
    s = torch.rsqrt(d)
    c = a * s[:, None] * s[None, :]
    c.diagonal().sub_(t)
    r, info = torch.linalg.cholesky_ex(c)
    if int(info) != 0:
        raise CertificationError(f"{what} is not positive definite with relative margin {t:.1e}")
    shifted = a.clone()
    shifted.diagonal().mul_(1.0 - t)
    return shifted, r / s[:, None]


def form_m(lam: torch.Tensor, g: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Certified M = 2Λ − ΛΓ̂Λ = Λ A Λ, A = 2Λ^{-1} − Γ̂: returns (A − τ·diag(A), Λ^{-1}, chol of the shifted M).

    chol(A − τ·diag(A)) succeeding certifies A ≻ 0, hence M ≻ 0 (the relative margin τ covers the Cholesky
    backward error as in `checked_cholesky`: the test is invariant under the Jacobi scaling that makes A's
    diagonal 1), and Λ(A − τ·diag(A))Λ = M − τ·diag(M) ⪯ M is what the recursion continues with, its factor
    Λ·chol(A − τ·diag(A)). Why not scale first: A is −Γ̂ with a new diagonal, one pass over Γ̂, no outer product.
    """
    n = g.shape[0]
    inv = torch.reciprocal(lam)
    diag_a = 2 * inv - torch.diagonal(g)  # catches λ ≤ 0, 0, NaN and ∞ too (Γ̂_ii ≥ 0)
    if not bool(((diag_a > 0) & torch.isfinite(diag_a)).all()):
        raise CertificationError(f"{what} is not positive definite (non-positive diagonal)")
    t = tau(n)
    c = g.neg()
    c.diagonal().copy_(diag_a).mul_(1.0 - t)
    r, info = torch.linalg.cholesky_ex(c)
    if int(info) != 0:
        raise CertificationError(f"{what} is not positive definite with relative margin {t:.1e}")
    return c, inv, r.mul_(lam[:, None])


def normalised_gram(y: torch.Tensor, coef: float, k: int) -> tuple[torch.Tensor, list[float]]:
    """coef·yᵀy divided by its largest diagonal entry, and that divisor: y is n_in×n_out, or a batch of them.

    Why: every rule is homogeneous of degree −1, so the recursion works on unit-max-diagonal Γ̂ and keeps the
    scale in a log accumulator; a zero or non-finite divisor means a degenerate layer. The divisor comes from the
    column norms of y, so the scaling rides on the Gram product (no pass over y or Γ̂ of its own).
    """
    norms = torch.linalg.vector_norm(y, dim=-2).amax(dim=-1)
    divs = [coef * x * x for x in (norms.reshape(-1).tolist() if y.dim() > 2 else [float(norms)])]
    for d in divs:
        if not (d > 0 and math.isfinite(d)):
            raise CertificationError(f"layer {k + 1}: degenerate Gram matrix (max diagonal {d})")
    if y.dim() == 2:
        return sym_gram(y, coef / divs[0]), divs
    y = y * torch.tensor([math.sqrt(coef / d) for d in divs], dtype=y.dtype, device=y.device)[:, None, None]
    return y.mT @ y, divs


# ---------------------------------------------------------------------------------------------------- rules
class LayerCache:
    """Spectral quantities of one layer's normalised Γ̂, computed once and shared by every candidate rule."""

    def __init__(self, g: torch.Tensor) -> None:
        self.g = g
        self._lmax: float | None = None
        self._off: tuple[float, float] | None = None
        self._rows: torch.Tensor | None = None

    @property
    def lmax(self) -> float:
        """t a hair above λ_max(Γ̂) (`lmax_upper`): the rules scale Λ by it.

        Not separately proven by default: the bound needs no t ≥ λ_max. What it needs is M_k ≻ 0, and M_k's own
        Cholesky proves that (for SN(c), M_k = (c/t)²((2t/c)I − Γ̂): a Cholesky of sI − Γ̂, s = 2t/c, i.e. a proof
        of s > λ_max for the t used). CERTIFY_RULE_LMAX = True adds the proof of t ≥ λ_max, one more Cholesky.
        """
        if self._lmax is None:
            self._lmax = lmax_upper(self.g, certify=CERTIFY_RULE_LMAX)
        return self._lmax

    @property
    def off_extremes(self) -> tuple[float, float]:
        if self._off is None:
            o = 0.5 * self.g
            o.diagonal().zero_()
            self._off = extremes_sym(o)
        return self._off

    @property
    def row_sums(self) -> torch.Tensor:
        if self._rows is None:
            self._rows = self.g.abs().sum(dim=1)
        return self._rows


@dataclass(frozen=True)
class Rule:
    """A closed-form diagonal multiplier rule Λ = rule(Γ̂), homogeneous of degree −1 (theory §4).

    kind: "sn" (Λ = c/λ_max(Γ̂)·I, 0<c<2), "gc" (Λ_ii = c/Σ_j|Γ̂_ij|, 0<c<2),
    "shift" (Λ_ii = 1/(Γ̂_ii/2 + c·s), s = ‖offdiag(Γ̂)/2‖₂ ("norm"), λ_max(offdiag(Γ̂)/2) ("eig") or its
    Weyl upper bound (λ_max(Γ̂) − min_i Γ̂_ii)/2 ("weyl"); any s ≥ λ_max(offdiag/2) with c > 1 is admissible).
    """

    kind: str
    c: float
    variant: str = "norm"

    @property
    def name(self) -> str:
        extra = "" if self.kind != "shift" or self.variant == "norm" else f",{self.variant}"
        return f"{self.kind}({self.c:g}{extra})"

    def validate(self) -> None:
        ok = (0 < self.c < 2) if self.kind in ("sn", "gc") else (self.c > 1 and self.kind == "shift")
        if not ok or not math.isfinite(self.c):
            raise ValueError(f"rule {self.name}: c outside its admissible range")

    def __call__(self, cache: LayerCache) -> tuple[torch.Tensor, float]:
        """(λ vector, analytic lower bound on λ_min(2Λ^{-1}−Γ̂)/λ_max(2Λ^{-1})) for the normalised Γ̂."""
        g = cache.g
        n = g.shape[0]
        if self.kind == "sn":
            lm = max(cache.lmax, 1e-300)
            return torch.full((n,), self.c / lm, dtype=g.dtype, device=g.device), 1.0 - self.c / 2
        if self.kind == "gc":
            r = cache.row_sums
            r_min, r_max = torch.aminmax(r)
            r_min, r_max = float(r_min), float(r_max)
            lam = self.c / torch.clamp(r, min=1e-12 * r_max + 1e-300)
            return lam, (1 - self.c / 2) * r_min / r_max
        diag = torch.diagonal(g)
        d_min, d_max = (float(x) for x in torch.aminmax(diag))
        if self.variant == "weyl":  # Weyl: λ_max(offdiag/2) ≤ (λ_max(Γ̂) − min_i Γ̂_ii)/2, no extra eigen-solve
            s = 0.5 * (cache.lmax - d_min)
        else:
            lo, hi = cache.off_extremes
            s = max(-lo, hi) if self.variant == "norm" else hi
        s = max(s, 1e-2)  # Γ̂ (nearly) diagonal: keep a margin that survives rounding of the multipliers
        inv = 0.5 * diag + self.c * s
        return 1.0 / inv, (self.c - 1) * s / (0.5 * d_max + self.c * s)


SN1 = Rule("sn", 1.0)


# ---------------------------------------------------------------------------------------------------- the recursion
@dataclass
class Slopes:
    alpha: float
    beta: float

    @property
    def m(self) -> float:
        return 0.5 * (self.alpha + self.beta)

    @property
    def p(self) -> float:
        return self.alpha * self.beta


@dataclass
class Trajectory:
    """One certified run: value, the log of every true-scale Λ_k, per-layer margins and rule names."""

    value: float
    log_value: float
    log_lambdas: list[np.ndarray] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)
    backtracks: int = 0

    @property
    def min_margin(self) -> float:
        finite = [m for m in self.margins if math.isfinite(m)]
        return min(finite) if finite else float("nan")

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"min_margin": _r(self.min_margin), "log_value": _r(self.log_value)}
        if self.backtracks:
            out["backtracks"] = self.backtracks
        return out


def _r(x: float, digits: int = 6) -> float | None:
    return None if not math.isfinite(x) else float(f"{x:.{digits}g}")


class Recursion:
    """The state machine M_0 = I → M_1 → … → M_{L-1} → L̂, in normalised units with a log-scale accumulator."""

    def __init__(self, net: MLP, device: torch.device | str = "cpu", keep_p: bool = True,
                 check: Callable[[], None] | None = None, neg_mode: str = "schur") -> None:
        if neg_mode not in ("schur", "backtrack"):
            raise ValueError(f"neg_mode must be 'schur' or 'backtrack', got {neg_mode!r}")
        self.neg_mode = neg_mode
        self.net = net
        self.device = torch.device(device)
        self.W = [torch.as_tensor(w, dtype=torch.float64, device=self.device) for w in net.weights]
        self.slopes = [Slopes(a.alpha, a.beta) for a in net.activations]
        self.keep_p = keep_p
        self.check = check or (lambda: None)
        n0 = self.W[0].shape[1]
        self.C = torch.eye(n0, dtype=torch.float64, device=self.device)  # M̄ = D^{-1} C D^{-1} (form_m: C = A)
        self.D = torch.ones(n0, dtype=torch.float64, device=self.device)  # form_m: D = Λ^{-1}
        self.R = self.C.clone()  # chol(M̄)
        self.log_mu = 0.0
        self.k = 0  # layers done
        self.traj = Trajectory(value=float("nan"), log_value=float("nan"))

    # -- per layer ---------------------------------------------------------------------------------------------
    def mode(self, k: int) -> str:
        """drop: rule on (α+β)²WM⁻¹Wᵀ (p ≥ 0); schur: rule on (β−α)²WM⁻¹Wᵀ (admissible for any p);
        backtrack (αβ < 0 only): rule on (α+β)²WM⁻¹Wᵀ, then Λ ← 0.7Λ until S and M certify (theory §5)."""
        return "drop" if self.slopes[k].p >= 0 else self.neg_mode

    def gram(self, k: int, coef: float, R: torch.Tensor | None = None, normalise: bool = False
             ) -> tuple[torch.Tensor, float]:
        """(coef · W_k X^{-1} W_k^T [/ its max diagonal if normalise], the divisor) from chol(X) = R.

        y = R^{-1}W_kᵀ is solved from the right, yᵀRᵀ = W_k (measured ~25 % faster than the left solve in MKL at
        n = 1000; the same numbers to rounding), and comes out in the layout syrk reads without a copy.
        """
        if R is None and k == 0:  # M_0 = I: no solve (saves n_0²·n_1 for wide inputs such as images)
            y = self.W[0].T.clone()
        else:
            y = torch.linalg.solve_triangular((self.R if R is None else R).mT, self.W[k], upper=True, left=False).mT
        if normalise:
            g, divs = normalised_gram(y, coef, k)
            return g, divs[0]
        return sym_gram(y, coef), 1.0

    def layer_gram(self) -> tuple[torch.Tensor, float]:
        """The normalised Γ̂_k the rules see (max diagonal 1) and its normalisation d."""
        k = self.k
        s = self.slopes[k]
        coef = (s.beta - s.alpha) ** 2 if self.mode(k) == "schur" else (s.alpha + s.beta) ** 2
        return self.gram(k, coef, normalise=True)

    @property
    def M(self) -> torch.Tensor:
        """The current (shifted) M̄_{k-1} = D^{-1} C D^{-1}, formed only when the p-term needs it."""
        inv = 1.0 / self.D
        return self.C * torch.outer(inv, inv)

    def finish(self, lam: torch.Tensor, g: torch.Tensor, d: float, keep_p: bool | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """M̄_k (shifted, certified) and its Cholesky factor for multipliers λ̄ (normalised units)."""
        k = self.k
        s = self.slopes[k]
        keep = self.keep_p if keep_p is None else keep_p
        if s.p < 0:
            keep = True  # required for αβ < 0
        if keep and s.p != 0:
            if not bool(((lam > 0) & torch.isfinite(lam)).all()):  # (form_m checks them on the other paths)
                raise CertificationError(f"layer {k + 1}: multipliers must be finite and positive")
            w = self.W[k]
            smat = sym(self.M + (2 * s.p / d) * (w.T * lam[None, :]) @ w)
            _, rs = checked_cholesky(smat, f"S_{k} (layer {k + 1})")
            gs, _ = self.gram(k, 4 * s.m ** 2 / d, R=rs)
        elif self.mode(k) == "drop" or s.p == 0:
            gs = g
        else:
            raise CertificationError(f"layer {k + 1}: αβ < 0 requires the p-term")
        return form_m(lam, gs, f"M_{k + 1} (layer {k + 1})")

    def commit(self, lam: torch.Tensor, d: float, mr: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
               margin: float, choice: str) -> None:
        self.C, self.D, self.R = mr
        log_lam = torch.log(lam).cpu().numpy() + self.log_mu - math.log(d)
        self.log_mu -= math.log(d)
        self.traj.log_lambdas.append(log_lam)
        self.traj.margins.append(margin)
        self.traj.choices.append(choice)
        self.k += 1

    def step_with(self, choose: Callable[[LayerCache], tuple[torch.Tensor, float, str]]) -> None:
        """One layer: Γ̂_k, Λ_k = choose(Γ̂_k), certify; on a failed check halve Λ (theory §5 backtracking)."""
        self.check()
        g, d = self.layer_gram()
        lam, margin, name = choose(LayerCache(g))
        lam, mr = self.finish_backtracking(lam, g, d)
        self.commit(lam, d, mr, margin, name)

    def finish_backtracking(self, lam: torch.Tensor, g: torch.Tensor, d: float
                            ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """`finish`, shrinking Λ on a failed check (theory §5 backtracking): (the Λ that certified, M̄_k)."""
        for _ in range(MAX_BACKTRACK):
            try:
                return lam, self.finish(lam, g, d)
            except CertificationError:
                # always admissible in the limit: S → M ≻ 0 and 2Λ^{-1} − Γ̂ grows as Λ shrinks
                lam = (0.7 if self.mode(self.k) == "backtrack" else 0.5) * lam
                self.traj.backtracks += 1
        raise CertificationError(f"layer {self.k + 1}: no admissible multiplier after backtracking")

    def final(self) -> Trajectory:
        """L̂ = sqrt(λ_max(W_L M_{L-1}^{-1} W_L^T)), rounded up by the eigvalsh error bound."""
        self.check()
        w = self.W[-1]
        y = torch.linalg.solve_triangular(self.R, w.T, upper=False)
        if y.shape[1] == 1:
            lam = float(torch.sum(y * y))
        else:
            small = y.T @ y if y.shape[1] <= y.shape[0] else y @ y.T
            lam = float(torch.linalg.eigvalsh(sym(small))[-1])
        n = min(y.shape)
        lam *= 1.0 + 4 * (n + 1) * EPS
        if not (lam > 0 and math.isfinite(lam)):
            log_v = -math.inf if lam == 0 else math.nan
        else:
            log_v = 0.5 * (math.log(lam) - self.log_mu)
        self.traj.log_value = log_v
        self.traj.value = math.exp(log_v) if math.isfinite(log_v) or log_v == -math.inf else math.nan
        if not math.isfinite(self.traj.value):
            raise CertificationError(f"final value not finite (log value {log_v})")
        return self.traj

    @property
    def hidden(self) -> int:
        return len(self.W) - 1


# ---------------------------------------------------------------------------------------------------- drivers
def _zero_layer(net: MLP) -> bool:
    return any(not np.any(w) for w in net.weights)


def _zero_traj(net: MLP) -> Trajectory:
    return Trajectory(value=0.0, log_value=-math.inf,
                      log_lambdas=[np.zeros(w.shape[0]) for w in net.weights[:-1]], choices=["zero-layer"])


def run_rule(net: MLP, rule: Rule | Sequence[Rule], *, device: torch.device | str = "cpu", keep_p: bool = True,
             check: Callable[[], None] | None = None, neg_mode: str = "schur") -> Trajectory:
    """One certified trajectory with a fixed rule (or one rule per hidden layer)."""
    if _zero_layer(net):
        return _zero_traj(net)
    rec = Recursion(net, device, keep_p=keep_p, check=check, neg_mode=neg_mode)
    rules = [rule] * rec.hidden if isinstance(rule, Rule) else list(rule)
    for r in rules:
        r.validate()

    for k in range(rec.hidden):
        r = rules[k]
        rec.step_with(lambda cache, r=r: (*r(cache), r.name))
    return rec.final()


def certify_log(net: MLP, log_lambdas: Sequence[np.ndarray], *, device: torch.device | str = "cpu",
                check: Callable[[], None] | None = None) -> Trajectory:
    """Recompute the bound for given true-scale multipliers log Λ_k, keeping the p-term; raise if not certified."""
    rec = Recursion(net, device, keep_p=True, check=check)
    if len(log_lambdas) != rec.hidden:
        raise CertificationError(f"need {rec.hidden} multiplier vectors, got {len(log_lambdas)}")
    for k, ll in enumerate(log_lambdas):
        ll = np.asarray(ll, dtype=np.float64).reshape(-1)
        if ll.shape[0] != rec.W[k].shape[0]:
            raise CertificationError(f"layer {k + 1}: {ll.shape[0]} multipliers for {rec.W[k].shape[0]} neurons")
        if not np.all(np.isfinite(ll)):
            raise CertificationError(f"layer {k + 1}: multipliers must be finite and positive")
        rec.check()
        g, d = rec.layer_gram()
        lam = torch.as_tensor(np.exp(ll - rec.log_mu + math.log(d)), dtype=torch.float64, device=rec.device)
        mr = rec.finish(lam, g, d)
        rec.commit(lam, d, mr, float("nan"), "given")
    return rec.final()


def certify(net: MLP, lambdas: list[np.ndarray]) -> float:
    """Certified L̂ for raw diagonal multipliers Λ_1..Λ_{L-1} in theory §2's normalisation, or CertificationError.

    M_0 = I, S_{k-1} = M_{k-1} + 2p W_kᵀΛ_kW_k, Γ̂_k = (α+β)² W_k S_{k-1}^{-1} W_kᵀ, M_k = 2Λ_k − Λ_kΓ̂_kΛ_k,
    L̂ = sqrt(λ_max(W_L M_{L-1}^{-1} W_Lᵀ)). The p-term is kept (valid for p > 0, required for p < 0). Every
    S_{k-1} and M_k must pass a Cholesky check with relative margin τ(n); an SDP solver's T_k/ρ goes in here.
    """
    logs = []
    for k, lam in enumerate(lambdas):
        lam = np.asarray(lam, dtype=np.float64).reshape(-1)
        if lam.size == 0 or not np.all(lam > 0) or not np.all(np.isfinite(lam)):
            raise CertificationError(f"layer {k + 1}: multipliers must be finite and strictly positive")
        logs.append(np.log(lam))
    return certify_log(net, logs).value


def _form_m_batch(lams: torch.Tensor, g: torch.Tensor
                  ) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None], torch.Tensor]:
    """`form_m` for K candidate multiplier vectors at once (lams: K×n; g: n×n, or K×n×n for one Γ̂ each): one
    batched Cholesky instead of K calls.

    Why: greedy mixing compares several rules per layer; on the small layers of typical MLPs the per-call overhead
    of K separate factorisations is most of its cost. Entry i is None where candidate i fails the check. Same
    numbers as `form_m` (the same elementwise arithmetic and one LAPACK potrf per matrix). Also returns the K×n×n
    batch of factors the entries view, so the scoring need not stack them again.
    """
    n = g.shape[-1]
    k = lams.shape[0]
    diag_a = 2 / lams - torch.diagonal(g, dim1=-2, dim2=-1)
    ok = ((diag_a > 0) & torch.isfinite(diag_a)).all(dim=1)  # a failed row turns only its own matrix into NaN
    t = tau(n)
    c = g.neg().expand(k, n, n).clone() if g.dim() == 2 else g.neg()
    c.diagonal(dim1=1, dim2=2).copy_(diag_a).mul_(1.0 - t)
    r, info = torch.linalg.cholesky_ex(c)
    r.mul_(lams[:, :, None])
    good = (ok & (info == 0)).tolist()
    inv = 1.0 / lams
    return [(c[i], inv[i], r[i]) if good[i] else None for i in range(k)], r


def form_m_batch(lams: torch.Tensor, g: torch.Tensor
                 ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
    """`form_m` for K candidate multiplier vectors at once (see `_form_m_batch`)."""
    return _form_m_batch(lams, g)[0]


SQUARING_MAX_OUT = 40  # above this the o³ squarings cost more than the thin power steps' calls
DENSE_PROBE_NUMEL = 100 * 100  # below this, two thin triangular solves per power step cost more than one full one
LOCKSTEP_MAX_N = 128  # above this the two lanes of run_greedy_beside make their own calls (measured: 1000-wide)
BATCH_BYTES = 256 * 2**20  # candidate batches above this (K·n²·8 bytes, several temporaries) run one by one


def run_greedy(net: MLP, candidates: Sequence[Rule], *, device: torch.device | str = "cpu", keep_p: bool = True,
               check: Callable[[], None] | None = None, power_iters: int = 4, full_every: int = 4,
               top_k: int = 2) -> Trajectory:
    """Per-layer greedy mixing (theory §5): keep the candidate minimising the look-ahead λ_max(W_{k+1}M_k^{-1}W_{k+1}ᵀ).

    Candidates are compared with p dropped (p ≥ 0) by a Rayleigh–Ritz estimate of the look-ahead on one shared probe
    block (exact at the output layer); only the chosen one is finished with the p-term, and every committed M_k
    passed its Cholesky check, so the returned value is what certify() gives for the chosen sequence. For p ≥ 0
    the candidates of a layer are factorised and scored as one batch (`form_m_batch`).
    """
    return _greedy(net, candidates, None, device=device, keep_p=keep_p, check=check, power_iters=power_iters,
                   full_every=full_every, top_k=top_k)[0]


def run_greedy_beside(net: MLP, candidates: Sequence[Rule], companion: Rule, *, device: torch.device | str = "cpu",
                      check: Callable[[], None] | None = None, **kw: int) -> tuple[Trajectory, Trajectory]:
    """(greedy trajectory, `run_rule(net, companion, keep_p=False)`) computed in lockstep; needs every αβ ≥ 0.

    Why: sh-combined needs ECLipsE-Fast = SN(1) and the greedy mix; on small layers both are bound by per-call
    overhead, so on layers up to LOCKSTEP_MAX_N wide the two recursions share one triangular solve, Gram product
    and Cholesky call per layer (measured: sh-combined 3.6x -> 2.9x the cost of ECLipsE-Fast alone). The
    companion's numbers are run_rule's: the same arithmetic, the same backtracking.
    """
    if any(a.p < 0 for a in net.activations):
        raise ValueError("run_greedy_beside needs αβ ≥ 0 at every activation (one Λ rule mode for both lanes)")
    greedy, lane = _greedy(net, candidates, companion, device=device, keep_p=True, check=check, **kw)
    assert lane is not None
    return greedy, lane


def _grams(recs: list[Recursion]) -> list[tuple[torch.Tensor, float]]:
    """`layer_gram` of several recursions over the same net at the same layer, as one batched solve and product."""
    k = recs[0].k
    if k == 0:  # M_0 = I in every lane: one Γ̂ (never modified in place downstream)
        return [recs[0].layer_gram()] * len(recs)
    s = recs[0].slopes[k]
    coef = (s.alpha + s.beta) ** 2  # every lane in mode "drop" (αβ ≥ 0)
    y = torch.linalg.solve_triangular(torch.stack([r.R for r in recs]), recs[0].W[k].T, upper=False)
    g, divs = normalised_gram(y, coef, k)
    return [(g[i], divs[i]) for i in range(len(recs))]


def _greedy(net: MLP, candidates: Sequence[Rule], companion: Rule | None, *, device: torch.device | str,
            keep_p: bool, check: Callable[[], None] | None, power_iters: int = 4, full_every: int = 4,
            top_k: int = 2) -> tuple[Trajectory, Trajectory | None]:
    if _zero_layer(net):
        return _zero_traj(net), (None if companion is None else _zero_traj(net))
    for r in [*candidates, *([companion] if companion else [])]:
        r.validate()
    rec = Recursion(net, device, keep_p=keep_p, check=check)
    lane = None if companion is None else Recursion(net, device, keep_p=False, check=check)
    gen = torch.Generator(device="cpu").manual_seed(0)
    ranking = list(range(len(candidates)))  # candidate indices, best first, from the last full evaluation
    for k in range(rec.hidden):
        rec.check()
        n = rec.W[k].shape[0]
        # small layers: both lanes in one batched solve/product/Cholesky (call overhead dominates there); large
        # layers: batching only adds copies, so the lane runs its own calls
        lockstep = lane is not None and n <= LOCKSTEP_MAX_N
        if lockstep:
            (g, d), lane_gram = _grams([rec, lane])
        else:
            g, d = rec.layer_gram()
            # M_0 = I in both lanes: one Γ̂ (and one λ_max) for the first layer
            lane_gram = None if lane is None else (g, d) if k == 0 else lane.layer_gram()
        cache = LayerCache(g)
        lane_cache = None if lane_gram is None else cache if lane_gram[0] is g else LayerCache(lane_gram[0])
        w_next = rec.W[k + 1]
        exact = k + 1 == rec.hidden or w_next.shape[0] <= 8
        plain_p = rec.slopes[k].p == 0 or rec.mode(k) == "schur" or not keep_p
        # winners are sticky across layers: evaluate every candidate on every `full_every`-th layer (and the
        # output layer), otherwise only the leaders of the last full evaluation (the candidate set's cost ~halves)
        full = exact or k % full_every == 0 or len(candidates) <= top_k
        order = ranking if full else ranking[:top_k]
        rules = [candidates[i] for i in order]
        proposals = [r(cache) for r in rules]
        lane_prop = companion(lane_cache) if companion is not None and lane_cache is not None else None
        lane_mr = None
        r_batch: torch.Tensor | None = None
        batched = rec.slopes[k].p >= 0 and (len(rules) + 1) * n * n * 8 <= BATCH_BYTES
        if batched:
            # p ≥ 0: every candidate is compared with the p-term dropped, i.e. on M = 2Λ − ΛΓ̂Λ of this Γ̂
            lams = [lam for lam, _ in proposals]
            if lockstep and lane_prop is not None and lane_cache is not None:
                gs = torch.stack([g] * len(rules) + [lane_cache.g])
                finished, r_batch = _form_m_batch(torch.stack([*lams, lane_prop[0]]), gs)
                lane_mr = finished.pop()
            else:
                finished, r_batch = _form_m_batch(torch.stack(lams), g)
        else:
            finished = []
            for lam, _ in proposals:
                try:
                    finished.append(rec.finish(lam, g, d, keep_p=False if rec.slopes[k].p > 0 else None))
                except CertificationError:
                    finished.append(None)
        live = [j for j, mr in enumerate(finished) if mr is not None]
        if not live:
            raise CertificationError(f"layer {k + 1}: no candidate rule certified")
        if len(live) == 1 and not full:
            scores = [0.0]  # nothing to compare: no probe
        else:
            # the live factors as one batch: a view of the candidate batch when every candidate certified
            live_rs = (r_batch[: len(rules)] if r_batch is not None and len(live) == len(rules)
                       else torch.stack([finished[j][2] for j in live]))
            if exact:
                scores = _lookahead_exact(live_rs, w_next)
            else:  # probe block: a few power steps with the first certified candidate
                block = _power_block(finished[live[0]][2], w_next, power_iters, gen)
                scores = _rayleigh_ritz(live_rs, w_next, block)
        by_index = {order[j]: s for j, s in zip(live, scores, strict=True)}
        if full:
            ranking = sorted(by_index, key=by_index.__getitem__) + [i for i in ranking if i not in by_index]
        j = live[min(range(len(live)), key=scores.__getitem__)]
        lam, margin = proposals[j]
        mr = finished[j]
        if not plain_p:  # re-finish the winner with the p-term
            mr = rec.finish(lam, g, d)
        elif batched:
            mr = tuple(x.clone() for x in mr)  # not views into the candidate batch: free it
        rec.commit(lam, d, mr, margin, rules[j].name)
        if lane is not None and lane_prop is not None and lane_gram is not None and companion is not None:
            lam_l, margin_l = lane_prop
            g_l, d_l = lane_gram
            if lane_mr is None:  # not in the batch, or failed its check there: run_rule's finish and backtracking
                lam_l, lane_mr = lane.finish_backtracking(lam_l, g_l, d_l)
            else:
                lane_mr = tuple(x.clone() for x in lane_mr)
            lane.commit(lam_l, d_l, lane_mr, margin_l, companion.name)
    return rec.final(), (None if lane is None else lane.final())


def _lookahead_exact(rs: torch.Tensor, w: torch.Tensor) -> list[float]:
    """Exact λ_max(W M^{-1} Wᵀ) for each candidate's chol(M) (rs: K×n×n)."""
    y = torch.linalg.solve_triangular(rs, w.T, upper=False)
    return torch.linalg.eigvalsh(y.mT @ y)[:, -1].tolist()


def _apply(r: torch.Tensor, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """W M^{-1} Wᵀ v with chol(M) = r."""
    u = torch.linalg.solve_triangular(r, w.T @ v, upper=False)
    return w @ torch.linalg.solve_triangular(r.T, u, upper=True)


def _power_block(r: torch.Tensor, w: torch.Tensor, iters: int, gen: torch.Generator, size: int = 4) -> torch.Tensor:
    """An orthonormal block near the top eigenvectors of H = W M^{-1} Wᵀ: `iters` block power steps, one QR at the
    end (the column space does not depend on how the steps are normalised)."""
    v = torch.randn(w.shape[0], min(size, w.shape[0]), generator=gen, dtype=torch.float64).to(r.device)
    if w.numel() > DENSE_PROBE_NUMEL:
        step: Callable[[torch.Tensor], torch.Tensor] = lambda x: _apply(r, w, x)  # noqa: E731 - two thin solves
    else:  # small layers: one solve for B = R^{-1}Wᵀ, then H = BᵀB by matmuls
        b = torch.linalg.solve_triangular(r, w.T, upper=False)
        if w.shape[0] <= SQUARING_MAX_OUT:  # tiny: H^iters by repeated squaring, the fewest calls
            return torch.linalg.qr(_matrix_power(b.T @ b, iters) @ v)[0]
        step = lambda x: b.T @ (b @ x)  # noqa: E731
    for _ in range(iters):
        v = step(v)
        v = v / torch.linalg.vector_norm(v, dim=0, keepdim=True)
    return torch.linalg.qr(v)[0]


def _matrix_power(h: torch.Tensor, e: int) -> torch.Tensor:
    """(h/‖h‖₁)^e by repeated squaring (|eigenvalues| ≤ 1 after the scaling: the powers cannot overflow)."""
    h = h / torch.linalg.matrix_norm(h, ord=1).clamp_min(1e-300)
    p = torch.eye(h.shape[0], dtype=h.dtype, device=h.device) if e == 0 else None
    while e:
        if e & 1:
            p = h if p is None else p @ h
        e >>= 1
        if e:
            h = h @ h
    assert p is not None
    return p


def _rayleigh_ritz(rs: torch.Tensor, w: torch.Tensor, v: torch.Tensor) -> list[float]:
    """max Ritz value of W M^{-1} Wᵀ on the orthonormal block v for each candidate's chol(M) (rs: K×n×n; an
    estimate used only to compare candidates)."""
    u = torch.linalg.solve_triangular(rs, w.T @ v, upper=False)
    return torch.linalg.eigvalsh(u.mT @ u)[:, -1].tolist()


def naive_lower_log(net: MLP, device: torch.device | str = "cpu", iters: int = 3) -> float:
    """log of a cheap *lower* estimate of the naive bound (power iteration: ‖Wv‖/‖v‖ ≤ ‖W‖ for any v).

    Why: sh-combined must never exceed naive; when its best trajectory is already below this estimate the exact
    naive bound (one eigen-solve per layer, as costly as ECLipsE-Fast itself) is not needed. Layers of one shape
    are iterated as one batch (the hidden layers of most MLPs share a shape) unless they are large: there the
    stacked copy costs more than the calls (50×1000: a 392 MB copy, ~0.7 s), so each layer is iterated in place.
    The estimate only decides whether exact naive is computed, never a value.
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    log_v = sum(math.log(a.gain) if a.gain > 0 else -math.inf for a in net.activations)
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for w in net.weights:
        groups.setdefault(tuple(w.shape), []).append(w)
    for (n_out, n_in), ws in groups.items():
        v = torch.randn(len(ws), n_in, 1, generator=gen, dtype=torch.float64).to(device)
        if n_out * n_in > NAIVE_STACK_MAX_NUMEL:
            for w, x in zip(ws, v, strict=True):
                log_s = _power_log_norm(torch.as_tensor(w, dtype=torch.float64, device=device), x, iters)
                if log_s == -math.inf:
                    return -math.inf
                log_v += log_s
            continue
        t = torch.as_tensor(np.stack(ws), dtype=torch.float64, device=device)
        for _ in range(iters):
            v = t.mT @ (t @ v)
            v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True)
        s = torch.linalg.vector_norm(t @ v, dim=(1, 2))
        if not bool(torch.all(s > 0)):
            return -math.inf
        log_v += float(torch.log(s).sum())
    return log_v


NAIVE_STACK_MAX_NUMEL = 256 * 256  # larger layers are power-iterated one by one (no stacked copy)


def _power_log_norm(t: torch.Tensor, v: torch.Tensor, iters: int) -> float:
    """log ‖t v_k‖ after k power steps from v (≤ log ‖t‖ for any v; −∞ when it vanishes)."""
    for _ in range(iters):
        v = t.mT @ (t @ v)
        v = v / torch.linalg.vector_norm(v)
    s = float(torch.linalg.vector_norm(t @ v))
    return math.log(s) if s > 0 else -math.inf


def naive_value(net: MLP, device: torch.device | str = "cpu") -> tuple[float, float]:
    """(∏‖W_k‖₂ · ∏ gain_k, its log): spectral norms from singular values (exact to rounding), product in logs."""
    log_v = 0.0
    for w in net.weights:
        t = torch.as_tensor(w, dtype=torch.float64, device=device)
        s2 = lmax_upper(sym_gram(t.T if t.shape[0] <= t.shape[1] else t, 1.0))  # the smaller of t tᵀ, tᵀt
        if s2 <= 0:
            return 0.0, -math.inf
        log_v += 0.5 * math.log(s2)
    for a in net.activations:
        if a.gain == 0:
            return 0.0, -math.inf
        log_v += math.log(a.gain)
    return math.exp(log_v), log_v
