"""Closed-form bound variants: naive, ECLipsE-Fast and the Syed–Hu family (SN, Gershgorin, Shift, combined).

Why these shapes: each member is one rule for the diagonal multipliers of the certified recursion
(`lipcore.recursion`); a single member with a fixed c is data dependent and can exceed naive (theory §4), so each
member reports its best c over a grid in its admissible range, and `sh_combined` takes the minimum of everything
computed in this analyze() call (members, per-layer greedy mixing, ECLipsE-Fast = SN(1), naive). The Syed–Hu rules
are reconstructed from the paper's abstract and a third-party implementation (theory §0), each proven valid here.

`ctx.memo["traj"]` maps a trajectory name to its certified `Trajectory`: sh_combined reuses the members' runs and
`optimized` warm-starts from the best one.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import CertificationError
from ..variants import Context
from .network import MLP
from .recursion import SN1, Rule, Trajectory, naive_lower_log, naive_value, run_greedy, run_greedy_beside, run_rule

SN_GRID = (0.7, 1.0, 1.2, 1.35, 1.5, 1.65)
GC_GRID = (0.8, 1.0, 1.3, 1.5, 1.7, 1.85, 1.95, 1.99)
SHIFT_GRID = (1.1, 1.3, 1.5, 1.7, 2.0, 2.5)
GREEDY_CANDIDATES = ("sn:1.0", "sn:1.5", "gc:1.7", "shift:1.5:weyl")  # the first one also seeds the probe block


def _memo(ctx: Context) -> dict[str, Trajectory]:
    return ctx.memo.setdefault("traj", {})


def _store(ctx: Context, key: str, traj: Trajectory) -> Trajectory:
    _memo(ctx)[key] = traj
    return traj


def _naive(net: MLP, ctx: Context) -> float:
    if "naive" not in ctx.memo:
        ctx.memo["naive"] = naive_value(net, ctx.device)
    return ctx.memo["naive"][0]


def naive(net: MLP, ctx: Context) -> tuple[float, dict[str, Any]]:
    """∏‖W_k‖₂ · ∏ max(|α_k|, |β_k|): always valid, the ceiling every other bound should beat."""
    _naive(net, ctx)
    return ctx.memo["naive"][0], {"log_value": float(f"{ctx.memo['naive'][1]:.6g}")}


def _neg_modes(net: MLP) -> list[str]:
    """αβ < 0 has two valid ways to pick Λ (recursion.Recursion.mode); neither dominates, so run both."""
    return ["schur", "backtrack"] if any(a.p < 0 for a in net.activations) else ["schur"]


def _fast_traj(net: MLP, ctx: Context) -> Trajectory:
    t = _memo(ctx).get("eclipse-fast")
    if t is None:
        # p dropped for αβ ≥ 0 exactly as the eclipse-nn package does; for αβ < 0 (which the package refuses) the
        # p-term is kept and the better of the Schur form and backtracking is reported
        runs = [run_rule(net, SN1, device=ctx.device, keep_p=False, check=ctx.check_deadline, neg_mode=mode)
                for mode in _neg_modes(net)]
        t = _store(ctx, "eclipse-fast", min(runs, key=lambda r: r.value))
    return t


def eclipse_fast(net: MLP, ctx: Context) -> tuple[float, dict[str, Any]]:
    """ECLipsE-Fast (Xu & Sivaranjani 2024) = SN(c=1): Λ_k = I/λ_max(Γ̂_k)."""
    t = _fast_traj(net, ctx)
    return t.value, {"c": 1.0, **t.params()}


def _grid(ctx: Context, variant: str, default: tuple[float, ...]) -> list[float]:
    grid = ctx.opt(variant, "c_grid", default)
    return [float(c) for c in (grid if isinstance(grid, list | tuple) else [grid])]


def _member(net: MLP, ctx: Context, variant: str, kind: str, default: tuple[float, ...],
            shift_variant: str = "norm") -> tuple[float, dict[str, Any]]:
    keep_p = bool(ctx.opt(variant, "keep_p", True))
    best: tuple[float, float, Trajectory] | None = None
    failures = []
    for c, mode in [(c, mode) for c in _grid(ctx, variant, default) for mode in _neg_modes(net)]:
        rule = Rule(kind, c, shift_variant)
        rule.validate()
        key = f"{variant}:{rule.name}:{'p' if keep_p else 'nop'}" + ("" if mode == "schur" else ":bt")
        traj = _memo(ctx).get(key)
        if traj is None:
            try:
                traj = _store(ctx, key, run_rule(net, rule, device=ctx.device, keep_p=keep_p,
                                                 check=ctx.check_deadline, neg_mode=mode))
            except CertificationError as e:
                failures.append(f"c={c:g}: {e}")
                continue
        if best is None or traj.value < best[0]:
            best = (traj.value, c, traj)
    if best is None:
        raise CertificationError("; ".join(failures) or "empty c grid")
    value, c, traj = best
    out = {"c": c, **traj.params()}
    if failures:
        out["failed_c"] = len(failures)
    nv = _naive(net, ctx)
    if value > nv:
        out["above_naive"] = True
    return value, out


def sh_spectral(net: MLP, ctx: Context) -> tuple[float, dict[str, Any]]:
    """Syed–Hu scalar member SN(c): Λ_k = c/λ_max(Γ̂_k)·I, best c in (0, 2) on a grid."""
    return _member(net, ctx, "sh-spectral", "sn", SN_GRID)


def sh_gershgorin(net: MLP, ctx: Context) -> tuple[float, dict[str, Any]]:
    """Syed–Hu Gershgorin member GC(c): Λ_ii = c/Σ_j|Γ̂_ij|, best c in (0, 2) on a grid."""
    return _member(net, ctx, "sh-gershgorin", "gc", GC_GRID)


def sh_shift(net: MLP, ctx: Context) -> tuple[float, dict[str, Any]]:
    """Syed–Hu shift member: Λ_ii = 1/(Γ̂_ii/2 + c‖offdiag(Γ̂)/2‖₂), best c > 1 on a grid."""
    return _member(net, ctx, "sh-shift", "shift", SHIFT_GRID)


def _parse_candidates(spec: Any) -> list[Rule]:
    rules = []
    for item in spec:
        parts = item.split(":") if isinstance(item, str) else list(item)
        rules.append(Rule(str(parts[0]), float(parts[1]), *(str(x) for x in parts[2:3])))
    return rules


def sh_combined(net: MLP, ctx: Context) -> tuple[float, dict[str, Any]]:
    """min over every certified trajectory of this call (members' c grids, ECLipsE-Fast, greedy mixing) and naive.

    Each entry is a valid bound, so the minimum is; SN(1) = ECLipsE-Fast is always included (≤ ECLipsE-Fast) and
    naive is in the min (never above naive). The greedy trajectory picks per layer the candidate with the best
    one-step look-ahead (theory §5).
    """
    greedy = ctx.opt("sh-combined", "greedy", True) and "greedy" not in _memo(ctx)
    cands = _parse_candidates(ctx.opt("sh-combined", "candidates", GREEDY_CANDIDATES)) if greedy else []
    if greedy and "eclipse-fast" not in _memo(ctx) and all(a.p >= 0 for a in net.activations):
        try:  # ECLipsE-Fast and the greedy mix in lockstep, batched: about the cost of the greedy mix alone
            traj, fast = run_greedy_beside(net, cands, SN1, device=ctx.device, check=ctx.check_deadline)
            _store(ctx, "eclipse-fast", fast)
            _store(ctx, "greedy", traj)
        except CertificationError:
            pass
    _fast_traj(net, ctx)
    if greedy and "greedy" not in _memo(ctx):
        try:
            _store(ctx, "greedy", run_greedy(net, cands, device=ctx.device, check=ctx.check_deadline))
        except CertificationError:
            pass
    name, traj = min(_memo(ctx).items(), key=lambda kv: kv[1].value)
    fast = _memo(ctx)["eclipse-fast"].value
    # exact naive only when the cheap lower estimate cannot already show traj ≤ naive
    if "naive" in ctx.memo or not traj.log_value < naive_lower_log(net, ctx.device):
        nv = _naive(net, ctx)
        if nv < traj.value:
            return nv, {"best": "naive", "vs_fast": _ratio(nv, fast), "candidates": len(_memo(ctx)) + 1}
    out: dict[str, Any] = {"best": name, "vs_fast": _ratio(traj.value, fast), "candidates": len(_memo(ctx)) + 1,
                           **traj.params()}
    if name == "greedy":
        counts: dict[str, int] = {}
        for ch in traj.choices:
            counts[ch] = counts.get(ch, 0) + 1
        out["greedy_choices"] = counts
    return traj.value, out


def _ratio(a: float, b: float) -> float | None:
    return float(f"{a / b:.6g}") if b > 0 and math.isfinite(a / b) else None


def best_trajectory(net: MLP, ctx: Context) -> tuple[str, Trajectory]:
    """The best certified closed-form trajectory of this call, computing ECLipsE-Fast and greedy if none exist."""
    if not _memo(ctx) or ("greedy" not in _memo(ctx) and len(_memo(ctx)) < 2):
        sh_combined(net, ctx)
    return min(_memo(ctx).items(), key=lambda kv: kv[1].value)
