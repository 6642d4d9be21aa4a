"""Certified operator norms (lipcore.graph.opnorms): never below the truth, and within 1e-8 of the lifted exact
norm (the former method: eigvalsh at every frequency)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipcore.graph import build_graph
from lipcore.graph import norms as cn
from lipcore.graph import opnorms as on


def _dense(node) -> torch.Tensor:  # noqa: ANN001
    """The zero-padded conv as an explicit matrix (applied to every basis image)."""
    a = node.attrs
    ci, n = node.in_shape[0], node.in_shape[1:]
    eye = torch.eye(ci * int(np.prod(n)), dtype=torch.float64).reshape(-1, ci, *n)
    lo, hi = a["padding"], a["pad_hi"]
    y = F.conv2d(F.pad(eye, (lo[1], hi[1], lo[0], hi[0])), a["weight"], stride=a["stride"],
                 dilation=a["dilation"], groups=a["groups"])
    return y.reshape(eye.shape[0], -1).T


def _lifted_exact(node) -> float:  # noqa: ANN001
    """The lifted circular norm by the symbol at every frequency and eigvalsh (the former method, exact)."""
    a = node.attrs
    w = a["weight"].double()
    k, s, p, dl = tuple(w.shape[2:]), a["stride"], a["padding"], a["dilation"]
    n_in, n_out = node.in_shape[1:], node.shape[1:]
    need = [max(n_in[i] + p[i], s[i] * (n_out[i] - 1) + (k[i] - 1) * dl[i] - p[i] + 1) for i in range(2)]
    N = tuple(int(np.ceil(need[i] / s[i]) * s[i]) for i in range(2))
    g = cn.Grid(N)
    gy = cn.Grid(()) if all(x == 1 for x in n_out) else cn.Grid(tuple(N[i] // s[i] for i in range(2)))
    sym = cn.conv_symbol(w, g, s, p, dl, a["groups"], torch.device("cpu"))
    arr = torch.diag_embed(sym.arr) if sym.diag else sym.arr
    B = cn.alias_stack(arr, g, gy)
    return float(torch.linalg.eigvalsh(B @ B.mH).max() / (g.full / gy.full)) ** 0.5


CONVS = [  # (k, stride, padding, groups, dilation, ci, co, n)
    (3, 1, 1, 1, 1, 4, 3, 9), (3, 2, 1, 1, 1, 4, 3, 9), (5, 1, 2, 1, 1, 4, 3, 9), (1, 1, 0, 1, 1, 4, 3, 9),
    (1, 2, 0, 1, 1, 4, 3, 9), (3, 1, 1, 4, 1, 4, 4, 9), (3, 2, 1, 4, 1, 4, 4, 9), (3, 1, 2, 2, 2, 4, 4, 9),
    (7, 2, 3, 1, 1, 3, 8, 12), (3, 2, 1, 1, 1, 8, 16, 8), (4, 2, 1, 1, 1, 3, 5, 8), (3, 3, 1, 1, 1, 3, 5, 10),
    (2, 2, 0, 2, 1, 4, 6, 8), (3, 1, 1, 8, 1, 8, 8, 5), (3, 1, 0, 1, 1, 3, 4, 3), (3, 1, 1, 1, 1, 5, 7, 1),
    (3, 2, 0, 1, 1, 4, 4, 7), (3, 1, 1, 2, 1, 4, 8, 6), (3, 2, 1, 4, 1, 4, 8, 7), (3, 1, 1, 3, 1, 3, 6, 7),
    (3, 1, 1, 1, 1, 64, 64, 5), (3, 2, 1, 1, 1, 32, 64, 6), (3, 1, 1, 1, 1, 56, 80, 4),  # the Lanczos path
]


@pytest.mark.parametrize("cfg", CONVS, ids=lambda c: "k{}s{}p{}g{}d{}_{}to{}_n{}".format(*c))
@pytest.mark.parametrize("seed", [0, 1])
def test_conv_norm_certified_and_tight(cfg: tuple[int, ...], seed: int) -> None:
    k, s, p, g, dl, ci, co, n = cfg
    torch.manual_seed(seed)
    conv = nn.Conv2d(ci, co, k, stride=s, padding=p, groups=g, dilation=dl).double().eval()
    node = build_graph(conv, (ci, n, n)).nodes[1]
    v = on.conv_norm(node)
    true = float(torch.linalg.matrix_norm(_dense(node), 2))
    lifted = _lifted_exact(node)
    assert true <= lifted * (1 + 1e-12)
    assert lifted <= v <= lifted * (1 + 1e-8)  # certified above the lifted norm and as tight as it


@pytest.mark.parametrize("c", [5, 40, 64, 130])
@pytest.mark.parametrize("cplx", [False, True])
@pytest.mark.parametrize("kind", ["wishart", "rank-deficient", "clustered-top"])
def test_lmax_certified_bounds_every_block(c: int, cplx: bool, kind: str) -> None:
    gen = torch.Generator().manual_seed(c + 7 * cplx)
    dt = torch.complex128 if cplx else torch.float64
    B = 9
    a = torch.randn(B, c, c if kind != "rank-deficient" else c // 2, generator=gen, dtype=torch.float64).to(dt)
    if cplx:
        a = a + 1j * torch.randn(a.shape, generator=gen, dtype=torch.float64)
    x = a @ a.mH
    if kind == "clustered-top":  # three nearly equal top eigenvalues in every block: slow Lanczos convergence
        q, _ = torch.linalg.qr(torch.randn(B, c, c, generator=gen, dtype=torch.float64).to(dt))
        ev = torch.rand(B, c, generator=gen, dtype=torch.float64)
        ev[:, :3] = torch.tensor([1.0, 1.0 - 1e-7, 1.0 - 2e-7])
        x = (q * ev[:, None, :].to(dt)) @ q.mH
    x = (x + x.mH) / 2
    true = float(torch.linalg.eigvalsh(x).max())
    ub = on.lmax_certified(x)
    assert true <= ub <= true * (1 + 1e-8)
    # handing x over (tau I - x written in place, failing blocks rebuilt) gives the same certificate
    assert on.lmax_certified(x.clone(), consume=True) == ub


@pytest.mark.parametrize("c", [40, 130])
@pytest.mark.parametrize("consume", [False, True])
@pytest.mark.parametrize("low", [0.3, 0.999])
def test_lmax_certified_recovers_from_a_low_first_level(c: int, consume: bool, low: float,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A first level below the truth (a ranking that missed the top block) fails its check and is raised: the
    failing blocks are re-examined (with consume=True rebuilt from tau I - x), never certified too low."""
    gen = torch.Generator().manual_seed(c)
    a = torch.randn(30, c, c, generator=gen, dtype=torch.float64) + 1j * torch.randn(30, c, c, generator=gen,
                                                                                     dtype=torch.float64)
    x = a @ a.mH
    x = (x + x.mH) / 2
    ev = torch.linalg.eigvalsh(x)[:, -1]
    true = float(ev.max())
    level = on._level
    monkeypatch.setattr(on, "_level", lambda xx, step, rank_all=False: low * true if xx.shape[0] == 30
                        else level(xx, step, rank_all))
    ub = on.lmax_certified(x.clone() if consume else x, consume=consume)
    assert true <= ub <= true * (1 + 1e-8)


@pytest.mark.parametrize("shape", [(3, 7), (7, 3), (60, 60), (200, 90), (1, 5)])
def test_spectral_norm_matrix(shape: tuple[int, int]) -> None:
    torch.manual_seed(sum(shape))
    w = torch.randn(*shape, dtype=torch.float64)
    true = float(torch.linalg.matrix_norm(w, 2))
    v = on.spectral_norm_matrix(w)
    assert true <= v <= true * (1 + 1e-8)


def test_moved_names_still_reachable_from_norms() -> None:
    """engine.py reads the node norms from norms.py; they are the opnorms functions."""
    assert cn.conv_norm is on.conv_norm and cn.spectral_norm_matrix is on.spectral_norm_matrix
    with pytest.raises(AttributeError):
        cn.no_such_name  # noqa: B018


@pytest.mark.parametrize("scale", [1e-60, 1e-20, 1.0, 1e45, 1e53, 1e120])
@pytest.mark.parametrize("c", [64, 130])
def test_lmax_certified_at_any_magnitude(scale: float, c: int) -> None:
    """Blocks far outside single precision's range (a vacuous LayerNorm restart carries 1e53) are ranked and
    certified like any others: the result scales with the blocks."""
    gen = torch.Generator().manual_seed(c)
    a = torch.randn(20, c, c, generator=gen, dtype=torch.float64) + 1j * torch.randn(20, c, c, generator=gen,
                                                                                     dtype=torch.float64)
    x = a @ a.mH
    x = (x + x.mH) / 2
    x[3] *= 1.5  # one block on top, several decades of spread below it
    x[7:] *= 1e-6
    true = float(torch.linalg.eigvalsh(x).max())
    ub = on.lmax_certified(x * scale)
    assert true * scale <= ub <= true * scale * (1 + 1e-8)
