"""Batched Cholesky factorisation with the inverse factor, built from batched matrix products.

Why: the engine needs, at every frequency, a certificate that M = 2 Lambda - Lambda Gamma Lambda is positive
definite (a Cholesky factorisation that succeeds) and the inverse factor L^{-1}. LAPACK's batched small-matrix
kernels are slow on a CPU (batched complex Cholesky of 64..256 blocks runs at a fraction of batched GEMM), and
the inverse via a triangular solve against the identity costs a full n^3 where n^3/3 is enough. The recursion
below splits M = [[A, B^*], [B, C]]:

    L11 = chol(A),  L21 = B L11^{-*},  S = C - L21 L21^*,  L22 = chol(S),
    L^{-1} = [[L11^{-1}, 0], [-L22^{-1} L21 L11^{-1}, L22^{-1}]]

so all but the leaves (n <= `leaf`, factored by LAPACK with its pivot check) are batched GEMMs, and the work is
2/3 n^3 instead of 4/3 n^3. In exact arithmetic M is positive definite iff A and its Schur complement S are, so
the recursion succeeds exactly when one Cholesky of M would: a leaf whose LAPACK pivot fails (info != 0) makes
the whole factorisation fail (None), never NaN or a partial result. Only the lower triangle of M is read, as
LAPACK does.
"""

from __future__ import annotations

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

LEAF = 16  # leaves factored by LAPACK; above, GEMMs (resnet18: factor phase 17 s at 16, 32 s at 32, 2 threads)


def _leaf(M: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
    L, info = torch.linalg.cholesky_ex(M)
    if bool((info != 0).any()):
        return None
    n = M.shape[-1]
    eye = torch.eye(n, dtype=M.dtype, device=M.device).expand(M.shape[:-2] + (n, n))
    out.copy_(torch.linalg.solve_triangular(L, eye, upper=False))
    return L.diagonal(dim1=-2, dim2=-1).real


def _rec(M: torch.Tensor, out: torch.Tensor, leaf: int) -> torch.Tensor | None:
    """Write L^{-1} into `out` (same shape as M, zeroed above the diagonal); return diag(L) or None."""
    n = M.shape[-1]
    if n <= leaf:
        return _leaf(M, out)
    k = (n // 2 + leaf - 1) // leaf * leaf if n > 2 * leaf else n // 2  # leaf-aligned split
    d1 = _rec(M[..., :k, :k], out[..., :k, :k], leaf)
    if d1 is None:
        return None
    l11i = out[..., :k, :k]
    l21 = M[..., k:, :k] @ l11i.mH
    s = M[..., k:, k:] - l21 @ l21.mH
    d2 = _rec(s, out[..., k:, k:], leaf)
    if d2 is None:
        return None
    out[..., k:, :k] = -(out[..., k:, k:] @ (l21 @ l11i))
    return torch.cat([d1, d2], dim=-1)


def chol_inverse(M: torch.Tensor, leaf: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(L^{-1}, diag(L)) of the Cholesky factor of each Hermitian block of M (..., n, n); (None, None) if any
    block is not positive definite (some leaf pivot fails). Not for autograd (writes into a buffer)."""
    out = torch.zeros_like(M)
    d = _rec(M, out, max(1, leaf or LEAF))
    if d is None:
        return None, None
    return out, d


class FlopCounter(TorchDispatchMode):
    """Counts the real flops of the dense linear algebra run under it (products, Cholesky, triangular solves):
    the engine's own measure of its work, so a run can report GFLOP/s against the machine's GEMM rate.
    A complex multiply-add is 8 real flops, a real one 2. Elementwise work is not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in _PRODUCTS:
            a, b = (args[0], args[1]) if name in ("mm", "bmm") else (args[1], args[2])
            batch = math.prod(a.shape[:-2]) if a.dim() > 2 else 1
            self.flops += _fma(a) * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]
        elif name == "linalg_cholesky_ex":
            a = args[0]
            self.flops += _fma(a) * math.prod(a.shape[:-2]) * a.shape[-1] ** 3 / 3
        elif name == "linalg_solve_triangular":
            a, b = args[0], args[1]
            self.flops += _fma(a) * math.prod(b.shape[:-2]) * a.shape[-1] ** 2 * b.shape[-1] / 2
        return out


_PRODUCTS = frozenset({"mm", "bmm", "addmm", "baddbmm"})


def _fma(x: torch.Tensor) -> float:
    return 8.0 if x.is_complex() else 2.0


# ---------------------------------------------------------------------------------------------------------
# structured products: only the work their structure needs (a triangle, a Hermitian half), as batched GEMMs
# ---------------------------------------------------------------------------------------------------------
PROD_LEAF = 128  # below this, one plain GEMM (a split would cost more in calls and copies than it saves)


def herk(x: torch.Tensor) -> torch.Tensor:
    """x @ x^* (Hermitian) from its lower half: half the multiply-adds of the plain product."""
    m = x.shape[-2]
    if m <= PROD_LEAF:
        return x @ x.mH
    k = m // 2
    x1, x2 = x[..., :k, :], x[..., k:, :]
    out = x.new_empty(x.shape[:-2] + (m, m))
    out[..., :k, :k] = herk(x1)
    low = x2 @ x1.mH
    out[..., k:, :k] = low
    out[..., :k, k:] = low.mH
    out[..., k:, k:] = herk(x2)
    return out


def tri_gram(r: torch.Tensor) -> torch.Tensor:
    """r^* @ r for lower-triangular r (the storage P = R^* R of a factored activation): a third of the work."""
    n = r.shape[-1]
    if n <= PROD_LEAF:
        return r.mH @ r
    k = n // 2
    r21, r22 = r[..., k:, :k], r[..., k:, k:]
    out = r.new_empty(r.shape)
    out[..., :k, :k] = tri_gram(r[..., :k, :k]) + r21.mH @ r21
    low = tri_mm(r22.mH, r21, upper=True)  # r22^* r21, r22^* upper triangular
    out[..., k:, :k] = low
    out[..., :k, k:] = low.mH
    out[..., k:, k:] = tri_gram(r22)
    return out


def tri_mm(t: torch.Tensor, x: torch.Tensor, upper: bool = False) -> torch.Tensor:
    """t @ x for triangular t (lower, or upper with upper=True): half the work of the plain product."""
    n = t.shape[-1]
    if n <= PROD_LEAF:
        return t @ x
    k = n // 2
    x1, x2 = x[..., :k, :], x[..., k:, :]
    out = x.new_empty(_batch(t, x) + (n, x.shape[-1]))
    if upper:  # [[T11, T12], [0, T22]] [x1; x2] = [T11 x1 + T12 x2; T22 x2]
        out[..., :k, :] = tri_mm(t[..., :k, :k], x1, True) + t[..., :k, k:] @ x2
        out[..., k:, :] = tri_mm(t[..., k:, k:], x2, True)
    else:  # [[T11, 0], [T21, T22]] [x1; x2] = [T11 x1; T21 x1 + T22 x2]
        out[..., :k, :] = tri_mm(t[..., :k, :k], x1)
        out[..., k:, :] = t[..., k:, :k] @ x1 + tri_mm(t[..., k:, k:], x2)
    return out


def mm_tri(x: torch.Tensor, t: torch.Tensor, upper: bool = False) -> torch.Tensor:
    """x @ t for triangular t (lower, or upper with upper=True): half the work of the plain product."""
    n = t.shape[-1]
    if n <= PROD_LEAF:
        return x @ t
    k = n // 2
    x1, x2 = x[..., :, :k], x[..., :, k:]
    out = x.new_empty(_batch(x, t) + (x.shape[-2], n))
    if upper:  # [x1 x2] [[T11, T12], [0, T22]] = [x1 T11, x1 T12 + x2 T22]
        out[..., :, :k] = mm_tri(x1, t[..., :k, :k], True)
        out[..., :, k:] = x1 @ t[..., :k, k:] + mm_tri(x2, t[..., k:, k:], True)
    else:  # [x1 x2] [[T11, 0], [T21, T22]] = [x1 T11 + x2 T21, x2 T22]
        out[..., :, :k] = mm_tri(x1, t[..., :k, :k]) + x2 @ t[..., k:, :k]
        out[..., :, k:] = mm_tri(x2, t[..., k:, k:])
    return out


def _batch(a: torch.Tensor, b: torch.Tensor) -> tuple[int, ...]:
    return tuple(torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
