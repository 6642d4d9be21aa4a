"""The LipSDP recursion on operator graphs, run per spatial frequency ("storage propagation").

State. After processing a prefix of the graph we hold a quadratic certificate
``||dx||^2 >= dl^T M dl`` over the *live* tensors l (those still consumed later), stored through its
inverse P = M^{-1} (the "storage"), as blocks P_ab between live tensors a, b. Starting point: the input,
P = I. The final bound is L = sqrt(lambda_max(P_yy)) for the output y (sup of ||dy||^2 under dl^T M dl <= 1).

Rules (each one keeps the certificate valid):
* Linear node y = sum_i c_i A_i u_i (conv, BN-folded conv, avg pool, global mean, per-channel scale, residual
  addition, concatenation): y is a deterministic function of live tensors, so the joint storage extends
  exactly by push-forward: P_yt = sum_i c_i A_i P_{u_i t}, P_yy = sum_ij c_i c_j A_i P_{u_i u_j} A_j^*.
* Activation h = phi(v), slope in [0, b]: add the sector inequality sum_i lambda_i dh_i (b dv_i - dh_i) >= 0
  (lambda_i >= 0) to the certificate and minimise over nothing: the joint matrix over (live, h) is
  [[M, -b A^T Lambda], [-b Lambda A, 2 Lambda]] whose inverse is, with Gamma = b^2 P_vv and
  G = (2 Lambda - Lambda Gamma Lambda)^{-1}:  P_hh = G, P_th = b P_tv Lambda G,
  P_tt' += b^2 P_tv Lambda G Lambda P_vt'. Valid for ANY diagonal Lambda > 0 with 2 Lambda - Lambda Gamma Lambda
  > 0 (checked by Cholesky at every frequency). An activation with alpha < 0 (Hardswish, GELU, SiLU, Mish) is
  written exactly as alpha*v + psi(v) with psi in [0, beta - alpha]: a linear node plus a [0, b] activation.
* Dropping a dead tensor = minimising the quadratic form over it = deleting its rows/columns of P.
* Restart (max pooling, LayerNorm, and any node without a structured rule): ||dl||^2 <= sigma^2 ||dx||^2 with
  sigma^2 = sum_t lambda_max(P_tt) (>= lambda_max of the joint P); a node y = op(U) with Lipschitz constant c
  then gives ||d(l', y)||^2 <= f sigma^2 ||dx||^2 (f = max(1, c^2) when all of U dies here, else 1 + c^2), so
  the certificate restarts as P = f sigma^2 I over the new live set. Max pooling breaks the chain this way.

Frequency structure. With one multiplier per channel (the same at every pixel) every operator above is
translation invariant on a periodic grid, so every block P_ab is block-diagonal in the unitary DFT: one
c_a x c_b matrix per frequency (stored on the finer of the two grids; a stride-s map folds s^2 frequencies,
see convnorm). The recursion then runs independently per frequency on c x c blocks, with the scalar
multiplier rules (ECLipsE-Fast, sh-spectral) taking the max over frequencies, and the diagonal rules
(Gershgorin, shift) reading the spatial kernel of Gamma (an inverse FFT). Real weights make every block
Hermitian-symmetric in frequency: only the half spectrum is stored.

Zero padding (lifting). Each map of n pixels is embedded in a grid N >= n + padding of every conv reading it
(and N divisible by the strides that follow). Interior outputs of the circular conv then equal the zero-padded
conv. The post-activation variable is the true map (zero outside the interior): for exterior neurons dh = 0,
so their sector terms vanish whatever the (lifted) pre-activation is, and minimising over all lifted
increments (a superset) keeps the inequality. A *linear* tensor whose exterior may carry wrap-around values
("unclean") is never read by a conv that looks outside the interior: such a read forces a restart first
(which re-embeds the true, clean tensor). Global mean pooling sums the interior only (masked FFT).

Coarse activations. When v lives on a coarser grid than live tensors t, t' (a stride-2 conv output while its
fine input is still live), the exact update P_tt' += b^2 P_tv Lambda G Lambda P_vt' couples every pair of fine
frequencies that alias to the same coarse one: it is not block-diagonal on the fine grid. Keeping only the
diagonal blocks would not be an upper bound. Cauchy-Schwarz over each alias class, (sum_f w_f)(sum_f w_f)^* <=
S sum_f w_f w_f^*, gives one that is: the kept blocks of the pair (t, t') times min(S_t, S_t'), S_t the number of
t-grid frequencies per v-grid frequency (1 when t is on v's grid or coarser: those pairs are exact). `schedule`
orders the graph so that ResNet downsampling blocks never need it (the strided shortcut is pushed before the
branch's activation, so x dies on the fine grid first); the run reports where it was needed.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..errors import CertificationError, Refused
from . import factor, opnorms, ops
from . import norms as cn
from .trace import GraphModel, Node

Rule = Callable[[torch.Tensor, cn.Grid], "float | torch.Tensor"]


@dataclass
class TS:
    """Layout of a live tensor: channel dim, spatial sizes, its grid root and downsampling factor."""

    name: str
    shape: tuple[int, ...]
    chan: int
    root: str
    r: tuple[int, ...]
    clean: bool = True
    point: bool = False  # a vector (no spatial structure left): one frequency
    flat: bool = True  # its storage is the same at every frequency (only 1x1 maps since the last restart)

    @property
    def sdims(self) -> tuple[int, ...]:
        return () if self.point else tuple(i for i in range(len(self.shape)) if i != self.chan)

    @property
    def n(self) -> tuple[int, ...]:
        return tuple(self.shape[i] for i in self.sdims)

    @property
    def c(self) -> int:
        return self.shape[self.chan] if not self.point else int(np.prod(self.shape))


@dataclass
class Stats:
    restarts: list[str] = field(default_factory=list)
    activations: int = 0
    backoffs: int = 0
    flops: float = 0.0
    vacuous: bool = False
    min_margin: float = math.inf
    alias_inflated: list[str] = field(default_factory=list)  # activations whose update took the factor below
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase (see Engine.phase)
    phase_flops: dict[str, float] = field(default_factory=dict)  # counted real flops per phase


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


class Engine:
    """One pass over the graph. `dry=True` only plans layouts, restarts and grid sizes (no arithmetic)."""

    def __init__(self, g: GraphModel, rule: Rule | None, device: torch.device, dry: bool,
                 grids: dict[str, tuple[int, ...]] | None = None, check: Callable[[], None] | None = None,
                 chunk: int = 1 << 25, circular: bool = False, dtype: torch.dtype = cn.CDTYPE) -> None:
        self.g = g
        self.differentiable = False
        self.dtype = dtype  # complex128 for every certified value; complex64 only to tune multipliers (graph_tune)
        self.circular = circular  # test mode: every conv is circular on its own map (grid = map size)
        self.rule = rule
        self.dev = device
        self.dry = dry
        self.grids = grids or {}
        self.req: dict[str, list[int]] = {}
        self.lcm: dict[str, list[int]] = {}
        self.live: dict[str, TS] = {}
        self.P: dict[tuple[str, str], torch.Tensor] = {}
        self.stats = Stats()
        self.nrestart = 0
        self.act_sizes: list[tuple[str, tuple[int, ...], int, bool]] = []  # (root, r, channels) per activation
        self.check = check or (lambda: None)
        self.chunk = chunk
        self.nodes = schedule(g)
        cons = g.consumers()
        self.order = {n.name: i for i, n in enumerate(self.nodes)}
        self.last_use = {k: max((self.order[c] for c in v), default=self.order[k]) for k, v in cons.items()}
        self.last_use[g.output] = len(self.nodes)
        self.cons = cons
        self.i = -1
        self.factor: dict[str, tuple[torch.Tensor, cn.Grid]] = {}  # P_tt = R^* R kept factored (R = L^{-1})
        self.lazy_sigma: dict[str, float] = {}  # certified lambda_max(P_tt) when P_tt is never needed itself
        self._pstack: list[list[float]] = []  # open phases: [start, nested seconds, flops at start, nested flops]
        self.counter = factor.FlopCounter()  # counts while run() runs
        # P_th of an activation h kept as B_t (P_th = B_t^* R_h, R_h = factor[h]): the conv reading h then
        # needs Z = A R_h^* only (P_yt = Z B_t, P_yy = Z Z^*), never P_th itself
        self.lazy: dict[tuple[str, str], torch.Tensor] = {}
        self.fast = True  # structured products (triangles, Hermitian halves); plain ones when differentiable

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase exclusively (a nested phase's seconds count for it alone): where a run's time goes.
        Phases: symbols (conv symbols), push (storage push-forwards), rule (choosing multipliers), factor
        (Cholesky + inverse factor of every M block), update (the activation's storage updates), restart
        (certified lambda_max of restarts and of the output)."""
        if self.dry:
            yield
            return
        self._sync()
        self._pstack.append([time.perf_counter(), 0.0, self.counter.flops, 0.0])
        try:
            yield
        finally:
            self._sync()
            t0, inner, f0, finner = self._pstack.pop()
            dt, df = time.perf_counter() - t0, self.counter.flops - f0
            self.stats.phases[name] = self.stats.phases.get(name, 0.0) + dt - inner
            self.stats.phase_flops[name] = self.stats.phase_flops.get(name, 0.0) + df - finner
            if self._pstack:
                self._pstack[-1][1] += dt
                self._pstack[-1][3] += df

    def _sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def dying(self, t: str) -> bool:
        """t is consumed for the last time by the node being processed (its cross storage is never read)."""
        return self.last_use.get(t, -1) <= self.i and t != self.g.output

    # ---------------------------------------------------------------------------------------------- grids
    def grid(self, t: TS) -> cn.Grid:
        if t.point or not t.sdims:
            return cn.Grid(())
        if self.dry:
            return cn.Grid(tuple(max(1, x) for x in t.n))  # placeholder
        N = self.grids[t.root]
        return cn.Grid(tuple(N[i] // t.r[i] for i in range(len(t.r))))

    def _need(self, t: TS, need: tuple[int, ...], out_r: tuple[int, ...] | None = None) -> None:
        if t.point or not t.sdims:
            return
        if self.circular:
            need = t.n
        req = self.req.setdefault(t.root, [1] * len(t.r))
        lc = self.lcm.setdefault(t.root, [1] * len(t.r))
        for i in range(len(t.r)):
            req[i] = max(req[i], t.r[i] * need[i])
            lc[i] = _lcm(lc[i], t.r[i])
            if out_r is not None:
                lc[i] = _lcm(lc[i], out_r[i])

    def plan_grids(self, extra: int = 0) -> dict[str, tuple[int, ...]]:
        out = {}
        for root, req in self.req.items():
            lc = self.lcm[root]
            out[root] = tuple(int(math.ceil((q + extra * l) / l) * l) for q, l in zip(req, lc, strict=True))
        return out

    # ---------------------------------------------------------------------------------------------- storage
    def getP(self, a: str, b: str) -> torch.Tensor:
        if a == b and a in self.factor and (a, a) not in self.P:
            R, _ = self.factor[a]
            self.P[(a, a)] = factor.tri_gram(R) if self.fast else R.mH @ R
        for k in ((a, b), (b, a)):
            if k in self.lazy:  # P_th = B_t^* R_h, formed only now that someone reads it
                self.P[k] = factor.mm_tri(self.lazy.pop(k).mH, self.factor[k[1]][0])
        if (a, b) in self.P:
            return self.P[(a, b)]
        if (b, a) in self.P:
            return self.P[(b, a)].mH
        # independent after a restart: zero cross storage
        return torch.zeros(1, self.live[a].c, self.live[b].c, dtype=self.dtype, device=self.dev)

    def linked(self, a: str, b: str) -> bool:
        """a and b have cross storage (a missing block is zero: independent since a restart). Unlinked pairs
        are skipped outright: their grids may be unrelated (a token-mixing Linear relayouts onto a new axis)."""
        return a == b or (a, b) in self.P or (b, a) in self.P or (a, b) in self.lazy or (b, a) in self.lazy

    def setP(self, a: str, b: str, x: torch.Tensor) -> None:
        self.lazy.pop((a, b), None)
        self.lazy.pop((b, a), None)
        self.P.pop((b, a), None)
        self.P[(a, b)] = x

    def gridP(self, a: str, b: str) -> cn.Grid:
        return cn.finer(self.grid(self.live[a]), self.grid(self.live[b]))

    def drop(self, name: str) -> None:
        self.live.pop(name, None)
        self.factor.pop(name, None)
        self.lazy_sigma.pop(name, None)
        for k in [k for k in self.P if name in k]:
            del self.P[k]
        for k in [k for k in self.lazy if name in k]:
            del self.lazy[k]

    # ---------------------------------------------------------------------------------------------- run
    def run(self, differentiable: bool = False) -> float | torch.Tensor:
        """The bound. `differentiable`: sqrt(lambda_max(P_yy)) as a tensor carrying autograd (not certified)."""
        self.differentiable = differentiable
        self.fast = not differentiable
        if self.dry or differentiable:
            return self._run()
        with self.counter:
            return self._run()

    def _run(self) -> float | torch.Tensor:
        g = self.g
        for i, node in enumerate(self.nodes):
            self.i = i
            self.check()
            with self.phase(_PHASE.get(node.op, "push")):
                getattr(self, f"_op_{node.op}", self._op_other)(node)
            for u in set(node.inputs):
                if self.last_use.get(u, -1) <= i and u != g.output:
                    self.drop(u)
            if node.name in self.live and self.last_use.get(node.name, i) <= i and node.name != g.output:
                self.drop(node.name)
        if self.dry:
            return math.nan
        y = g.output
        with self.phase("restart"):
            P = self.getP(y, y)
            return self._lmax(P) ** 0.5

    def _lmax(self, x: torch.Tensor) -> float | torch.Tensor:
        """Certified lambda_max upper bound (opnorms: ~1e-9 above the exact value, one Cholesky per block); in a
        differentiable run the exact one, as a tensor (for tuning)."""
        if self.differentiable:
            return torch.linalg.eigvalsh(_herm(x)).max().clamp_min(0)
        return opnorms.lmax_certified(x, check=self.check)

    # ---------------------------------------------------------------------------------------------- ops
    def _new(self, node: Node, like: TS, **kw: Any) -> TS:
        t = replace(like, name=node.name, shape=node.shape, **kw)
        return t

    def push(self, y: TS, terms: list[tuple[str, cn.Symbol | None, float]]) -> None:
        """Add y = sum_i coef_i A_i u_i to the live set (exact push-forward of the storage)."""
        if self.dry:
            self.live[y.name] = y
            return
        gy = self.grid(y)
        others = [t for t in self.live if not self.dying(t)]
        self.live[y.name] = y
        sig = []
        for u, _, _ in terms:
            gu = self.grid(self.live[u])
            sig.append(math.sqrt(gu.full / gy.full))
        if self.fast and self._push_factored(y, terms, others, gy, sig[0]):
            return
        for t in others:
            self._push_cross(y, t, terms, sig, gy)
        acc = None
        if len(terms) == 1 and terms[0][1] is not None and terms[0][0] in self.factor \
                and (terms[0][0], terms[0][0]) not in self.P and not (self.fast and terms[0][1].flat):
            # (a constant symbol folding onto a coarser grid: cheaper from P_uu = tri_gram(R), below)
            u, A, cu = terms[0]
            R, gu = self.factor[u]  # P_uu = R^* R  =>  P_yy = (A R^*)(A R^*)^*
            X = A.on(gu).left(R.mH)
            X = cn.alias_stack(X, gu, gy) if gu != gy else X
            self.setP(y.name, y.name, _scale(X @ X.mH, cu * cu / sig[0] ** 2))
            return
        if len(terms) == 1 and terms[0][1] is not None and (y.name, terms[0][0]) in self.P:
            # u stays live: P_yu = (c/s) A P_uu was just formed (on u's grid), so P_yy = (c/s) fold(P_yu A^*)
            u, A, cu = terms[0]
            gu = self.grid(self.live[u])
            X = self.P[(y.name, u)]
            if A.flat:
                acc = A.right_h(cn.down(X, gu, gy))
            elif gu == gy or A.diag:
                acc = cn.down(A.on(gu).right_h(X), gu, gy)
            elif X.shape[0] > 1:
                acc = cn.alias_stack(X, gu, gy) @ cn.alias_stack(A.on(gu).arr, gu, gy).mH
            if acc is not None:
                self.setP(y.name, y.name, _scale(acc, cu / sig[0]))
                return
        for (u, A, cu), su in zip(terms, sig, strict=True):
            for (v, B, cv), sv in zip(terms, sig, strict=True):
                if not self.linked(u, v):
                    continue
                gu, gv = self.grid(self.live[u]), self.grid(self.live[v])
                guv = cn.finer(gu, gv)
                x = self.getP(u, v)
                if (A is None or A.flat) and (B is None or B.flat) and guv != gy:
                    x = cn.down(x, guv, gy)
                    x = A.left(x) if A is not None else x
                    x = B.right_h(x) if B is not None else x
                    x = _scale(x, cu * cv / (su * sv))
                    acc = x if acc is None else _add(acc, x)
                    continue
                if A is not None:
                    x = A.on(guv).left(x)
                if B is not None and not B.diag and guv != gy and x.shape[0] > 1:
                    # sum_j X_j B_j^*: alias-stack both instead of forming the fine-grid product
                    x = cn.alias_stack(x, guv, gy) @ cn.alias_stack(B.on(guv).arr, guv, gy).mH
                    x = _scale(x, cu * cv / (su * sv))
                    acc = x if acc is None else _add(acc, x)
                    continue
                if B is not None:
                    x = B.on(guv).right_h(x)
                x = _scale(cn.down(x, guv, gy), cu * cv / (su * sv))
                acc = x if acc is None else _add(acc, x)
        self.setP(y.name, y.name, acc)

    def _push_cross(self, y: TS, t: str, terms: list[tuple[str, cn.Symbol | None, float]], sig: list[float],
                    gy: cn.Grid) -> None:
        """P_yt = sum_i (c_i / s_i) fold(A_i P_{u_i t}) (the alias fold onto y's grid)."""
        gt = self.grid(self.live[t])
        acc = None
        for (u, A, coef), s in zip(terms, sig, strict=True):
            if not self.linked(u, t):
                continue
            gu = self.grid(self.live[u])
            gut = cn.finer(gu, gt)
            x = self.getP(u, t)
            if A is not None and A.flat:  # a constant symbol commutes with the alias sum: fold first
                x = _scale(A.left(cn.down(x, gut, cn.finer(gy, gt))), coef / s)
            else:
                if A is not None:
                    x = A.on(gut).left(x)
                x = _scale(cn.down(x, gut, cn.finer(gy, gt)), coef / s)
            acc = x if acc is None else _add(acc, x)
        if acc is not None:
            self.setP(y.name, t, acc)

    def _push_factored(self, y: TS, terms: list[tuple[str, cn.Symbol | None, float]], others: list[str],
                       gy: cn.Grid, s: float) -> bool:
        """y = c A h for an activation h whose P_hh = R^* R was never formed: Z = A R^* on h's grid, then
        P_yy = (c/s)^2 fold(Z Z^*) (the alias stack's Hermitian product), P_yh = (c/s) Z R and P_yt = (c/s)
        fold(Z B_t) for the crosses kept lazily (P_th = B_t^* R); neither P_hh nor P_th is formed. The same values
        as the plain push-forward, in fewer products. False: not this case (the caller pushes as usual); a
        constant symbol onto a coarser grid is cheaper folded after forming P_hh, so it is not this case."""
        if len(terms) != 1 or terms[0][1] is None or terms[0][0] not in self.factor:
            return False
        u, A, cu = terms[0]
        R, gu = self.factor[u]
        if (u, u) in self.P or gu != self.grid(self.live[u]) or (A.flat and gu != gy):
            return False
        Ad = A.on(gu)
        Z = Ad.arr[..., :, None] * R.mH if Ad.diag else factor.mm_tri(Ad.arr, R.mH, upper=True)
        f = cu / s
        for t in others:
            if t == u:
                self.setP(y.name, t, _scale(factor.mm_tri(Z, R), f))
            elif (t, u) in self.lazy:
                gt = cn.finer(gy, self.grid(self.live[t]))
                self.setP(y.name, t, _scale(cn.down(Z @ self.lazy[(t, u)], gu, gt), f))
            else:
                self._push_cross(y, t, terms, [s], gy)
        X = cn.alias_stack(Z, gu, gy) if gu != gy else Z
        self.setP(y.name, y.name, _scale(factor.herk(X), f * f))
        return True

    def restart(self, node: Node | None, c: float, inputs: list[str], new: TS | None = None) -> None:
        """Bound the live set isotropically and restart the certificate (see module docstring)."""
        self.nrestart += 1
        if node is not None:
            self.stats.restarts.append(node.name)
        sigma2 = 0.0
        with self.phase("restart"):
            for t in self.live if not self.dry else ():
                if t in self.lazy_sigma:
                    sigma2 += self.lazy_sigma[t]
                else:
                    sigma2 += self._lmax(self.getP(t, t))
        here = self.order[node.name] if node is not None else -1
        all_die = node is not None and all(self.last_use.get(u, -1) <= here for u in inputs)
        f = max(1.0, c * c) if all_die else 1.0 + c * c
        if node is None:
            f = 1.0
        survivors = [t for t in self.live if node is None or self.last_use.get(t, -1) > here]
        newlive = {}
        for t in survivors:
            ts = self.live[t]
            newlive[t] = replace(ts, root=f"{t}@{self.nrestart}", r=(1,) * len(ts.sdims), clean=True, flat=True)
        if new is not None:
            newlive[new.name] = replace(new, root=new.name, r=(1,) * len(new.sdims), clean=True, flat=True)
        self.live = newlive
        self.P = {}
        self.lazy = {}
        self.factor = {}
        self.lazy_sigma = {}
        for t, ts in newlive.items():
            if not ts.point and ts.sdims:
                self._need(ts, ts.n)
            if not self.dry:
                self.setP(t, t, (f * sigma2) * torch.eye(ts.c, dtype=self.dtype, device=self.dev)[None])

    def _restart_node(self, node: Node, c: float, like: TS | None = None, **kw: Any) -> None:
        u = self.live[node.inputs[0]] if node.inputs else None
        base = like or u
        new = _guess_layout(node, self.cons, self.g) if base is None or kw.pop("relayout", False) else replace(
            base, name=node.name, shape=node.shape, **kw)
        self.restart(node, c, list(node.inputs), new)

    def _op_input(self, node: Node) -> None:
        t = _guess_layout(node, self.cons, self.g)
        t.root = node.name
        t.r = (1,) * len(t.sdims)
        self.live[node.name] = t
        self._need(t, t.n)
        if not self.dry:
            self.setP(node.name, node.name, torch.eye(t.c, dtype=self.dtype, device=self.dev)[None])

    def _op_other(self, node: Node) -> None:
        raise Refused(f"unsupported operator {node.target} at node {node.name}")

    def _op_unsupported(self, node: Node) -> None:
        raise Refused(f"unsupported operator {node.target} at node {node.name}: {node.attrs.get('why')}")

    def _op_conv(self, node: Node, w: torch.Tensor | None = None) -> None:
        a = node.attrs
        w = a["weight"] if w is None else w
        u = self.live[node.inputs[0]]
        d = w.dim() - 2
        k, s, p, dl = tuple(w.shape[2:]), a["stride"], a["padding"], a["dilation"]
        groups = a.get("groups", 1)
        if u.point or not u.sdims:
            if all(x == 1 for x in node.shape[1:]):
                tap = tuple(pp // dd if pp % dd == 0 and pp // dd < kk else -1 for pp, dd, kk in zip(p, dl, k,
                                                                                                    strict=True))
                co, cig = w.shape[:2]
                ci = cig * groups
                K = torch.zeros(co, ci, dtype=torch.float64)
                if all(t >= 0 for t in tap):
                    og = co // groups
                    for gi in range(groups):
                        K[gi * og:(gi + 1) * og, gi * cig:(gi + 1) * cig] = w[(slice(gi * og, (gi + 1) * og),
                                                                               slice(None), *tap)]
                y = TS(node.name, node.shape, 0, u.root, (), u.clean, point=True)
                A = cn.Symbol(K.to(self.dev, self.dtype)[None], cn.Grid(()), False, (), co, ci)
                self.push(y, [(u.name, A, 1.0)])
                return
            return self._restart_node(node, cn.conv_norm(node, w), relayout=True)
        if u.chan != 0 or len(u.sdims) != d:
            return self._restart_node(node, cn.conv_norm(node, w), relayout=True)
        n_u, n_y = u.n, node.shape[1:]
        hi = [s[i] * (n_y[i] - 1) + (k[i] - 1) * dl[i] - p[i] for i in range(d)]
        reads_ext = any(p[i] > 0 or hi[i] >= n_u[i] for i in range(d))
        if reads_ext and not u.clean and not self.circular:
            self.restart(None, 1.0, [])
            for t in self.live.values():
                t.clean = True
            u = self.live[node.inputs[0]]
        point = all(x == 1 for x in n_y)
        self._need(u, tuple(max(n_u[i] + p[i], hi[i] + 1) for i in range(d)),
                   None if point else tuple(u.r[i] * s[i] for i in range(d)))
        clean = u.clean and all(p[i] == 0 and (k[i] - 1) * dl[i] < s[i] and s[i] * n_y[i] >= n_u[i]
                                for i in range(d))
        flat = u.flat and all(x == 1 for x in k) and all(x == 0 for x in p) and groups == 1
        if point:
            y = TS(node.name, node.shape, 0, u.root, (), clean, point=True)
        else:
            y = TS(node.name, node.shape, 0, u.root, tuple(u.r[i] * s[i] for i in range(d)), clean, flat=flat)
            self._need(y, y.n)
        if self.dry:
            self.live[y.name] = y
            return
        with self.phase("symbols"):
            A = cn.conv_symbol(w, self.grid(u), s, p, dl, groups, self.dev, self.dtype)
        self.push(y, [(u.name, A, 1.0)])

    def _op_avgpool(self, node: Node) -> None:
        a = node.attrs
        u = self.live[node.inputs[0]]
        k, s, p = a["kernel"], a["stride"], a["padding"]
        n_u, n_y = node.in_shape[1:], node.shape[1:]
        floor_out = tuple((n_u[i] + 2 * p[i] - k[i]) // s[i] + 1 for i in range(len(k)))
        exact = (a["divisor"] is None and (a["count_include_pad"] or all(x == 0 for x in p))
                 and tuple(n_y) == floor_out and not u.point and u.chan == 0)
        if not exact:
            return self._restart_node(node, cn.avgpool_norm_bound(node))
        c = node.shape[0]
        w = torch.ones((c, 1, *k), dtype=torch.float64) / float(np.prod(k))
        fake = Node(node.name, "conv", node.inputs, node.shape,
                    {"stride": s, "padding": p, "dilation": (1,) * len(k), "groups": c, "in_shape": node.in_shape})
        self._op_conv(fake, w)

    def _op_gap(self, node: Node) -> None:
        """mean (times `factor`) over `dims`: exact when they are the layout's spatial dims (or on a vector)."""
        u = self.live[node.inputs[0]]
        dims, factor = list(node.attrs["dims"]), float(node.attrs["factor"])
        y = TS(node.name, node.shape, 0, u.root, (), True, point=True)
        if u.point or not u.sdims:
            return self._push_dense(node, u, y)
        if sorted(dims) != sorted(u.sdims):
            n = math.prod(node.in_shape[d] for d in dims)
            return self._restart_node(node, factor / math.sqrt(n), relayout=True)
        if self.dry:
            self.live[y.name] = y
            return
        gu = self.grid(u)
        mask = torch.zeros(gu.dims, dtype=torch.float64)
        mask[tuple(slice(0, x) for x in u.n)] = 1.0
        mh = torch.fft.rfftn(mask, norm="ortho").reshape(-1)
        coef = factor * math.sqrt(gu.full) / float(np.prod(u.n))
        arr = (coef * mh.conj()).to(self.dev, self.dtype)[:, None].expand(gu.F, u.c).contiguous()
        A = cn.Symbol(arr, gu, True, gu.dims, u.c, u.c)
        self.push(y, [(u.name, A, 1.0)])

    def _push_dense(self, node: Node, u: TS, y: TS) -> None:
        """A one-input linear node on a vector (no spatial structure left): push its dense matrix exactly, or
        restart with its exact norm when the matrix would be large."""
        c_in, c_out = u.c, int(np.prod(node.shape))
        if c_in * c_out > DENSE_LIMIT:
            return self._restart_node(node, ops.KINDS[node.op].naive(node, {}, self.dev), relayout=True)
        if self.dry:
            self.live[y.name] = y
            return
        J = torch.as_tensor(ops.dense_jacobian(node))
        A = cn.Symbol(J.to(self.dev, self.dtype)[None], cn.Grid(()), False, (), c_out, c_in)
        self.push(y, [(u.name, A, 1.0)])

    def _op_gather(self, node: Node) -> None:
        """A coordinate map: exact push for a channel selection (or on a vector), else a restart with its norm
        sqrt(max multiplicity)."""
        u = self.live[node.inputs[0]]
        a = node.attrs
        if u.point or not u.sdims:
            y = TS(node.name, node.shape, 0, u.root, (), u.clean, point=True)
            return self._push_dense(node, u, y)
        sel = a.get("channel_select")
        if sel is not None and u.chan == 0 and len(node.shape) == len(u.shape):
            y = replace(u, name=node.name, shape=node.shape)
            if self.dry:
                self.live[y.name] = y
                return
            S = torch.zeros(len(sel), u.c, dtype=torch.float64)
            S[torch.arange(len(sel)), sel] = 1.0
            A = cn.Symbol(S.to(self.dev, self.dtype)[None], self.grid(u), False, (1,) * len(u.sdims), len(sel), u.c)
            return self.push(y, [(u.name, A, 1.0)])
        self._restart_node(node, math.sqrt(a["multiplicity"]), relayout=True)

    def _op_linear(self, node: Node) -> None:
        u = self.live[node.inputs[0]]
        w = node.attrs["weight"]
        last = len(u.shape) - 1
        if u.point and len(u.shape) == 1 or (not u.point and u.chan == last):
            y = replace(u, name=node.name, shape=node.shape)
            if self.dry:
                self.live[y.name] = y
                return
            A = cn.Symbol(w.to(self.dev, self.dtype)[None], self.grid(u), False, (1,) * len(u.sdims), *w.shape)
            return self.push(y, [(u.name, A, 1.0)])
        return self._restart_node(node, cn.spectral_norm_matrix(w), relayout=True)

    def _op_scale(self, node: Node) -> None:
        u = self.live[node.inputs[0]]
        sc, cd = node.attrs["scale"], node.attrs["channel_dim"]
        y = replace(u, name=node.name, shape=node.shape)
        if cd is None:
            return self.push(y, [(u.name, None, float(sc))])
        if cd == u.chan and not u.point or (u.point and len(u.shape) == 1 and cd == 0):
            if self.dry:
                self.live[y.name] = y
                return
            A = cn.Symbol(sc.to(self.dev, self.dtype)[None], self.grid(u), True, (1,) * len(u.sdims), u.c, u.c)
            return self.push(y, [(u.name, A, 1.0)])
        return self._restart_node(node, float(sc.abs().max()))

    def _op_add(self, node: Node) -> None:
        a, b = (self.live[i] for i in node.inputs)
        c1, c2 = node.attrs["coef"]
        same = (a.point and b.point) or (a.root == b.root and a.r == b.r and a.chan == b.chan and not a.point
                                         and not b.point)
        if not same:
            return self._restart_node(node, math.hypot(c1, c2), like=a)
        y = replace(a, name=node.name, shape=node.shape, clean=a.clean and b.clean, flat=a.flat and b.flat)
        self.push(y, [(a.name, None, c1), (b.name, None, c2)])

    def _op_cat(self, node: Node) -> None:
        parts = node.attrs["parts"]
        dim = node.attrs["dim"] % (len(node.shape) + 1) - 1
        ts = [self.live[p] for p, _ in parts if p is not None]
        # a restart's y = join(parts) has ||dy|| <= sqrt(max multiplicity of a part) ||d live||
        dup = math.sqrt(max(Counter(p for p, _ in parts if p is not None).values()))
        if node.attrs.get("stack"):
            return self._restart_node(node, dup, relayout=True)
        ok = (len(ts) == len(parts) and all(t.chan == dim and t.root == ts[0].root and t.r == ts[0].r
                                            and t.point == ts[0].point for t in ts))
        if not ok or self.dry:
            if not ok:
                return self._restart_node(node, dup, like=ts[0])
            self.live[node.name] = replace(ts[0], name=node.name, shape=node.shape,
                                           clean=all(t.clean for t in ts))
            return
        y = replace(ts[0], name=node.name, shape=node.shape, clean=all(t.clean for t in ts))
        others = list(self.live)
        gy = self.grid(y)
        self.live[y.name] = y
        for t in others:
            if not any(self.linked(p.name, t) for p in ts):
                continue  # independent since a restart (its grid may be unrelated): no cross storage
            blocks = [self.getP(p.name, t) for p in ts]
            F = max(x.shape[0] for x in blocks)
            self.setP(y.name, t, torch.cat([x.expand(F, -1, -1) for x in blocks], dim=1))
        rows = []
        for p in ts:
            blocks = [self.getP(p.name, q.name) for q in ts]
            rows.append(blocks)
        F = max(x.shape[0] for r in rows for x in r)
        del gy
        self.setP(y.name, y.name, torch.cat([torch.cat([x.expand(F, -1, -1) for x in r], dim=2) for r in rows], 1))

    def _op_maxpool(self, node: Node) -> None:
        self._restart_node(node, cn.maxpool_lipschitz(node), relayout=False)

    def _op_norm(self, node: Node) -> None:
        self.stats.vacuous = True
        self._restart_node(node, node.attrs["lip"])

    def _op_reshape(self, node: Node) -> None:
        u = self.live[node.inputs[0]]
        if u.point or not u.sdims:
            if len(node.shape) == 1 or int(np.prod(node.shape)) == u.c:
                y = TS(node.name, node.shape, 0, u.root, (), u.clean, point=True)
                return self.push(y, [(u.name, None, 1.0)])
        perm = node.attrs.get("perm")
        if perm is not None and not u.point:
            nd = len(u.shape)
            if perm[0] == "t":
                pl = list(range(nd + 1))
                pl[perm[1] % (nd + 1)], pl[perm[2] % (nd + 1)] = pl[perm[2] % (nd + 1)], pl[perm[1] % (nd + 1)]
            else:
                pl = [x % (nd + 1) for x in perm]
            if pl[0] == 0:
                q = [x - 1 for x in pl[1:]]  # new dim i holds old dim q[i]
                new_chan = q.index(u.chan)
                old_sp = [x for x in q if x != u.chan]
                if old_sp == list(u.sdims):
                    y = TS(node.name, node.shape, new_chan, u.root, u.r, u.clean)
                    return self.push(y, [(u.name, None, 1.0)])
        return self._restart_node(node, 1.0, relayout=True)

    def _op_act(self, node: Node) -> None:
        act = node.attrs["act"]
        v = self.live[node.inputs[0]]
        self.stats.activations += 1
        a, b = act.alpha, act.beta
        if act.linear:  # phi(x) = a x + const (a constant activation when a = 0): a linear node, exactly
            return self.push(replace(v, name=node.name, shape=node.shape), [(v.name, None, a)])
        if a >= 0:
            self._sector(node.name, node.shape, v, b)
            return
        tmp = node.name + "#psi"
        self._sector(tmp, node.shape, v, b - a, keep=(v.name,))
        y = replace(v, name=node.name, shape=node.shape, clean=True)
        self.push(y, [(v.name, None, a), (tmp, None, 1.0)])
        self.drop(tmp)

    def _sector(self, name: str, shape: tuple[int, ...], v: TS, beta: float, keep: tuple[str, ...] = ()) -> None:
        h = replace(v, name=name, shape=shape, clean=True)
        if self.dry:
            self.act_sizes.append((v.root, v.r, v.c, v.point or not v.sdims or v.flat))
            self.live[name] = h
            return
        gv = self.grid(v)
        gamma = _scale(self.getP(v.name, v.name), beta * beta)
        others = [t for t in self.live if t in keep or not self.dying(t)]
        cons = self.cons.get(name, [])
        if not others and cons and all(self.g.node(c).op == "maxpool" for c in cons):
            # only a restart reads h, i.e. only lambda_max(P_hh). Whatever the rule, the scalar 1/tau is optimal
            # there (tau >= lambda_max(Gamma) certified): M = (2 I - Gamma/tau)/tau >= I/tau gives
            # lambda_max(P_hh) <= tau, and no diagonal Lambda does better since P_hh >= Gamma. No Cholesky needed.
            with self.phase("restart"):
                tau = self._lmax(gamma)
            self.lazy_sigma[name] = tau
            self.live[name] = h
            return
        with self.phase("rule"):
            lam = self.rule(gamma, gv, name) if getattr(self.rule, "named", False) else self.rule(gamma, gv)
        lam_t = (torch.as_tensor(lam, dtype=torch.float64, device=self.dev) if not isinstance(lam, float)
                 else torch.full((v.c,), lam, dtype=torch.float64, device=self.dev))
        for _ in range(60):
            with self.phase("factor"):
                Linv, margin = _chol_m(gamma, lam_t, self.chunk, self.check)
            if Linv is not None:
                break
            lam_t = lam_t * 0.5
            self.stats.backoffs += 1
        else:
            raise CertificationError(f"no admissible multiplier at {name}")
        self.stats.min_margin = min(self.stats.min_margin, margin)
        lamc = lam_t.to(self.dtype)
        others = [t for t in others if self.linked(v.name, t)]  # P_th = 0 and no P_tt' update for the rest
        B = {}
        for t in others:
            gt = self.grid(self.live[t])
            gvt = cn.finer(gv, gt)
            x = self.getP(v.name, t) * (beta * lamc[:, None])
            Lu = cn.up(Linv, gv, gvt)
            B[t] = (factor.tri_mm(Lu, x) if self.fast else Lu @ x, gvt)
        for i, t in enumerate(others):
            for t2 in others[i:]:
                (bt, g1), (bt2, g2) = B[t], B[t2]
                g3 = cn.finer(g1, g2)
                tgt = cn.finer(self.grid(self.live[t]), self.grid(self.live[t2]))
                if g3 == tgt and min(g1.full, g2.full) <= gv.full:  # exact, same grid: one fused product + add
                    if t == t2 and self.fast:  # Hermitian: half the product
                        self.setP(t, t, self.getP(t, t) + factor.herk(bt.mH))
                    else:
                        self.setP(t, t2, _addmm(self.getP(t, t2), cn.up(bt, g1, g3).mH, cn.up(bt2, g2, g3)))
                    continue
                upd = cn.up(bt, g1, g3).mH @ cn.up(bt2, g2, g3)
                upd = cn.down(upd, g3, tgt)
                k = min(g1.full, g2.full) // gv.full
                if k > 1:  # t and t2 both on grids finer than v's: see "Coarse activations" in the docstring
                    upd = upd * k
                    if name not in self.stats.alias_inflated:
                        self.stats.alias_inflated.append(name)
                cur = self.getP(t, t2)
                self.setP(t, t2, _add(cur, upd))
        self.live[name] = h
        for t in others:
            bt, gvt = B[t]
            if self.fast and gvt == gv:
                self.lazy[(t, name)] = bt  # P_th = B_t^* Linv, formed by getP only if read as such
            else:
                self.setP(t, name, bt.mH @ cn.up(Linv, gv, gvt))
        self.factor[name] = (Linv, gv)  # P_hh = Linv^* Linv, formed only if someone reads it


# -------------------------------------------------------------------------------------------------------------
# scheduling traits, declared per kind in the op table
HOISTABLE = frozenset(k for k, d in ops.KINDS.items() if d.hoistable)  # single-input push-forwards
CLEAN_SOURCES = frozenset(k for k, d in ops.KINDS.items() if d.clean_source)  # a conv reading them never restarts
WINDOW_OPS = frozenset(k for k, d in ops.KINDS.items() if d.window)  # never restart on clean inputs
DENSE_LIMIT = 1 << 24  # entries of a dense vector map pushed exactly (above: a restart with its norm)


def schedule(g: GraphModel) -> list[Node]:
    """The order the engine processes g in: the traced order, except that a conv / avg pool reading an
    activation (or restart) output t is moved up to right after t's other consumers when that lets t die.

    Why: a ResNet downsampling block reads its input x twice (the strided conv1 and the strided 1x1 shortcut);
    in traced order x stays live, on the fine grid, through conv1's activation and conv2, where every cross
    block with x costs 4x the coarse one, and x's own update needs the Cauchy-Schwarz factor (module docstring).
    Pushing the shortcut first replaces x by its image on the coarse grid, where every update is exact. The
    exact recursion's bound is the same in either order: a push-forward commutes with the activation's rank
    update, and dropping x is the same marginalisation. Only moves across push-forwards and activations are
    made (never across a restart, where the live set enters sigma^2).
    """
    cons = g.consumers()
    out: list[Node] = []
    done: set[str] = set()
    pending = list(g.nodes)
    while pending:
        n = pending.pop(0)
        out.append(n)
        done.add(n.name)
        for t in n.inputs:  # t's remaining consumers: hoist them if they are all cheap pushes of t alone
            rest = [c for c in cons.get(t, []) if c not in done]
            if not rest or g.node(t).op not in CLEAN_SOURCES or t == g.output:
                continue
            if not all(g.node(c).op in HOISTABLE and list(g.node(c).inputs) == [t] for c in rest):
                continue
            last = max(next(i for i, m in enumerate(pending) if m.name == c) for c in rest)
            if all(m.op in WINDOW_OPS for m in pending[:last]):
                hoisted = [m for m in pending[:last + 1] if m.name in rest]
                out.extend(hoisted)
                done.update(m.name for m in hoisted)
                pending = [m for m in pending if m.name not in done]
    return out


_PHASE = {"act": "update", "maxpool": "restart", "norm": "restart", "unsupported": "restart"}


def _add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b


def _addmm(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """c + a @ b per frequency, fused (one pass over the output) where the batch sizes allow it."""
    if a.shape[0] == b.shape[0] and c.shape[0] in (1, a.shape[0]):
        return torch.baddbmm(c, a, b)
    return c + a @ b


def _scale(x: torch.Tensor, f: float) -> torch.Tensor:
    """x * f, without a pass over x when f is 1 (most push-forwards: unit coefficients on the same grid).
    Stored blocks may then be shared between keys: the engine never updates a block in place."""
    return x if f == 1.0 else x * f


def _herm(x: torch.Tensor) -> torch.Tensor:
    return (x + x.mH) * 0.5


def _cost(x: torch.Tensor) -> float:
    return float(x.shape[0]) * float(x.shape[-1]) ** 3


def _chol_m(gamma: torch.Tensor, lam: torch.Tensor, chunk: int,
            check: Callable[[], None]) -> tuple[torch.Tensor | None, float]:
    """L^{-1} of the Cholesky factor of M = 2 Lambda - Lambda Gamma Lambda at every frequency (None if some M is
    not positive definite or too close to singular to trust), and the smallest relative pivot (margin)."""
    F, c, _ = gamma.shape
    if F == 1 and gamma.is_complex() and not bool(gamma.imag.any()):
        # a flat block is real (Hermitian frequency symmetry): factor in float64, 4x cheaper than complex
        Linv, margin = _chol_m(gamma.real.contiguous(), lam, chunk, check)
        return (None, 0.0) if Linv is None else (Linv.to(gamma.dtype), margin)
    lamc = lam.to(gamma.dtype)
    eye = torch.eye(c, dtype=gamma.dtype, device=gamma.device)
    step = max(1, min(F, chunk // max(1, c * c)))
    Linvs = []
    margin = math.inf
    for i in range(0, F, step):
        gi = gamma[i:i + step]
        M = gi * (-(lamc[:, None] * lamc[None, :]))
        M.diagonal(dim1=-2, dim2=-1).add_(2 * lamc)
        if M.requires_grad:  # tuning: LAPACK's factorisation carries autograd
            L, info = torch.linalg.cholesky_ex(M)
            if bool((info != 0).any()):
                return None, 0.0
            d = L.detach().diagonal(dim1=-2, dim2=-1).real
            Linv = torch.linalg.solve_triangular(L, eye.expand(gi.shape[0], c, c), upper=False)
        else:  # blocked: GEMMs above LAPACK leaves, each leaf's pivots checked (lipcore/graph/factor.py)
            Linv, d = factor.chol_inverse(M)
            if Linv is None:
                return None, 0.0
        dmin = float(d.min()) ** 2
        dmax = float(M.detach().diagonal(dim1=-2, dim2=-1).real.max())
        if dmin <= (1e-13 if M.dtype.itemsize >= 8 else 1e-6) * dmax:  # too close to singular to trust
            return None, 0.0
        margin = min(margin, dmin / dmax)
        Linvs.append(Linv)
        check()
    return (Linvs[0] if len(Linvs) == 1 else torch.cat(Linvs)), margin


def _guess_layout(node: Node, cons: dict[str, list[str]], g: GraphModel) -> TS:
    shape = node.shape
    if len(shape) <= 1:
        return TS(node.name, shape, 0, node.name, (), True, point=True)
    ops = {g.node(c).op for c in cons.get(node.name, [])}
    targets = [g.node(c) for c in cons.get(node.name, [])]
    chan = 0
    if "linear" in ops or any(t.op == "scale" and t.attrs.get("channel_dim") == len(shape) - 1 for t in targets):
        chan = len(shape) - 1
    t = TS(node.name, shape, chan, node.name, (), True)
    t.r = (1,) * len(t.sdims)
    return t


def plan(g: GraphModel, device: torch.device, extra: int = 0, circular: bool = False
         ) -> tuple[dict[str, tuple[int, ...]], float]:
    """Dry run: grid sizes per root and the cost estimate (sum over activations of F * c^3, complex flops)."""
    e = Engine(g, None, device, dry=True, circular=circular)
    e.run()
    grids = e.plan_grids(extra)
    cost = 0.0
    for root, r, c, point in e.act_sizes:
        F = 1 if point else cn.Grid(tuple(N // x for N, x in zip(grids[root], r, strict=True))).F
        cost += F * float(c) ** 3
    return grids, cost


def run_recursion(g: GraphModel, rule: Rule, device: torch.device, check: Callable[[], None] | None = None,
                  extra: int = 0, chunk: int = 1 << 25, circular: bool = False) -> tuple[float, dict[str, Any]]:
    """Bound Lip(g) with the storage recursion under a multiplier rule. Returns (value, diagnostics).

    `circular=True` (tests only) bounds the network with circular instead of zero padding, exactly.
    """
    grids, cost = plan(g, device, extra, circular)
    e = Engine(g, rule, device, dry=False, grids=grids, check=check, chunk=chunk, circular=circular)
    t0 = time.perf_counter()
    val = e.run()
    st = e.stats
    st.flops = e.counter.flops
    wall = time.perf_counter() - t0
    phases = {k: round(v, 4) for k, v in sorted(st.phases.items(), key=lambda kv: -kv[1])}
    return val, {"restarts": st.restarts, "activations": st.activations, "backoffs": st.backoffs,
                 "grids": {k: list(v) for k, v in grids.items()}, "min_margin": st.min_margin,
                 "vacuous": st.vacuous, **({"alias_inflated": st.alias_inflated} if st.alias_inflated else {}),
                 # the engine's work: phases in seconds, counted flops and the plan's model (8 F c^3 per activation)
                 "phases": phases, "phase_gflop": {k: round(st.phase_flops.get(k, 0.0) / 1e9, 3) for k in phases},
                 "engine_seconds": wall, "flops": st.flops, "model_flops": cost * 8,
                 "gflops_per_s": st.flops / wall / 1e9 if wall > 0 else math.nan}
