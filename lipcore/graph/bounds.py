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

from .. import calibrate
from ..errors import BudgetExceeded, Refused
from ..variants import Context
from . import engine, ops
from . import norms as cn
from .trace import GraphModel, Node

# a variant's own cap on one estimated run (option max_est_s), per device kind; the model's budget is the other limit
DEFAULT_MAX_EST_S = {"cpu": 900.0, "cuda": 1800.0}


class OverBudget(Refused):
    """Refused because the estimate does not fit the model's remaining budget (not the variant's cap)."""


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
def _plan_cost(g: GraphModel, ctx: Context, variant: str) -> float:
    """Model flops of one recursion run (8 sum F c^3 over activations, from the engine's dry run)."""
    key = ("graph-plan", id(g))
    if key not in ctx.memo:
        ctx.memo[key] = engine.plan(g, ctx.device, int(ctx.opt(variant, "grid_extra", 0)))
    return ctx.memo[key][1] * 8


def _estimate_text(flops: float, ctx: Context) -> tuple[float, str]:
    here, gpu, rate = calibrate.estimate(flops, ctx.device)
    dev = ctx.device.type
    gpu_txt = "" if dev == "cuda" else (f" and ~{gpu:.0f} s on a GPU (assumed {calibrate.GPU_ASSUMED_RATE / 1e9:.0f} "
                                        "GFLOP/s, not measured)")
    return here, (f"about {flops / 1e12:.2f} TFLOP: ~{here:.0f} s on this {dev} ({rate.flops_per_s / 1e9:.2f} "
                  f"GFLOP/s, {rate.source}){gpu_txt}")


def _guard_cost(g: GraphModel, ctx: Context, variant: str, flops: float | None = None, what: str = "one run",
                budget: bool = True) -> float:
    """Estimated seconds of `flops` (default: one recursion run) on this device; raises Refused naming the limit
    that refuses it: the variant's cap (option max_est_s) or, as OverBudget, the model's remaining budget
    (budget=False: work that stops at the budget by itself, e.g. tuning)."""
    flops = _plan_cost(g, ctx, variant) if flops is None else flops
    est, text = _estimate_text(flops, ctx)
    cap = float(ctx.opt(variant, "max_est_s", DEFAULT_MAX_EST_S.get(ctx.device.type, 900.0)))
    if est > cap:
        raise Refused(f"{variant} on {g.name}: {what} needs {text}; refused by the variant's cap (max_est_s = "
                      f"{cap:.0f} s); use naive here, raise max_est_s, or run on a GPU (--device cuda)")
    left = ctx.time_left()
    if budget and left is not None and est > left:
        raise OverBudget(f"over budget: {variant} on {g.name}: {what} needs {text}; refused by the model's "
                         f"remaining budget ({max(left, 0.0):.0f} s left)")
    return est


def _fits(ctx: Context, est: float) -> bool:
    left = ctx.time_left()
    return left is None or est <= left


def _run(g: GraphModel, ctx: Context, variant: str, name: str, rule: engine.Rule) -> tuple[float, dict[str, Any]]:
    key = ("graph-run", id(g), name)
    if key in ctx.memo:
        return ctx.memo[key]
    t0 = time.perf_counter()
    val, info = engine.run_recursion(g, rule, ctx.device, check=ctx.check_deadline,
                                      extra=int(ctx.opt(variant, "grid_extra", 0)),
                                      chunk=int(ctx.opt(variant, "chunk", 1 << 25)))
    info["seconds"] = time.perf_counter() - t0
    calibrate.record_run(ctx.device, float(info.get("model_flops", 0.0)), float(info.get("engine_seconds", 0.0)))
    ctx.memo[key] = (val, info)
    return val, info


def _naive_first(g: GraphModel, ctx: Context) -> float:
    """naive before any recursion run: the certified value an anytime variant falls back on."""
    try:
        return naive(g, ctx)[0]
    except BudgetExceeded:
        raise OverBudget(f"over budget: no time left of the model's budget for even the naive bound on {g.name}"
                         ) from None


def _stopped(ctx: Context, t0: float) -> str:
    return f"the model's budget ran out {time.perf_counter() - t0:.0f} s into the run"


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
    _naive_first(g, ctx)
    est = _guard_cost(g, ctx, "eclipse-fast")
    t0 = time.perf_counter()
    try:
        val, info = _run(g, ctx, "eclipse-fast", "sn1", rule_spectral(1.0))
    except BudgetExceeded:
        nv, _ = naive(g, ctx)
        return _finish(g, ctx, nv, {"partial": True, "stopped": _stopped(ctx, t0), "estimated_s": round(est, 1),
                                    "runs_done": 0, "runs_planned": 1})
    params = {"rule": "scalar Lambda = 1/lambda_max(Gamma) per activation (certified)", **_clean(info)}
    return _finish(g, ctx, val, params)


def _member(g: GraphModel, ctx: Context, variant: str, tag: str, make: Any, grid: tuple[float, ...]
            ) -> tuple[float, dict[str, Any]]:
    """Best c of the grid, anytime: c values run while one more run fits the model's budget (by the estimate);
    a budget that ends a run mid-way keeps the best certified value so far (naive if none)."""
    g.require_supported()
    cs = tuple(float(c) for c in ctx.opt(variant, "c_grid", grid))
    todo = [c for c in cs if ("graph-run", id(g), f"{tag}{c:g}") not in ctx.memo]
    _naive_first(g, ctx)
    est = _guard_cost(g, ctx, variant) if todo else 0.0  # one run must fit: the cap, then the budget
    best, best_c, best_info, per_c = math.inf, None, {}, {}
    stopped, t0 = None, time.perf_counter()
    for c in cs:
        memoized = ("graph-run", id(g), f"{tag}{c:g}") in ctx.memo
        if not memoized and not _fits(ctx, est):
            stopped = f"the next run (~{est:.0f} s) does not fit the {max(ctx.time_left() or 0.0, 0.0):.0f} s left"
            break
        try:
            t0 = time.perf_counter()
            v, info = _run(g, ctx, variant, f"{tag}{c:g}", make(c))
        except BudgetExceeded:
            stopped = _stopped(ctx, t0)
            break
        except Exception as e:  # noqa: BLE001 - a member that cannot certify at one c just loses that c
            if isinstance(e, Refused | TimeoutError):
                raise
            per_c[f"{c:g}"] = f"{type(e).__name__}: {e}"
            continue
        per_c[f"{c:g}"] = v
        if v < best:
            best, best_c, best_info = v, c, info
    done = {"c_done": len(per_c), "c_planned": len(cs)}
    if stopped is not None:
        done.update(partial=True, stopped=stopped, estimated_s=round(est, 1))
    if best_c is None:
        if stopped is None:
            raise engine.CertificationError(f"{variant}: no c in {cs} certified ({per_c})")
        nv, _ = naive(g, ctx)
        return _finish(g, ctx, nv, {"per_c": per_c, **done})
    params = {"c": best_c, "per_c": per_c, **done, **_clean(best_info)}
    return _finish(g, ctx, best, params)


def sh_spectral(g: GraphModel, ctx: Context) -> tuple[float, dict[str, Any]]:
    return _member(g, ctx, "sh-spectral", "sn", rule_spectral, (1.35,))  # best single c on resnet18 (bench_arch)


def sh_gershgorin(g: GraphModel, ctx: Context) -> tuple[float, dict[str, Any]]:
    return _member(g, ctx, "sh-gershgorin", "gc", rule_gershgorin, (1.0, 1.7))


def sh_shift(g: GraphModel, ctx: Context) -> tuple[float, dict[str, Any]]:
    return _member(g, ctx, "sh-shift", "shift", rule_shift, (1.5,))


def sh_combined(g: GraphModel, ctx: Context) -> tuple[float, dict[str, Any]]:
    """min over eclipse-fast, the members (their c grids) and naive: each is certified, so is the minimum.
    Anytime: members run while they fit the model's budget; the minimum of those done is returned."""
    g.require_supported()
    _naive_first(g, ctx)
    cands: dict[str, float] = {}
    errors: dict[str, str] = {}
    partial: dict[str, str] = {}
    vac = False
    order = (("naive", naive), ("eclipse-fast", eclipse_fast), ("sh-spectral", sh_spectral),
             ("sh-gershgorin", sh_gershgorin), ("sh-shift", sh_shift))
    for vid, fn in order:
        try:
            v, p = fn(g, ctx)
        except OverBudget as e:
            errors[vid] = str(e)
            continue
        except Refused as e:
            if vid == "naive":
                raise
            if vid == "eclipse-fast":
                raise Refused(f"sh-combined needs eclipse-fast: {e}") from None
            errors[vid] = str(e)
            continue
        if p.get("partial"):
            partial[vid] = str(p.get("stopped"))
        if not (p.get("partial") and p.get("c_done", p.get("runs_done", 1)) == 0):
            cands[vid] = v  # a member that finished no run only repeats naive
        vac |= bool(p.get("vacuous"))
    best = min(cands, key=cands.get)  # type: ignore[arg-type]
    out: dict[str, Any] = {"best": best, "candidates": cands, "skipped": errors, "vacuous": vac,
                           "members_done": len(cands), "members_planned": len(order)}
    if partial or any(isinstance(e, str) and e.startswith("over budget") for e in errors.values()):
        out.update(partial=True, stopped=partial or "members over budget (see skipped)")
    return cands[best], out


def _tuned(g: GraphModel, ctx: Context, v: str, certify_s: float) -> tuple[Any, dict[str, Any]]:
    """Tune the rule on the proxy within what the budget leaves after the certified run; (rule, info)."""
    from . import tune as graph_tune

    steps, lr = int(ctx.opt(v, "steps", 8)), float(ctx.opt(v, "lr", 0.05))
    c0 = float(ctx.opt(v, "c0", graph_tune.DEFAULT_C))
    pg, what = graph_tune.proxy_graph(g, int(ctx.opt(v, "proxy", 64)))
    grids, cost = engine.plan(pg, ctx.device)
    tune_flops = 3 * (steps + 1) * cost * 8 / 2  # forward + backward, complex64 at about twice the rate
    tune_s = ctx.opt(v, "tune_s", None)
    if tune_s is None:
        _guard_cost(g, ctx, v, tune_flops, what=f"tuning on {what} ({steps} steps)", budget=False)
    budget = None if tune_s is None else float(tune_s)
    left = ctx.time_left()
    info: dict[str, Any] = {"proxy": what, "steps": steps, "lr": lr}
    if left is not None:
        budget = min(budget if budget is not None else math.inf, left - 1.25 * certify_s)
        if budget <= 0:  # no time to tune: certify the untuned start (the sh-spectral member at c0)
            info.update(steps_done=0, tuning_stopped="no budget left for tuning after the certified run's estimate")
            return graph_tune.TunedRule({}, differentiable=False, c0=c0), info
    rule, tinfo = graph_tune.tune(pg, grids, ctx.device, steps, lr, budget, ctx.check_deadline,
                                  power_iters=int(ctx.opt(v, "power_iters", 20)), c0=c0)
    info.update(proxy_values=[round(x, 6) for x in tinfo["proxy_values"]], tune_seconds=tinfo["tune_seconds"],
                steps_done=max(len(tinfo["proxy_values"]) - 1, 0),
                **{k: tinfo[k] for k in ("tune_dtype", "backtracks", "tuning_stopped") if k in tinfo})
    return rule, info


def optimized(g: GraphModel, ctx: Context) -> tuple[float, dict[str, Any]]:
    """Per-channel multipliers tuned by Adam on a small-input proxy of the model (lipcore.graph_tune), then the
    certified float64 run at full size; min with the closed-form runs of this analyze() call (all certified).
    Anytime: tuning gets what the budget leaves after the certified run's estimate; a budget that ends the
    certified run returns the best certified value of this call so far."""
    g.require_supported()
    v = "optimized"
    _naive_first(g, ctx)
    est = _guard_cost(g, ctx, v)
    t0 = time.perf_counter()
    rule, params = _tuned(g, ctx, v, est)
    params["rule"] = ("per-channel Lambda = c U / lambda_max(U^1/2 Gamma U^1/2), (c, U) tuned by Adam on a "
                      "proxy, certified at full size")
    t1 = time.perf_counter()
    params["tune_seconds"] = params.get("tune_seconds", t1 - t0)
    try:
        val, info = engine.run_recursion(g, rule, ctx.device, check=ctx.check_deadline,
                                          extra=int(ctx.opt(v, "grid_extra", 0)),
                                          chunk=int(ctx.opt(v, "chunk", 1 << 25)))
        calibrate.record_run(ctx.device, float(info.get("model_flops", 0.0)),
                             float(info.get("engine_seconds", 0.0)))
        params.update(certify_seconds=time.perf_counter() - t1, **_clean(info))
    except BudgetExceeded:
        val = math.inf
        params.update(partial=True, stopped=_stopped(ctx, t1), estimated_s=round(est, 1))
    runs = {k[2]: r[0] for k, r in ctx.memo.items() if isinstance(k, tuple) and k[:2] == ("graph-run", id(g))}
    if runs and min(runs.values()) < val:
        if math.isfinite(val):
            params["tuned_value"] = val
        params["capped_by"] = min(runs, key=runs.get)  # type: ignore[arg-type]
        val = min(runs.values())
    if not math.isfinite(val):
        val = naive(g, ctx)[0]
    return _finish(g, ctx, val, params)


def _clean(info: dict[str, Any]) -> dict[str, Any]:
    out = dict(info)
    out["restarts"] = len(info.get("restarts", []))
    out["restart_nodes"] = list(info.get("restarts", []))[:20]
    return out
