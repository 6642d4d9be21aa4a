"""Certified operator norms of convolutions, and the frequency grids the Fourier recursion runs on.

Why a lifted grid: a zero-padded convolution of an n-pixel map equals, on the interior, the circular
convolution on any grid N >= n + padding (no wrap-around reaches the support). The circular operator is
block-diagonalised by the unitary DFT: per frequency w it is the c_out x c_in matrix
``W(w) = sum_a K[:, :, a] exp(2 pi i w.(a*d - p)/N)``. Its norm is max_w sigma_max(W(w)) - exact for
circular padding and an upper bound for zero padding (the zero-padded operator is a restriction of it).
Stride s (subsampling after the circular conv) folds s^2 frequencies together (the aliasing sum):
``||C_s||^2 = max_w' lambda_max((1/s^2) sum_j W(w'+jN/s) W(w'+jN/s)^*)``.

Real weights give Hermitian-symmetric symbols, X(-w) = conj(X(w)), so a Grid stores only the half spectrum
(last axis 0..N/2, as rfftn does); alias sums and expansions between grids fetch the mirrored frequencies
with a conjugation.

Certification of lambda_max (never power iteration alone): a batched power iteration gives an estimate tau,
then a batched Cholesky of tau*I - X at every frequency must succeed (else tau grows); success proves
lambda_max(X(w)) <= tau up to the Cholesky backward error, which we cover by a relative inflation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

CDTYPE = torch.complex128
# inflation covering rounding in the Cholesky certificate (relative, times the matrix size)
ROUND_REL = 4 * float(np.finfo(np.float64).eps)


class Grid:
    """A periodic spatial grid (N_1, ..., N_d); () is a plain vector (one frequency). Stores half spectra."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        self.dims = tuple(int(d) for d in dims)
        self.half = self.dims[:-1] + (self.dims[-1] // 2 + 1,) if self.dims else ()
        self.F = int(np.prod(self.half)) if self.dims else 1
        self.full = int(np.prod(self.dims)) if self.dims else 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Grid) and self.dims == other.dims

    def __hash__(self) -> int:
        return hash(self.dims)

    def __repr__(self) -> str:
        return f"Grid{self.dims}"

    def finer_or_equal(self, other: Grid) -> bool:
        if not other.dims:
            return True
        if not self.dims:
            return False
        return all(a % b == 0 for a, b in zip(self.dims, other.dims, strict=True))


def finer(a: Grid, b: Grid) -> Grid:
    if a.finer_or_equal(b):
        return a
    if b.finer_or_equal(a):
        return b
    raise ValueError(f"incompatible grids {a} and {b}")


def _canon(g: Grid, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored index and conjugation flag of full-grid frequencies w (shape (..., d))."""
    N = np.array(g.dims)
    w = np.mod(w, N)
    last = w[..., -1]
    conj = last > g.dims[-1] // 2
    wc = np.where(conj[..., None], np.mod(-w, N), w)
    idx = np.ravel_multi_index(tuple(np.moveaxis(wc, -1, 0)), g.half)
    return idx, conj


def _stored_freqs(g: Grid) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(h) for h in g.half], indexing="ij"), -1).reshape(-1, len(g.dims))


@lru_cache(maxsize=256)
def _alias_np(fine: tuple[int, ...], coarse: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    gf = Grid(fine)
    if not coarse:  # every full-grid frequency folds onto the single one
        w = np.stack(np.meshgrid(*[np.arange(n) for n in fine], indexing="ij"), -1).reshape(-1, len(fine))
        idx, conj = _canon(gf, w)
        return idx[:, None], conj[:, None]
    gc = Grid(coarse)
    r = [f // c for f, c in zip(fine, coarse, strict=True)]
    wc = _stored_freqs(gc)  # (Fc, d)
    js = np.stack(np.meshgrid(*[np.arange(x) for x in r], indexing="ij"), -1).reshape(-1, len(r))  # (S, d)
    w = wc[None, :, :] + js[:, None, :] * np.array(coarse)[None, None, :]
    return _canon(gf, w)


@lru_cache(maxsize=256)
def _expand_np(coarse: tuple[int, ...], fine: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    gf = Grid(fine)
    wf = _stored_freqs(gf)
    if not coarse:
        return np.zeros(len(wf), dtype=np.int64), np.zeros(len(wf), dtype=bool)
    return _canon(Grid(coarse), wf)


def down(x: torch.Tensor, fine: Grid, coarse: Grid) -> torch.Tensor:
    """Alias sum: fold a per-frequency array on `fine` onto `coarse` (sum over the frequencies aliasing there)."""
    if fine == coarse:
        return x
    S = fine.full // coarse.full
    if x.shape[0] == 1:  # flat: the same matrix at every frequency
        return x * S
    idx, conj = _alias_np(fine.dims, coarse.dims)
    y = x[torch.as_tensor(idx, device=x.device)]  # (S, Fc, a, b)
    if conj.any():
        c = torch.as_tensor(conj, device=x.device)
        y[c] = y[c].conj()
    return y.sum(0)


def alias_stack(x: torch.Tensor, fine: Grid, coarse: Grid) -> torch.Tensor:
    """(F_fine, a, b) -> (F_coarse, a, S*b): the S alias blocks side by side, so that
    stack(X) @ stack(Y)^* = down(X @ Y^*) without forming the fine-grid product."""
    if fine == coarse:
        return x
    S = fine.full // coarse.full
    if x.shape[0] == 1:
        return x.expand(1, *x.shape[1:]).repeat(1, 1, S)
    idx, conj = _alias_np(fine.dims, coarse.dims)
    y = x[torch.as_tensor(idx, device=x.device)]  # (S, Fc, a, b)
    if conj.any():
        c = torch.as_tensor(conj, device=x.device)
        y[c] = y[c].conj()
    S_, Fc, a, b = y.shape
    return y.permute(1, 2, 0, 3).reshape(Fc, a, S_ * b)


def up(x: torch.Tensor, coarse: Grid, fine: Grid) -> torch.Tensor:
    """Expand a per-frequency array on `coarse` to `fine` (each fine frequency reads its coarse alias)."""
    if fine == coarse or x.shape[0] == 1:
        return x
    idx, conj = _expand_np(coarse.dims, fine.dims)
    y = x[torch.as_tensor(idx, device=x.device)]
    if conj.any():
        c = torch.as_tensor(conj, device=x.device)
        y[c] = y[c].conj()
    return y


# ---------------------------------------------------------------------------------------------------------
# symbols
# ---------------------------------------------------------------------------------------------------------
class Symbol:
    """A translation-invariant linear operator on a grid: dense (F|1, co, ci) or diagonal (F|1, c) per frequency.

    `stride` subsamples the output (output grid = input grid / stride); the 1/sqrt(prod stride) factor of the
    unitary aliasing sum is applied by the caller.
    """

    def __init__(self, arr: torch.Tensor, grid: Grid, diag: bool, stride: tuple[int, ...], co: int, ci: int) -> None:
        self.arr = arr
        self.grid = grid
        self.diag = diag
        self.stride = stride
        self.co = co
        self.ci = ci

    @property
    def flat(self) -> bool:
        return self.arr.shape[0] == 1

    def on(self, g: Grid) -> Symbol:
        if g == self.grid or self.flat:
            return self
        a = self.arr
        a2 = up(a[..., None] if self.diag else a, self.grid, g)
        return Symbol(a2[..., 0] if self.diag else a2, g, self.diag, self.stride, self.co, self.ci)

    def left(self, x: torch.Tensor) -> torch.Tensor:
        """A(w) @ x(w)."""
        return self.arr[..., :, None] * x if self.diag else self.arr @ x

    def right_h(self, x: torch.Tensor) -> torch.Tensor:
        """x(w) @ A(w)^*."""
        return x * self.arr.conj()[..., None, :] if self.diag else x @ self.arr.mH


def conv_symbol(w: torch.Tensor, grid: Grid, stride: tuple[int, ...], padding: tuple[int, ...],
                dilation: tuple[int, ...], groups: int, device: torch.device, dtype: torch.dtype = CDTYPE) -> Symbol:
    """The per-frequency symbol of a (grouped, dilated, strided, zero-padded) convolution on `grid`."""
    w = w.to(torch.float64)
    co, cig = w.shape[:2]
    ci = cig * groups
    k = w.shape[2:]
    d = len(k)
    if all(kk == 1 for kk in k) and all(p == 0 for p in padding) and groups == 1:
        return Symbol(w.reshape(1, co, ci).to(device=device, dtype=dtype), grid, False, stride, co, ci)
    # W(w) = sum_taps K[..., a] exp(-2 pi i w.m_a / N) with m_a = p - a*d: one (F x taps) @ (taps x co*ci) product
    taps = np.stack(np.meshgrid(*[np.arange(kx) for kx in k], indexing="ij"), -1).reshape(-1, d)  # (T, d)
    m = np.array(padding)[None, :] - taps * np.array(dilation)[None, :]
    wf = np.stack(np.meshgrid(*[np.arange(h) for h in grid.half], indexing="ij"), -1).reshape(-1, d)  # (F, d)
    theta = -2 * np.pi * ((wf[:, None, :] * m[None, :, :]) / np.array(grid.dims)[None, None, :]).sum(-1)
    E = torch.as_tensor(np.exp(1j * theta), dtype=dtype, device=device)  # (F, T)
    depthwise = groups == ci and co == ci
    if depthwise:
        kk = w[:, 0].reshape(co, -1).T.to(device=device, dtype=dtype)  # (T, c)
        return Symbol(E @ kk, grid, True, stride, co, ci)
    if groups == 1:
        kd = w
    else:  # block-diagonal dense kernel
        kd = torch.zeros((co, ci, *k), dtype=torch.float64)
        og = co // groups
        for gi in range(groups):
            kd[gi * og:(gi + 1) * og, gi * cig:(gi + 1) * cig] = w[gi * og:(gi + 1) * og]
    kk = kd.reshape(co * ci, -1).T.to(device=device, dtype=dtype)  # (T, co*ci)
    arr = (E @ kk).reshape(grid.F, co, ci)
    return Symbol(arr, grid, False, stride, co, ci)


# ---------------------------------------------------------------------------------------------------------
# certified lambda_max
# ---------------------------------------------------------------------------------------------------------
def _chunks(F: int, c: int, budget: int = 1 << 26) -> int:
    return max(1, min(F, budget // max(1, c * c)))


def power_vectors(x: torch.Tensor, iters: int, seed: int = 0) -> torch.Tensor:
    """Unit vectors (F, c, 1) after `iters` power steps on blocks x (F, c, c), from a seeded start; no gradient."""
    x = x.detach()  # a choice or a certificate, never a path for gradients
    g = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(x.shape[0], x.shape[1], 1, generator=g, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    v = v + 0.1

    def unit(v: torch.Tensor) -> torch.Tensor:
        n = torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True)
        return v / n.clamp_min(torch.finfo(n.dtype).tiny)

    for _ in range(iters):
        v = x @ unit(v)
    return unit(v)


def power_estimate(x: torch.Tensor, iters: int = 30, seed: int = 0) -> torch.Tensor:
    """Per-frequency lambda_max estimate of Hermitian PSD blocks (a LOWER estimate: never certified alone)."""
    x = x.detach()
    if iters <= 0:
        return torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    v = power_vectors(x, iters - 1, seed)
    return (v.mH @ (x @ v)).real.reshape(x.shape[0])


def lmax_estimate(x: torch.Tensor, iters: int = 8) -> float:
    """max_w lambda_max estimate (power iteration, at least the largest diagonal entry): chooses multipliers."""
    x = x.detach()
    F, c, _ = x.shape
    est = float(x.diagonal(dim1=-2, dim2=-1).real.max())
    step = _chunks(F, c)
    for i in range(0, F, step):
        est = max(est, float(power_estimate(x[i:i + step], iters).max()))
    return est


def lmax_upper(x: torch.Tensor, iters: int = 30, check_deadline: object = None) -> float:
    """A certified upper bound on max_w lambda_max(x(w)) for Hermitian PSD blocks x (F, c, c)."""
    x = x.detach()
    F, c, _ = x.shape
    if c == 1:
        return float(x.real.reshape(-1).max()) * (1 + ROUND_REL * 4)
    diag_max = float(x.diagonal(dim1=-2, dim2=-1).real.max())
    if diag_max <= 0:
        return 0.0
    if F == 1 and x.is_complex():  # a vector's block is real up to rounding: bound it in real arithmetic (4x less)
        im = float(torch.linalg.matrix_norm(x.imag[0]))  # lambda_max(Re X + i Im X) <= lambda_max(Re X) + ||Im X||_F
        if im <= 1e-9 * diag_max:
            return lmax_upper(x.real.contiguous(), iters, check_deadline) + im * (1 + ROUND_REL * 4)
    est = 0.0
    step = _chunks(F, c)
    for i in range(0, F, step):
        est = max(est, float(power_estimate(x[i:i + step], iters).max()))
    tau = max(est, diag_max) * (1 + 1e-6)
    eye = torch.eye(c, dtype=x.dtype, device=x.device)
    todo = torch.arange(F, device=x.device)
    for it in range(200):
        bad = []
        for i in range(0, len(todo), step):
            sel = todo[i:i + step]
            _, info = torch.linalg.cholesky_ex(tau * eye - x[sel])
            bad.append(sel[info != 0])
            if callable(check_deadline):
                check_deadline()
        todo = torch.cat(bad) if bad else todo[:0]
        if len(todo) == 0:
            return tau * (1 + ROUND_REL * c)
        if it == 0:  # the power estimate fell short on these blocks: their exact top eigenvalue is the next guess
            exact = max(float(torch.linalg.eigvalsh(x[todo[i:i + step]]).max()) for i in range(0, len(todo), step))
            tau = max(tau, exact) * (1 + 1e-9)
        else:  # rounding: grow gently, then by 1% steps
            tau *= 1 + min(0.01, 1e-8 * 10 ** it)
    raise ArithmeticError("could not certify lambda_max")


# ---------------------------------------------------------------------------------------------------------
# the operator norms of graph nodes live in opnorms.py (Gram symbols from the kernel autocorrelation, certified
# by Lanczos plus one Cholesky pass); importers that still read them from this module get them from there
# ---------------------------------------------------------------------------------------------------------
_MOVED = ("conv_norm", "spectral_norm_matrix", "maxpool_lipschitz", "avgpool_norm_bound")


def __getattr__(name: str) -> object:
    if name in _MOVED:
        from . import opnorms

        return getattr(opnorms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
