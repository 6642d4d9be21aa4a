"""Upper-bound variants for traced models (GraphModel): naive, ECLipsE-Fast and the Syed-Hu family.

* naive: per-node Lipschitz constants propagated through the DAG (product along chains, sum over residual
  additions, root-sum-square over concatenations); convolution norms certified on the lifted FFT symbol.
* the recursion family: lipcore.fourier's storage propagation with one multiplier per channel, under the
  rule of each member (scalar: ECLipsE-Fast = SN(1), sh-spectral = SN(c); diagonal: Gershgorin, shift).
  sh-combined is the minimum over the members and naive, so sh-combined <= eclipse-fast <= naive holds.

Each value is certified: Cholesky checks of every per-frequency M block, lambda_max bounds certified by
Cholesky, never power iteration alone. The Syed-Hu rules are reconstructed (docs/theory.md §0).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..errors import Refused
from ..variants import Context
from . import engine, ops
from . import norms as cn
from .trace import GraphModel, Node

# flops per second of the batched per-frequency linear algebra, for the cost guard (measured on resnet18 at 224:
# 0.32 TFLOP in ~200 s on one loaded CPU thread, ~100 s on two); the CPU rate scales with torch's thread count
_RATE = {"cpu": 1.5e9, "cuda": 2e11}
DEFAULT_MAX_EST_S = {"cpu": 900.0, "cuda": 1800.0}


def _rate(dev: str) -> float:
    r = _RATE.get(dev, _RATE["cpu"])
    return r * max(1, torch.get_num_threads()) if dev == "cpu" else r


# ---------------------------------------------------------------------------------------------------------
# naive
# ---------------------------------------------------------------------------------------------------------
def _node_lip(node: Node, memo: dict[str, float], dev: torch.device) -> float:
    kind = ops.KINDS.get(node.op)
    if kind is None or kind.naive is None:
        raise Refused(f"no Lipschitz rule for {node.target} at node {node.name}")
    return kind.naive(node, memo, dev)


def naive_value(g: GraphModel, ctx: Context) -> tuple[float, bool]:
    memo = ctx.memo.setdefault(("graph-norms", id(g)), {})
    L: dict[str, float] = {}
    vacuous = False
    for n in g.nodes:
        ctx.check_deadline()
        if n.op == "input":
            L[n.name] = 1.0
        elif n.op == "add":
            c1, c2 = n.attrs["coef"]
            L[n.name] = abs(c1) * L[n.inputs[0]] + abs(c2) * L[n.inputs[1]]
        elif n.op == "cat":
            L[n.name] = math.sqrt(sum(L[i] ** 2 for i in n.inputs))
        elif n.op == "unsupported":
            raise Refused(f"unsupported operator {n.target} at node {n.name}: {n.attrs['why']}")
        else:
            vacuous |= n.op == "norm"
            L[n.name] = _node_lip(n, memo, ctx.device) * L[n.inputs[0]]
    return L[g.output], vacuous


def naive(g: GraphModel, ctx: Context) -> tuple[float, dict[str, Any]]:
    g.require_supported()
    key = ("graph-naive", id(g))
    if key not in ctx.memo:
        ctx.memo[key] = naive_value(g, ctx)
    v, vac = ctx.memo[key]
    return v, {"method": "product of certified per-operator norms over the graph", "vacuous": vac}


# ---------------------------------------------------------------------------------------------------------
# multiplier rules (on Gamma blocks (F|1, c, c) over a grid)
# ---------------------------------------------------------------------------------------------------------
def rule_spectral(c: float, certified_lmax: bool = False) -> engine.Rule:
    """Lambda = c / lambda_max(Gamma). lambda_max only *chooses* Lambda (a power-iteration estimate, inflated by
    1e-6): admissibility is certified afterwards by the Cholesky factorisation of every M block."""
    def rule(gamma: torch.Tensor, grid: cn.Grid) -> float:
        if certified_lmax:
            return c / cn.lmax_upper(gamma)
        return c / (cn.lmax_estimate(gamma) * (1 + 1e-6))
    return rule


def _spatial_kernel(gamma: torch.Tensor, grid: cn.Grid) -> torch.Tensor:
    """Entries of the block-circulant matrix: (c, c, *dims) real, from the half-spectrum symbol."""
    c = gamma.shape[-1]
    if gamma.shape[0] == 1 or not grid.dims:
        return gamma[0].real[..., None]
    x = gamma.permute(1, 2, 0).reshape(c, c, *grid.half)
    return torch.fft.irfftn(x, s=grid.dims, dim=tuple(range(-len(grid.dims), 0)), norm="backward").reshape(c, c, -1)


def rule_gershgorin(c: float) -> engine.Rule:
    def rule(gamma: torch.Tensor, grid: cn.Grid) -> torch.Tensor:
        k = _spatial_kernel(gamma, grid)
        r = k.abs().sum(dim=(1, 2))
        r = r.clamp_min(1e-12 * float(r.max()))
        return c / r
    return rule


def rule_shift(c: float) -> engine.Rule:
    def rule(gamma: torch.Tensor, grid: cn.Grid) -> torch.Tensor:
        dg = gamma.diagonal(dim1=-2, dim2=-1).real  # (F, c)
        if gamma.shape[0] == 1 or not grid.dims:
            T = dg[0] / 2
        else:  # spatial diagonal = mean over the full grid of the symbol's diagonal
            T = cn.down(dg.to(cn.CDTYPE)[:, :, None], grid, cn.Grid(())).real[0, :, 0] / (2 * grid.full)
        mu = float(T.max())
        off = gamma / 2 - torch.diag_embed(T.to(gamma.dtype)) + mu * torch.eye(gamma.shape[-1], dtype=gamma.dtype,
                                                                                 device=gamma.device)
        s = max(cn.lmax_upper((off + off.mH) / 2) - mu, 1e-12 * mu)
        return 1.0 / (T + c * s)
    return rule


# ---------------------------------------------------------------------------------------------------------
# variants
# ---------------------------------------------------------------------------------------------------------
def _guard_cost(g: GraphModel, ctx: Context, variant: str, runs: int = 1) -> None:
    key = ("graph-plan", id(g))
    if key not in ctx.memo:
        ctx.memo[key] = engine.plan(g, ctx.device, int(ctx.opt(variant, "grid_extra", 0)))
    _, cost = ctx.memo[key]
    dev = ctx.device.type
    est = runs * cost * 8 / _rate(dev)
    cap = float(ctx.opt(variant, "max_est_s", DEFAULT_MAX_EST_S.get(dev, 900.0)))
    left = ctx.time_left()
    if est > cap or (left is not None and est > left):
        raise Refused(f"{variant} on {g.name} needs about {cost * 8 * runs / 1e12:.1f} TFLOP (~{est:.0f} s on "
                      f"{dev}, cap {cap:.0f} s); use naive here or run on a GPU (--device cuda)")


def _run(g: GraphModel, ctx: Context, variant: str, name: str, rule: engine.Rule) -> tuple[float, dict[str, Any]]:
    key = ("graph-run", id(g), name)
    if key in ctx.memo:
        return ctx.memo[key]
    t0 = time.perf_counter()
    val, info = engine.run_recursion(g, rule, ctx.device, check=ctx.check_deadline,
                                      extra=int(ctx.opt(variant, "grid_extra", 0)),
                                      chunk=int(ctx.opt(variant, "chunk", 1 << 25)))
    info["seconds"] = time.perf_counter() - t0
    ctx.memo[key] = (val, info)
    return val, info


def _finish(g: GraphModel, ctx: Context, val: float, params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    nv, p = naive(g, ctx)
    vac = bool(p["vacuous"])
    params["naive"] = nv
    if nv < val:
        params["recursion_value"] = val
        params["capped_by"] = "naive"
        val = nv
    params["vacuous"] = vac or bool(params.pop("vacuous", False))
    return val, params


def eclipse_fast(g: GraphModel, ctx: Context) -> tuple[float, dict[str, Any]]:
    g.require_supported()
    _guard_cost(g, ctx, "eclipse-fast")
    val, info = _run(g, ctx, "eclipse-fast", "sn1", rule_spectral(1.0))
    params = {"rule": "scalar Lambda = 1/lambda_max(Gamma) per activation (certified)", **_clean(info)}
    return _finish(g, ctx, val, params)


def _member(g: GraphModel, ctx: Context, variant: str, tag: str, make: Any, grid: tuple[float, ...]
            ) -> tuple[float, dict[str, Any]]:
    g.require_supported()
    cs = tuple(float(c) for c in ctx.opt(variant, "c_grid", grid))
    _guard_cost(g, ctx, variant, runs=len(cs))
    best, best_c, best_info, per_c = math.inf, None, {}, {}
    for c in cs:
        try:
            v, info = _run(g, ctx, variant, f"{tag}{c:g}", make(c))
        except Exception as e:  # noqa: BLE001 - a member that cannot certify at one c just loses that c
            if isinstance(e, Refused | TimeoutError) or type(e).__name__ == "BudgetExceeded":
                raise
            per_c[f"{c:g}"] = f"{type(e).__name__}: {e}"
            continue
        per_c[f"{c:g}"] = v
        if v < best:
            best, best_c, best_info = v, c, info
    if best_c is None:
        raise engine.CertificationError(f"{variant}: no c in {cs} certified ({per_c})")
    params = {"c": best_c, "per_c": per_c, **_clean(best_info)}
    return _finish(g, ctx, best, params)


def sh_spectral(g: GraphModel, ctx: Context) -> tuple[float, dict[str, Any]]:
    return _member(g, ctx, "sh-spectral", "sn", rule_spectral, (1.35,))  # best single c on resnet18 (bench_arch)


def sh_gershgorin(g: GraphModel, ctx: Context) -> tuple[float, dict[str, Any]]:
    return _member(g, ctx, "sh-gershgorin", "gc", rule_gershgorin, (1.0, 1.7))


def sh_shift(g: GraphModel, ctx: Context) -> tuple[float, dict[str, Any]]:
    return _member(g, ctx, "sh-shift", "shift", rule_shift, (1.5,))


def sh_combined(g: GraphModel, ctx: Context) -> tuple[float, dict[str, Any]]:
    """min over eclipse-fast, the members (their c grids) and naive: each is certified, so is the minimum."""
    g.require_supported()
    cands: dict[str, float] = {}
    errors: dict[str, str] = {}
    vac = False
    for vid, fn in (("naive", naive), ("eclipse-fast", eclipse_fast), ("sh-spectral", sh_spectral),
                    ("sh-gershgorin", sh_gershgorin), ("sh-shift", sh_shift)):
        try:
            v, p = fn(g, ctx)
            cands[vid] = v
            vac |= bool(p.get("vacuous"))
        except Refused as e:
            errors[vid] = str(e)
            if vid in ("naive", "eclipse-fast"):
                if vid == "naive":
                    raise
    if "eclipse-fast" not in cands:
        raise Refused(f"sh-combined needs eclipse-fast: {errors.get('eclipse-fast')}")
    best = min(cands, key=cands.get)  # type: ignore[arg-type]
    return cands[best], {"best": best, "candidates": cands, "skipped": errors, "vacuous": vac}


def optimized(g: GraphModel, ctx: Context) -> tuple[float, dict[str, Any]]:
    """Per-channel multipliers tuned by Adam on a small-input proxy of the model (lipcore.graph_tune), then the
    certified float64 run at full size; min with the closed-form runs of this analyze() call (all certified)."""
    from . import tune as graph_tune

    g.require_supported()
    v = "optimized"
    steps, lr = int(ctx.opt(v, "steps", 8)), float(ctx.opt(v, "lr", 0.05))
    _guard_cost(g, ctx, v)
    pg, what = graph_tune.proxy_graph(g, int(ctx.opt(v, "proxy", 64)))
    grids, cost = engine.plan(pg, ctx.device)
    est = 3 * (steps + 1) * cost * 8 / _rate(ctx.device.type) / 2  # forward + backward in complex64
    tune_s = ctx.opt(v, "tune_s", None)
    left = ctx.time_left()
    if tune_s is None and est > float(ctx.opt(v, "max_est_s", DEFAULT_MAX_EST_S.get(ctx.device.type, 900.0))):
        raise Refused(f"optimized on {g.name}: tuning on {what} needs ~{est:.0f} s on {ctx.device.type} "
                      f"({steps} steps); set option steps, proxy or tune_s, or run on a GPU (--device cuda)")
    budget = None if tune_s is None else float(tune_s)
    if left is not None:
        budget = min(budget or math.inf, left / 3)
    t0 = time.perf_counter()
    rule, tinfo = graph_tune.tune(pg, grids, ctx.device, steps, lr, budget, ctx.check_deadline,
                                  power_iters=int(ctx.opt(v, "power_iters", 20)),
                                  c0=float(ctx.opt(v, "c0", graph_tune.DEFAULT_C)))
    t1 = time.perf_counter()
    val, info = engine.run_recursion(g, rule, ctx.device, check=ctx.check_deadline,
                                      extra=int(ctx.opt(v, "grid_extra", 0)), chunk=int(ctx.opt(v, "chunk", 1 << 25)))
    params: dict[str, Any] = {"rule": "per-channel Lambda = c U / lambda_max(U^1/2 Gamma U^1/2), (c, U) tuned by "
                              "Adam on a proxy, certified at full size", "proxy": what, "steps": steps, "lr": lr,
                              "proxy_values": [round(x, 6) for x in tinfo["proxy_values"]],
                              "tune_seconds": t1 - t0, "certify_seconds": time.perf_counter() - t1,
                              **{k: tinfo[k] for k in ("tune_dtype", "backtracks", "tuning_stopped") if k in tinfo},
                              **_clean(info)}
    runs = {k[2]: r[0] for k, r in ctx.memo.items() if isinstance(k, tuple) and k[:2] == ("graph-run", id(g))}
    if runs and min(runs.values()) < val:
        params["tuned_value"] = val
        params["capped_by"] = min(runs, key=runs.get)  # type: ignore[arg-type]
        val = min(runs.values())
    return _finish(g, ctx, val, params)


def _clean(info: dict[str, Any]) -> dict[str, Any]:
    out = dict(info)
    out["restarts"] = len(info.get("restarts", []))
    out["restart_nodes"] = list(info.get("restarts", []))[:20]
    return out
