"""The Fourier storage recursion against the same recursion on dense matrices (small nets).

Circular padding: the per-frequency computation must equal the dense one to rounding (every path: stride 2,
depthwise, 1x1, 5x5, basic and bottleneck residual blocks, Hardswish, average pooling, max-pool restarts).
Zero padding: the lifted bound is sound (>= Jacobian lower bounds, >= the exact norm for linear nets) and
close to the dense zero-padded recursion.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipcore.graph import GraphModel, build_graph
from lipcore.graph import bounds as gb
from lipcore.graph import engine as fourier
from lipcore.graph import norms as cn
from lipcore.variants import Context

torch.set_default_dtype(torch.float32)


# ------------------------------------------------------------------------------------------------ test nets
class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.b1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 6, 5, stride=2, padding=2)
        self.c3 = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.c4 = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = F.hardswish(self.c2(x))
        x = torch.relu(self.c3(x))
        x = torch.relu(self.c4(x))
        return self.fc(x.mean((2, 3)))


class Basic(nn.Module):
    """stem + a downsampling basic block (1x1 stride-2 shortcut) + an identity basic block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.a1 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.a2 = nn.Conv2d(6, 6, 3, padding=1)
        self.sc = nn.Conv2d(4, 6, 1, stride=2)
        self.b1 = nn.Conv2d(6, 6, 3, padding=1)
        self.b2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.sc(x) + self.a2(torch.relu(self.a1(x))))
        x = torch.relu(x + self.b2(torch.relu(self.b1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class BasicLate(nn.Module):
    """timm's order: the strided shortcut is computed after the branch, so in traced order the fine-grid input
    stays live across the coarse activation (fourier.schedule pushes the shortcut first)."""

    def __init__(self, ci: int = 2, co: int = 6, k: int = 3, last_relu: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(ci, ci, 3, padding=1)
        self.a1 = nn.Conv2d(ci, co, k, stride=2, padding=k // 2)
        self.a2 = nn.Conv2d(co, co, 3, padding=1)
        self.sc = nn.Conv2d(ci, co, 1, stride=2)
        self.last_relu = last_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = self.a2(torch.relu(self.a1(x)))
        y = y + self.sc(x)
        return torch.relu(y).mean((2, 3)) if self.last_relu else y


class Bottleneck(nn.Module):
    """max pool restart, bottleneck (1x1 -> 3x3 -> 1x1) with identity shortcut, avg pool, pre-act style add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.r = nn.Conv2d(8, 3, 1)
        self.m = nn.Conv2d(3, 3, 3, padding=1)
        self.e = nn.Conv2d(3, 8, 1)
        self.p = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = F.max_pool2d(x, 2)
        x = torch.relu(x + self.e(torch.relu(self.m(torch.relu(self.r(x))))))
        x = F.avg_pool2d(x, 2)
        y = x + self.p(x)  # plain add, no activation after (pre-activation style)
        x = torch.relu(self.p(y))
        return self.fc(x.mean((2, 3)))


def _nets() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    out = []
    for name, cls, shape in (("chain", Chain, (3, 8, 8)), ("basic", Basic, (2, 8, 8)),
                             ("bottleneck", Bottleneck, (3, 8, 8)), ("basic-late", BasicLate, (2, 8, 8))):
        m = cls().eval()
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn_like(p) * 0.5)
            for mod in m.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.running_mean.uniform_(-1, 1)
                    mod.running_var.uniform_(0.5, 2)
        out.append((name, m, shape))
    return out


# ------------------------------------------------------------------------------------------------ dense reference
def _dense_conv(node, circular: bool) -> torch.Tensor:
    a = node.attrs
    w = a["weight"]
    ci, n = node.in_shape[0], node.in_shape[1:]
    eye = torch.eye(ci * int(np.prod(n)), dtype=torch.float64).reshape(-1, ci, *n)
    p = a["padding"]
    if circular:
        x = F.pad(eye, (p[1], p[1], p[0], p[0]), mode="circular")
        y = F.conv2d(x, w, stride=a["stride"], dilation=a["dilation"], groups=a["groups"])
    else:
        y = F.conv2d(eye, w, stride=a["stride"], padding=p, dilation=a["dilation"], groups=a["groups"])
    return y.reshape(eye.shape[0], -1).T


def _dense_linear_op(node, circular: bool) -> torch.Tensor:
    n_in = int(np.prod(node.in_shape))
    eye = torch.eye(n_in, dtype=torch.float64).reshape(-1, *node.in_shape)
    a = node.attrs
    if node.op == "conv":
        return _dense_conv(node, circular)
    if node.op == "linear":
        return a["weight"]
    if node.op == "scale":
        s = a["scale"]
        if a["channel_dim"] is None:
            return float(s) * torch.eye(n_in, dtype=torch.float64)
        return torch.diag((eye * s.reshape(-1, *([1] * (len(node.in_shape) - 1)))).reshape(n_in, -1).diagonal())
    if node.op == "avgpool":
        y = F.avg_pool2d(eye, a["kernel"], a["stride"], a["padding"])
        return y.reshape(n_in, -1).T
    if node.op == "gap":
        return eye.mean((2, 3)).reshape(n_in, -1).T
    if node.op == "reshape":
        return torch.eye(n_in, dtype=torch.float64)
    raise AssertionError(node.op)


def dense_recursion(g: GraphModel, circular: bool, c: float = 1.0) -> float:
    """The storage recursion with scalar Lambda = c/lambda_max(Gamma) on dense matrices (the reference); an
    activation read only by max pooling (a restart) takes c = 1, the optimum for lambda_max(P_hh)."""
    cons = g.consumers()
    order = {n.name: i for i, n in enumerate(g.nodes)}
    last = {k: max((order[c] for c in v), default=order[k]) for k, v in cons.items()}
    P: dict[tuple[str, str], torch.Tensor] = {}
    live: list[str] = []

    def get(a: str, b: str) -> torch.Tensor:
        return P[(a, b)] if (a, b) in P else P[(b, a)].T

    def push(y: str, terms: list[tuple[str, torch.Tensor]]) -> None:
        for t in list(live):
            P[(y, t)] = sum(A @ get(u, t) for u, A in terms)
        P[(y, y)] = sum(A @ get(u, v) @ B.T for u, A in terms for v, B in terms)
        live.append(y)

    def sector(h: str, v: str, beta: float) -> None:
        gam = beta ** 2 * get(v, v)
        only_pool = bool(cons.get(h)) and all(g.node(x).op == "maxpool" for x in cons[h])
        lam = (1.0 if only_pool else c) / float(torch.linalg.eigvalsh(gam).max())
        G = torch.linalg.inv(2 * lam * torch.eye(len(gam), dtype=torch.float64) - lam ** 2 * gam)
        K = {t: beta * lam * get(t, v) for t in live}
        for t in live:
            for t2 in live:
                P[(t, t2)] = get(t, t2) + K[t] @ G @ K[t2].T
                P.pop((t2, t), None) if t != t2 else None
        for t in live:
            P[(t, h)] = K[t] @ G
        P[(h, h)] = G
        live.append(h)

    for i, n in enumerate(g.nodes):
        if n.op == "input":
            live.append(n.name)
            P[(n.name, n.name)] = torch.eye(int(np.prod(n.shape)), dtype=torch.float64)
        elif n.op == "add":
            c1, c2 = n.attrs["coef"]
            m = int(np.prod(n.shape))
            push(n.name, [(n.inputs[0], c1 * torch.eye(m, dtype=torch.float64)),
                          (n.inputs[1], c2 * torch.eye(m, dtype=torch.float64))])
        elif n.op == "act":
            act = n.attrs["act"]
            if act.alpha >= 0:
                sector(n.name, n.inputs[0], act.beta)
            else:
                sector(n.name + "#", n.inputs[0], act.beta - act.alpha)
                m = int(np.prod(n.shape))
                push(n.name, [(n.inputs[0], act.alpha * torch.eye(m, dtype=torch.float64)),
                              (n.name + "#", torch.eye(m, dtype=torch.float64))])
                live.remove(n.name + "#")
        elif n.op == "maxpool":
            (u,) = n.inputs
            assert live == [u]
            s2 = float(torch.linalg.eigvalsh(get(u, u)).max()) * cn.maxpool_lipschitz(n) ** 2
            P.clear()
            live.clear()
            live.append(n.name)
            P[(n.name, n.name)] = s2 * torch.eye(int(np.prod(n.shape)), dtype=torch.float64)
            continue
        else:
            push(n.name, [(n.inputs[0], _dense_linear_op(n, circular))])
        for u in set(n.inputs):
            if last[u] <= i and u in live:
                live.remove(u)
                for k in [k for k in P if u in k]:
                    del P[k]
    return math.sqrt(float(torch.linalg.eigvalsh(get(g.output, g.output)).max()))


def _lower(m: nn.Module, shape: tuple[int, ...], n: int = 64) -> float:
    """Largest Jacobian spectral norm over random points (a lower bound on the Lipschitz constant)."""
    m = m.double()
    torch.manual_seed(1)
    best = 0.0
    for _ in range(n):
        x = torch.randn(1, *shape, dtype=torch.float64)
        J = torch.autograd.functional.jacobian(lambda z: m(z.reshape(1, *shape)).reshape(-1), x.reshape(-1))
        best = max(best, float(torch.linalg.matrix_norm(J, 2)))
    m.float()
    return best


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("idx", [0, 1, 2, 3])
def test_fourier_equals_dense_circular(idx: int) -> None:
    name, m, shape = _nets()[idx]
    g = build_graph(m, shape, name=name)
    ref = dense_recursion(g, circular=True)

    def exact(gamma: torch.Tensor, grid: cn.Grid) -> float:  # same rule as the reference, uncertified lambda_max
        return 1.0 / float(torch.linalg.eigvalsh(gamma).max())

    val, _ = fourier.run_recursion(g, exact, torch.device("cpu"), circular=True)
    assert val == pytest.approx(ref, rel=2e-6)  # only the final certified lambda_max is inflated (1e-6)
    ref15 = dense_recursion(g, circular=True, c=1.5)

    def exact15(gamma: torch.Tensor, grid: cn.Grid) -> float:
        return 1.5 / float(torch.linalg.eigvalsh(gamma).max())

    val15, _ = fourier.run_recursion(g, exact15, torch.device("cpu"), circular=True)
    assert val15 == pytest.approx(ref15, rel=2e-6)  # SN(1.5), and c = 1 where only a max pool reads (bottleneck)
    cert, _ = fourier.run_recursion(g, gb.rule_spectral(1.0), torch.device("cpu"), circular=True)
    assert cert == pytest.approx(ref, rel=1e-2)  # lambda from an 8-step power estimate: another feasible point


@pytest.mark.parametrize("idx", [0, 1, 2, 3])
def test_zero_padding_lifted_is_sound_and_close(idx: int) -> None:
    name, m, shape = _nets()[idx]
    g = build_graph(m, shape, name=name)
    ctx = Context()
    dense = dense_recursion(g, circular=False)
    val, _ = gb.eclipse_fast(g, ctx)
    nv, _ = gb.naive(g, ctx)
    lb = _lower(m, shape)
    assert lb <= val * (1 + 1e-9)
    assert lb <= dense * (1 + 1e-9)
    assert val <= nv * (1 + 1e-12)
    assert val < 0.9 * nv  # the recursion is a real improvement on these nets
    # lifting loosens mildly at 8x8; the pre-activation add of "bottleneck" is read by a padded conv, which
    # forces a restart (see fourier's docstring), hence the wider band there
    assert 0.5 < val / dense < (4.0 if name == "bottleneck" else 2.0)


def test_schedule_pushes_the_strided_shortcut_first() -> None:
    g = build_graph(_nets()[3][1], (2, 8, 8))
    traced = [n.name for n in g.nodes]
    order = [n.name for n in fourier.schedule(g)]
    assert sorted(order) == sorted(traced) and order != traced
    a1, sc = (next(n.name for n in g.nodes if n.op == "conv" and n.attrs["weight"].shape == w)
              for w in ((6, 2, 3, 3), (6, 2, 1, 1)))
    assert order.index(sc) == order.index(a1) + 1  # the block input dies before the coarse activation
    gb_ = build_graph(_nets()[1][1], (2, 8, 8))  # shortcut already first: traced order kept
    assert [n.name for n in fourier.schedule(gb_)] == [n.name for n in gb_.nodes]


def test_coarse_activation_with_fine_tensors_live_stays_sound(monkeypatch: pytest.MonkeyPatch) -> None:
    """In traced order the fine input x is live across the coarse activation: its update couples aliased
    frequencies. Keeping only the diagonal blocks undercut the exact recursion by 25% on this net (0.746);
    the Cauchy-Schwarz factor keeps the bound above it, and the run says where it was applied."""
    torch.manual_seed(36)
    m = BasicLate(ci=1, co=2, k=1, last_relu=False).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p))
        m.sc.weight.mul_(6)
    g = build_graph(m, (1, 4, 4))
    ref = dense_recursion(g, circular=True)

    def exact(gamma: torch.Tensor, grid: cn.Grid) -> float:
        return 1.0 / float(torch.linalg.eigvalsh(gamma).max())

    val, info = fourier.run_recursion(g, exact, torch.device("cpu"), circular=True)
    assert val == pytest.approx(ref, rel=2e-6) and "alias_inflated" not in info
    monkeypatch.setattr(fourier, "schedule", lambda g: list(g.nodes))
    val_t, info_t = fourier.run_recursion(g, exact, torch.device("cpu"), circular=True)
    assert info_t["alias_inflated"] == [next(n.name for n in g.nodes if n.op == "act" and n.inputs[0] != "conv2d")]
    assert ref * (1 - 1e-9) <= val_t <= 2 * ref


def test_linear_conv_net_exact_norm() -> None:
    """No activation: circular is the exact norm; zero padding is sound (the linear conv output is read by a
    padded conv, so the lifted run restarts there and falls back to the product of norms)."""
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.Conv2d(3, 2, 5, padding=2)).eval()
    g = build_graph(m, (2, 8, 8))
    val, _ = fourier.run_recursion(g, gb.rule_spectral(1.0), torch.device("cpu"))
    d = _dense_conv(g.nodes[2], False) @ _dense_conv(g.nodes[1], False)
    true = float(torch.linalg.matrix_norm(d, 2))
    assert true <= val * (1 + 1e-12)
    # the restart's certified lambda_max sits ~1e-9 above the exact value (opnorms.lmax_certified), as do the norms
    assert val <= cn.conv_norm(g.nodes[1]) * cn.conv_norm(g.nodes[2]) * (1 + 1e-8)
    valc, _ = fourier.run_recursion(g, gb.rule_spectral(1.0), torch.device("cpu"), circular=True)
    dc = _dense_conv(g.nodes[2], True) @ _dense_conv(g.nodes[1], True)
    exact = float(torch.linalg.matrix_norm(dc, 2))
    assert exact * (1 - 1e-12) <= valc <= exact * (1 + 1e-8)


@pytest.mark.parametrize("cfg", [
    dict(k=3, s=1, p=1, g=1), dict(k=3, s=2, p=1, g=1), dict(k=5, s=1, p=2, g=1), dict(k=1, s=1, p=0, g=1),
    dict(k=1, s=2, p=0, g=1), dict(k=3, s=1, p=1, g=4), dict(k=3, s=2, p=1, g=4), dict(k=3, s=1, p=2, g=2, d=2),
])
def test_conv_norm_vs_dense(cfg: dict) -> None:
    torch.manual_seed(5)
    ci = 4
    co = 4 if cfg["g"] > 1 else 3
    conv = nn.Conv2d(ci, co, cfg["k"], stride=cfg["s"], padding=cfg["p"], groups=cfg["g"],
                     dilation=cfg.get("d", 1)).eval()
    g = build_graph(conv, (ci, 9, 9))
    node = g.nodes[1]
    est = cn.conv_norm(node)
    true = float(torch.linalg.matrix_norm(_dense_conv(node, False), 2))
    assert true <= est * (1 + 1e-12)
    assert est <= true * 1.35


def test_lmax_upper_certifies() -> None:
    torch.manual_seed(0)
    a = torch.randn(7, 5, 5, dtype=torch.float64) + 1j * torch.randn(7, 5, 5, dtype=torch.float64)
    x = a @ a.mH
    ub = cn.lmax_upper(x)
    true = float(torch.linalg.eigvalsh(x).max())
    assert true <= ub <= true * (1 + 1e-4)


@pytest.mark.parametrize("idx", [1, 2])
@pytest.mark.parametrize("rule", ["gc", "shift", "sn"])
def test_family_members_sound(rule: str, idx: int) -> None:
    name, m, shape = _nets()[idx]
    g = build_graph(m, shape, name=name)
    r = {"gc": gb.rule_gershgorin(1.5), "shift": gb.rule_shift(1.5), "sn": gb.rule_spectral(1.5)}[rule]
    val, _ = fourier.run_recursion(g, r, torch.device("cpu"))
    assert val >= _lower(m, shape, 16) * (1 - 1e-9)


# ------------------------------------------------------------------------------------------------ factorisation
def _hermitian_batch(gen: torch.Generator, F: int, n: int, dtype: torch.dtype, neg: int = 0) -> torch.Tensor:
    """F Hermitian blocks with eigenvalues in [0.05, 3], the first `neg` of them made indefinite."""
    z = torch.randn(F, n, n, generator=gen, dtype=torch.float64)
    if dtype.is_complex:
        z = torch.complex(z, torch.randn(F, n, n, generator=gen, dtype=torch.float64))
    q, _ = torch.linalg.qr(z.to(dtype))
    ev = 0.05 + 2.95 * torch.rand(F, n, generator=gen, dtype=torch.float64)
    ev[:neg, torch.randint(n, (1,), generator=gen)] = -0.1
    return (q * ev.to(dtype)[:, None, :]) @ q.mH


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("n", [1, 3, 16, 17, 40, 100])
def test_chol_inverse_equals_lapack_and_refuses_indefinite(dtype: torch.dtype, n: int) -> None:
    from lipcore.graph import factor

    gen = torch.Generator().manual_seed(n)
    for leaf in (1, 4, 16):
        M = _hermitian_batch(gen, 6, n, dtype)
        Linv, d = factor.chol_inverse(M, leaf)
        L = torch.linalg.cholesky(M)
        ref = torch.linalg.solve_triangular(L, torch.eye(n, dtype=dtype).expand_as(M), upper=False)
        assert Linv is not None and d is not None
        assert float((Linv - ref).abs().max()) <= 1e-10 * float(ref.abs().max())
        assert torch.allclose(d, L.diagonal(dim1=-2, dim2=-1).real, rtol=1e-12, atol=0)
        assert float(Linv.triu(1).abs().max()) == 0.0  # lower triangular, nothing above the diagonal
        for neg in (1, 6):  # one indefinite block in the batch, or all of them: reported, never a partial result
            Linv, d = factor.chol_inverse(_hermitian_batch(gen, 6, n, dtype, neg=neg), leaf)
            assert Linv is None and d is None


def test_engine_with_a_blocked_factorisation_equals_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaves of 1 channel: every M block of the engine goes through the GEMM recursion; same value as dense."""
    from lipcore.graph import factor

    monkeypatch.setattr(factor, "LEAF", 1)
    name, m, shape = _nets()[3]
    g = build_graph(m, shape, name=name)
    ref = dense_recursion(g, circular=True)

    def exact(gamma: torch.Tensor, grid: cn.Grid) -> float:
        return 1.0 / float(torch.linalg.eigvalsh(gamma).max())

    val, info = fourier.run_recursion(g, exact, torch.device("cpu"), circular=True)
    assert val == pytest.approx(ref, rel=2e-6)
    assert info["flops"] > 0 and set(info["phases"]) >= {"push", "factor", "update"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_graph_variants_on_cuda_match_cpu() -> None:
    """One code path: every graph variant on cuda gives the CPU value (to rounding)."""
    name, m, shape = _nets()[3]
    g = build_graph(m, shape, name=name)
    for fn in (gb.naive, gb.eclipse_fast, gb.sh_spectral, gb.sh_gershgorin, gb.sh_shift):
        cpu, _ = fn(g, Context())
        gpu, _ = fn(g, Context(device=torch.device("cuda")))
        assert gpu == pytest.approx(cpu, rel=1e-7), fn.__name__


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_structured_products_equal_plain_ones(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """herk / tri_gram / tri_mm / mm_tri (the engine's products that skip a triangle or a Hermitian half) equal
    the plain products, at sizes that split unevenly, with broadcast (flat) operands."""
    from lipcore.graph import factor

    monkeypatch.setattr(factor, "PROD_LEAF", 3)
    gen = torch.Generator().manual_seed(7)

    def rnd(*shape: int) -> torch.Tensor:
        x = torch.randn(*shape, generator=gen, dtype=torch.float64)
        return torch.complex(x, torch.randn(*shape, generator=gen, dtype=torch.float64)) if dtype.is_complex else x

    for n, m, nb in ((1, 4, 2), (7, 5, 3), (16, 9, 1), (23, 30, 4)):
        x, L, y, yflat = rnd(nb, n, m), rnd(nb, n, n).tril(), rnd(nb, n, m), rnd(1, m, n)
        for got, want in ((factor.herk(x), x @ x.mH), (factor.tri_gram(L), L.mH @ L),
                          (factor.tri_mm(L, y), L @ y), (factor.tri_mm(L.mH, y, upper=True), L.mH @ y),
                          (factor.mm_tri(y.mH, L), y.mH @ L), (factor.mm_tri(yflat, L.mH, upper=True), yflat @ L.mH)):
            assert got.shape == want.shape
            assert float((got - want).abs().max()) <= 1e-12 * max(1.0, float(want.abs().max()))
