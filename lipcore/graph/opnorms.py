"""Certified operator norms of graph nodes (the naive bound, every variant's naive fallback, the engine's restarts).

Why this is fast. A zero-padded convolution's norm is bounded by the lifted circular operator's (see norms.py):
``||C||^2 = max_w lambda_max(X(w))`` with X the per-frequency Gram symbol on the output grid. Instead of forming
the symbol at every frequency and multiplying it by its adjoint (F GEMMs of c^3), X is assembled from the
kernel's spatial autocorrelation ``G_d = sum_{a-b=d} K_a K_b^T`` (one real GEMM over the tap pairs, about
taps^2 c^3 flops in all) and a (frequencies x offsets) exponential sum. Stride folds into the same formula:
the alias sum over the s^2 frequencies that fold together keeps only the offsets divisible by s, read on the
coarse grid. Conjugate frequencies (X(-w) = conj X(w)) are certified once.

Certification of max_w lambda_max(X(w)) (never an eigen-estimate alone): short single-precision Lanczos runs rank
the blocks, a long float64 run on the top few gives the level tau (1e-9 above their top eigenvalue); every block
then gets one float64 Cholesky of tau I - X. Blocks that fail (a block the ranking missed) raise tau (a long
Lanczos run on them, then their exact top eigenvalue) and are checked again. No eigendecomposition of the
c x c blocks is needed unless Lanczos cannot resolve a top eigenvalue cluster. Floating point is covered
explicitly: the Gram symbol's rounding (``_gamma(m) * taps * ||K||_F^2``, a bound on the spectral norm of the
entrywise error), the Cholesky backward error (Demmel/Rump: success on A proves lambda_min(A) >=
-gamma_{c+1} tr(A)), and an outward rounding of the square root.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import norms as cn

if TYPE_CHECKING:
    from collections.abc import Callable

    from .trace import Node

U = float(np.finfo(np.float64).eps) / 2  # unit roundoff of float64
TIGHT = 1e-9  # the certificate's level sits this far (relative) above the best eigenvalue estimate
TOP_BLOCKS = 2  # blocks whose top eigenvalue is refined in float64 (ranked by the short runs)
LANCZOS_STEPS = 8  # steps of the ranking runs (a block the ranking misses fails the check and is refined)
LONG_STEPS = 32  # steps of the float64 runs on the top blocks
EXACT_BELOW = 48  # blocks this small get their top eigenvalue exactly (eigvalsh) instead of Lanczos
EXACT_TOP_BELOW = 256  # the top-ranked blocks up to this size too (above it: a long float64 Lanczos run)


def _gamma(m: int) -> float:
    """Higham's gamma_m = m u / (1 - m u): the relative error of an m-term floating-point sum of products."""
    return m * U / (1 - m * U)


def _chunk(B: int, c: int, budget: int = 1 << 25) -> int:
    return max(1, min(B, budget // max(1, c * c)))


# ---------------------------------------------------------------------------------------------------------
# certified lambda_max over a batch of Hermitian PSD blocks
# ---------------------------------------------------------------------------------------------------------
def _start(B: int, c: int, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = (torch.randn(B, c, generator=gen, dtype=torch.float64) + 0.1).to(device=device, dtype=dtype)
    return v / torch.linalg.vector_norm(v, dim=1, keepdim=True)


def _tridiag_max(alpha: torch.Tensor, beta: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
    """Top eigenvalue of the Lanczos tridiagonal matrices, clipped to ||x||_F (lambda_max never exceeds it)."""
    T = torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1) + torch.diag_embed(beta[:, :-1], -1)
    top = torch.linalg.eigvalsh(T)[:, -1]
    return top if x is None else torch.minimum(top, torch.linalg.matrix_norm(x).double())


def rough_ritz(x: torch.Tensor, steps: int = LANCZOS_STEPS, seed: int = 0) -> torch.Tensor:
    """Per-block largest Ritz value of plain Lanczos (three-term recurrence, no reorthogonalisation) in single
    precision: one batched matvec per step, for ranking blocks only. Without reorthogonalisation Ritz values
    still lie within O(eps ||x||) of the spectrum's hull (Paige), so the ranking is sound; (B,) float64.
    Each block is scaled by a power of two near its largest diagonal entry first: single precision neither
    overflows (a vacuous LayerNorm bound's blocks reach 1e53) nor underflows, and the scale comes back exactly."""
    B, c, _ = x.shape
    k = max(1, min(steps, c))
    lo = torch.complex64 if x.is_complex() else torch.float32
    top = x.detach().diagonal(dim1=-2, dim2=-1).real.amax(-1).clamp_min(1e-300)
    scale = torch.exp2(torch.round(torch.log2(top)))
    xs = (x.detach() / scale[:, None, None]).to(lo)
    v = _start(B, c, lo, x.device, seed)
    prev = torch.zeros_like(v)
    alpha = torch.zeros(B, k, dtype=torch.float64, device=x.device)
    beta = torch.zeros(B, k, dtype=torch.float64, device=x.device)
    b = torch.zeros(B, dtype=lo, device=x.device)
    for j in range(k):
        w = torch.einsum("bij,bj->bi", xs, v)
        a = (v.conj() * w).sum(1).real
        w = w - a[:, None] * v - b[:, None] * prev
        nb = torch.linalg.vector_norm(w, dim=1)
        alpha[:, j], beta[:, j] = a, nb
        prev, b = v, nb.to(lo)
        v = torch.where(nb[:, None] > 1e-30, w / nb.clamp_min(1e-30)[:, None], torch.zeros_like(w))
    return _tridiag_max(alpha, beta, None) * scale


def ritz_max(x: torch.Tensor, steps: int = LONG_STEPS, seed: int = 0) -> torch.Tensor:
    """Per-block largest Ritz value of `steps` Lanczos steps in x's own precision with full
    reorthogonalisation (classical Gram-Schmidt twice): for the few top blocks, accurate to ~1e-14 once
    converged. An estimate that only chooses the certificate's level; (B,) float64."""
    B, c, _ = x.shape
    k = max(1, min(steps, c))
    x = x.detach()
    v = _start(B, c, x.dtype, x.device, seed)
    V = torch.zeros(B, k, c, dtype=x.dtype, device=x.device)
    alpha = torch.zeros(B, k, dtype=torch.float64, device=x.device)
    beta = torch.zeros(B, k, dtype=torch.float64, device=x.device)
    for j in range(k):
        V[:, j] = v
        w = (x @ v[:, :, None])[:, :, 0]
        alpha[:, j] = (v.conj() * w).sum(1).real
        basis = V[:, :j + 1]
        for _ in range(2):  # elementwise projections: far cheaper than tiny batched GEMMs
            w = w - ((basis.conj() * w[:, None, :]).sum(-1)[:, :, None] * basis).sum(1)
        nb = torch.linalg.vector_norm(w, dim=1)
        beta[:, j] = nb
        v = torch.where(nb[:, None] > 1e-300, w / nb.clamp_min(1e-300)[:, None], torch.zeros_like(w))
    return _tridiag_max(alpha, beta, x)


def _level(x: torch.Tensor, step: int, rank_all: bool = False) -> float:
    """A level just above max_b lambda_max(x[b]) as far as estimates can tell: exact eigenvalues for small
    blocks; otherwise the blocks are ranked by their trace (free), the leading sixth by short single-precision
    Lanczos runs, and a long float64 run on the top few (where the maximum is) gives their top eigenvalue to
    ~1e-14. A block the ranking misses fails the check and is refined there."""
    B, c, _ = x.shape
    if c <= EXACT_BELOW:
        return max(float(torch.linalg.eigvalsh(x[i:i + step])[:, -1].max()) for i in range(0, B, step))
    tr = x.diagonal(dim1=-2, dim2=-1).real.sum(-1)
    cand = torch.topk(tr, B if rank_all else min(B, max(8 * TOP_BLOCKS, B // 6))).indices
    rough = torch.cat([rough_ritz(x[cand[i:i + step]]) for i in range(0, len(cand), step)])
    top = cand[torch.topk(rough, min(len(cand), TOP_BLOCKS)).indices]
    if c <= EXACT_TOP_BELOW:  # a few eigvalsh of this size cost less than a long Lanczos run's steps
        return float(torch.linalg.eigvalsh(x[top])[:, -1].max())
    return float(ritz_max(x[top]).max())


def lmax_certified(x: torch.Tensor, check: Callable[[], None] | None = None, consume: bool = False) -> float:
    """A certified upper bound on max_b lambda_max(x[b]) for Hermitian PSD blocks x (B, c, c), real or complex,
    at most ~1e-9 relative above the exact maximum.

    Covers the Cholesky backward error of the check itself; the caller adds the error of computing x.
    consume=True hands x over: the first check overwrites it with tau I - x in place instead of a copy (the
    blocks that fail are rebuilt exactly: the off-diagonal negation is exact and the diagonal is kept)."""
    x = x.detach()
    B, c, _ = x.shape
    dg = x.diagonal(dim1=-2, dim2=-1).real
    if float(dg.max()) <= 0:  # PSD with a zero diagonal is zero
        return 0.0
    if c == 1:
        return float(dg.max()) * (1 + 2 * U)
    step = _chunk(B, c)
    tau = max(_level(x, step), float(dg.max())) * (1 + TIGHT)
    if consume:
        dg = dg.clone()
    todo = torch.arange(B, device=x.device)
    for it in range(64):
        bad = []
        for i in range(0, len(todo), step):
            sel = todo[i:i + step]
            if consume and it == 0:  # tau I - x written over x itself
                a = x[i:i + step].neg_()
            else:  # tau I - x, with one copy
                a = -(x[i:i + step] if it == 0 else x[sel])
            a.diagonal(dim1=-2, dim2=-1).add_(tau)
            _, info = torch.linalg.cholesky_ex(a)
            bad.append(sel[info != 0])
            if check is not None:
                check()
        todo = torch.cat(bad) if bad else todo[:0]
        if consume and it == 0 and len(todo):  # rebuild the failing blocks of x from tau I - x, exactly
            x = x[todo].neg_()
            x.diagonal(dim1=-2, dim2=-1).copy_(dg[todo])
            todo = torch.arange(len(todo), device=x.device)
        if len(todo) == 0:
            # Cholesky success on A = fl(tau I - x) proves lambda_min(A) >= -gamma_{c+1}/(1-gamma_{c+1}) tr(A)
            # with tr(A) <= c tau; forming A rounds its diagonal by at most u tau
            # (x8: complex arithmetic and blocked LAPACK kernels carry larger constants than the textbook gamma)
            return tau * (1 + U + 8 * _gamma(c + 1) * c) + 1e-300
        tau = _raise_level(x, todo, tau, it, step)
    raise ArithmeticError("could not certify lambda_max")


def _raise_level(x: torch.Tensor, todo: torch.Tensor, tau: float, it: int, step: int) -> float:
    """The next level after the blocks `todo` failed at tau (blocks the ranking missed, or a top eigenvalue
    cluster Lanczos has not resolved): the same estimate on them alone, then their exact top eigenvalue, then
    gentle growth (rounding at the exact eigenvalue)."""
    if it <= 1 and x.shape[-1] > EXACT_BELOW:  # the failing blocks are few: every one gets a short run
        return max(tau, _level(x[todo], step, rank_all=True) * (1 + TIGHT))
    if it <= 3:
        top = max(float(torch.linalg.eigvalsh(x[todo[i:i + step]])[:, -1].max()) for i in range(0, len(todo), step))
        return max(tau, top * (1 + TIGHT))
    return tau * (1 + min(0.01, TIGHT * 10 ** (it - 2)))


# ---------------------------------------------------------------------------------------------------------
# Gram symbols of convolutions
# ---------------------------------------------------------------------------------------------------------
def _unique_freqs(dims: tuple[int, ...]) -> np.ndarray:
    """One frequency of every conjugate pair {w, -w} on the grid `dims`, taken from the stored half spectrum
    (last coordinate <= N/2, as rfftn); () -> the single zero frequency."""
    if not dims:
        return np.zeros((1, 0), dtype=np.int64)
    N = np.array(dims)
    w = cn._stored_freqs(cn.Grid(dims))
    neg = np.mod(-w, N)
    in_half = neg[:, -1] <= dims[-1] // 2
    keep = ~in_half | (np.ravel_multi_index(tuple(w.T), dims) <= np.ravel_multi_index(tuple(neg.T), dims))
    return w[keep]


def autocorr_gram(k: torch.Tensor, dil: tuple[int, ...], period: tuple[int, ...], coarse: tuple[int, ...],
                  device: torch.device) -> tuple[torch.Tensor, float]:
    """Per-group, per-frequency Gram symbol ``X_g(w) = sum_{a,b: (b-a) dil = 0 mod period} K_a K_b^T
    exp(-2 pi i w.((b-a) dil / period) / coarse)`` for kernels k (g, r, q, *taps), on one frequency of every
    conjugate pair of the grid `coarse`. Returns (X (g*F, r, r), an absolute bound on its rounding error in
    spectral norm). This is the alias-summed W(w) W(w)^* of the lifted circular convolution (module docstring)."""
    g, r, q = k.shape[:3]
    taps_shape = tuple(k.shape[3:])
    d = len(taps_shape)
    T = int(np.prod(taps_shape))
    kf = k.reshape(g, r, q, T).to(device=device, dtype=torch.float64)
    taps = np.stack(np.meshgrid(*[np.arange(t) for t in taps_shape], indexing="ij"), -1).reshape(T, d)
    pos = taps * np.array(dil)[None, :]
    per = np.array(period)
    resid = np.ravel_multi_index(tuple(np.mod(pos, per).T), tuple(period)) if d else np.zeros(T, dtype=np.int64)
    offsets: dict[tuple[int, ...], int] = {}
    plan = []  # per residue class: its taps and, per ordered pair (a <= b in class order), the offset ids
    for cls in np.unique(resid):
        members = np.flatnonzero(resid == cls)
        ids = [[offsets.setdefault(tuple(int(x) for x in (pos[bb] - pos[aa]) // per), len(offsets))
                for bb in members] for aa in members]
        plan.append((members, ids))
    D = len(offsets)
    G = torch.zeros(D, g, r, r, dtype=torch.float64, device=device)
    for members, ids in plan:  # G_d += K_a K_b^T over the pairs; one GEMM per tap against the later ones
        kc = kf[:, :, :, torch.as_tensor(members, device=device)].permute(0, 3, 1, 2)  # (g, M, r, q)
        M = len(members)
        for i in range(M):
            blk = (kc[:, i] @ kc[:, i:].reshape(g, (M - i) * r, q).mT).reshape(g, r, M - i, r).permute(2, 0, 1, 3)
            G.index_add_(0, torch.as_tensor(ids[i][i:], device=device), blk)
            if M - i > 1:  # K_b K_a^T = (K_a K_b^T)^T
                G.index_add_(0, torch.as_tensor([ids[j][i] for j in range(i + 1, M)], device=device),
                             blk[1:].transpose(-1, -2))
    if D == 1 or not coarse:  # one frequency, or only the zero offset: one real matrix per group
        X = G.sum(0)
    else:
        wf = _unique_freqs(coarse)
        delta = np.array(list(offsets), dtype=np.float64).reshape(D, d)
        theta = -2 * np.pi * (wf[:, None, :] * delta[None, :, :] / np.array(coarse)[None, None, :]).sum(-1)
        # one complex GEMM writes X in place (a product with G's zero imaginary part is exact: the rounding
        # is that of the two real sums)
        E = torch.as_tensor(np.exp(1j * theta), dtype=torch.complex128, device=device)  # (F, D)
        Fq = E.shape[0]
        X = (E @ G.reshape(D, -1).to(torch.complex128)).reshape(Fq, g, r, r).transpose(0, 1).reshape(g * Fq, r, r)
    err = _gamma(q * T + D + 8) * T * float((kf ** 2).sum()) * (1 + 1e-6)
    return X, err


def _stack_gram(w: torch.Tensor, N: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...], dl: tuple[int, ...],
                groups: int, coarse: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, float]:
    """The input-side Gram (1/S) B^* B of the alias stack B = [W(w_1) .. W(w_S)] (S ci x S ci blocks): cheaper
    than the output side when S ci is small (a first layer on RGB)."""
    g = cn.Grid(N)
    gy = cn.Grid(coarse)
    sym = cn.conv_symbol(w, g, s, p, dl, groups, device)
    arr = sym.arr if not sym.diag else torch.diag_embed(sym.arr)
    B = cn.alias_stack(arr, g, gy)  # (Fy, co, S*ci) on the half spectrum of the coarse grid
    if coarse:
        wf = _unique_freqs(coarse)
        keep = np.ravel_multi_index(tuple(wf.T), gy.half) if B.shape[0] > 1 else np.zeros(1, dtype=np.int64)
        B = B[torch.as_tensor(keep, device=B.device)]
    S = g.full / gy.full
    X = (B.mH @ B) / S
    T = int(np.prod(w.shape[2:]))
    err = _gamma(B.shape[1] + T + 8) * T * float((w.double() ** 2).sum()) * (1 + 1e-6)
    return (X + X.mH) / 2, err


def conv_norm(node: Node, w: torch.Tensor | None = None, device: torch.device | None = None) -> float:
    """Certified spectral norm of the zero-padded conv (lifted circular symbol, aliasing sum for stride);
    nan for a conv on a 1x1 "point" map (the caller bounds it as a dense matrix)."""
    a = node.attrs
    w = (a["weight"] if w is None else w).detach().to(torch.float64)
    dev = device or torch.device("cpu")
    k, s, p, dl = tuple(w.shape[2:]), tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"])
    groups = a.get("groups", 1)
    n_in, n_out = node.in_shape[1:], node.shape[1:]
    d = len(k)
    if len(n_in) != d:
        return float("nan")
    need = [max(n_in[i] + p[i], s[i] * (n_out[i] - 1) + (k[i] - 1) * dl[i] - p[i] + 1) for i in range(d)]
    N = tuple(int(math.ceil(need[i] / s[i]) * s[i]) for i in range(d))
    point = all(x == 1 for x in n_out)
    coarse = () if point else tuple(N[i] // s[i] for i in range(d))
    period = N if point else s
    co, cig = w.shape[:2]
    og = co // groups
    S = int(np.prod(period))
    F = len(_unique_freqs(coarse))
    out_cost = F * groups * og ** 3
    in_cost = F * groups * cig ** 3 if S == 1 else F * (S * cig * groups) ** 2 * (S * cig * groups + 3 * co)
    kg = w.reshape(groups, og, cig, *k)
    if out_cost <= in_cost:
        X, err = autocorr_gram(kg, dl, period, coarse, dev)
    elif S == 1:  # stride 1: W^* W has the same spectrum, the autocorrelation of the transposed kernel
        X, err = autocorr_gram(kg.transpose(1, 2), tuple(-x for x in dl), period, coarse, dev)
    else:
        X, err = _stack_gram(w, N, s, p, dl, groups, coarse, dev)
    lam = lmax_certified(X, consume=True) + err
    return math.sqrt(lam) * (1 + 2 * U)


def spectral_norm_matrix(w: torch.Tensor) -> float:
    """Certified ||W||_2 of a dense real matrix (via the smaller Gram matrix, certified in real arithmetic)."""
    w = w.detach().to(torch.float64)
    g = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    err = _gamma(max(w.shape) + 2) * float((w ** 2).sum())  # ||fl(W W^T) - W W^T||_2 <= gamma ||W||_F^2
    return math.sqrt(lmax_certified(((g + g.T) / 2)[None]) + err) * (1 + 2 * U)


def maxpool_lipschitz(node: Node) -> float:
    """sqrt(max number of windows an input pixel belongs to) = sqrt(prod ceil(span/s)) (tight: spike input)."""
    a = node.attrs
    m = 1
    for k, s, d in zip(a["kernel"], a["stride"], a["dilation"], strict=True):
        m *= min(k, math.ceil(((k - 1) * d + 1) / s)) if d > 1 else math.ceil(k / s)
    return math.sqrt(m)


def avgpool_norm_bound(node: Node) -> float:
    """Schur test: ||box sum|| <= sqrt(prod k * prod ceil(k/s)); divided by the smallest divisor used."""
    a = node.attrs
    k, s, p = a["kernel"], a["stride"], a["padding"]
    n_in, n_out = node.in_shape[1:], node.shape[1:]
    if a["divisor"]:
        mind = float(a["divisor"])
    elif a["count_include_pad"]:
        mind = 1.0
        for i in range(len(k)):  # windows may still be clipped at the far end (ceil_mode)
            mind *= min(min(k[i], n_in[i] + 2 * p[i] - s[i] * o) for o in range(n_out[i]))
    else:
        mind = 1.0
        for i in range(len(k)):
            mind *= min(min(s[i] * o - p[i] + k[i], n_in[i]) - max(s[i] * o - p[i], 0) for o in range(n_out[i]))
    box = math.sqrt(float(np.prod(k)) * float(np.prod([math.ceil(kk / ss) for kk, ss in zip(k, s, strict=True)])))
    return box / max(mind, 1.0)
