"""Default variant sets per kind of model, fitted to a time budget: the cheapest certified bounds first, then the
tighter ones while the budget allows, and a reason for every variant left out.

Why a plan before the run: lipcore runs the variants in registry order and its guards refuse a variant only when
its own estimate exceeds the time *left*; a user with a budget wants to know up front which bounds fit, and the
lower bounds (which run last) must keep a share of the budget. The estimates are lipcore's own: the MLP resource
guard's (`lipcore.api.estimate_cost`) and the graph engine's dry-run plan (`engine.plan`, the cost the graph
variants' guard uses). Every variant that runs is still certified (or refused) by lipcore itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# graphs: naive -> ECLipsE-Fast -> the best single member (sh-spectral at c = 1.35 on resnet18, bench_arch) ->
# optimized (tuned on a proxy, certified at full size), then both lower bounds
GRAPH_DEFAULT = ("naive", "eclipse-fast", "sh-spectral", "optimized", "lower-sampled", "lower-ascent")
# a traced model's forward passes are far dearer than an MLP's: the default lower bounds sample less (any number
# of samples is a valid lower bound); options the user gives win
GRAPH_LOWER_OPTIONS: dict[str, dict[str, Any]] = {
    "lower-sampled": {"samples": 8, "power_iters": 8, "batch": 2},
    "lower-ascent": {"starts": 1, "steps": 10, "jv_steps": 10, "power_iters": 8},
}
LOWER_SHARE = 0.25  # of a budget kept for the lower bounds, which run after every upper bound
# the estimates assume an idle machine (the graph guard's measured flop rate); a variant is admitted when SAFETY
# times its estimate still fits, so a loaded machine does not turn the last admitted bound into a timeout
SAFETY = 2.0
SKIPPED = "skipped: budget"


@dataclass
class Plan:
    """The variants to run (registry order), those left out with why, and the estimates behind it."""

    run: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    estimates: dict[str, float] = field(default_factory=dict)  # upper variant -> estimated seconds
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    upper_budget_s: float | None = None  # the share of the budget the upper bounds run under


def is_graph(net: Any) -> bool:
    """A traced graph, as opposed to an MLP or an MLP's list of (out, in) weight shapes."""
    from lipcore.mlp.network import MLP

    return not isinstance(net, MLP | list)


def default_variants(net: Any) -> list[str]:
    """MLPs: every variant (the `lipzoo bound` default); traced graphs: GRAPH_DEFAULT."""
    from lipcore.variants import DEFAULT_VARIANTS

    return list(GRAPH_DEFAULT) if is_graph(net) else list(DEFAULT_VARIANTS)


def _graph_run_seconds(net: Any, device: Any) -> float | None:
    """Seconds of one full recursion on the graph (the graph guard's estimate), None when it cannot say."""
    try:
        import torch

        from lipcore import calibrate
        from lipcore.graph import engine

        _, cost = engine.plan(net, device)
        return float(cost) * 8 / calibrate.engine_rate(torch.device(device)).flops_per_s
    except Exception:  # noqa: BLE001 - an unsupported graph: every upper variant refuses it by itself
        return None


_GRAPH_RUNS = {"eclipse-fast": {"sn1"}, "sh-spectral": {"sn1.35"}, "sh-gershgorin": {"gc1", "gc1.7"},
               "sh-shift": {"shift1.5"}, "sh-combined": {"sn1", "sn1.35", "gc1", "gc1.7", "shift1.5"},
               "optimized": {"opt"}}


def estimates(net: Any, ids: list[str], device: Any, options: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Estimated seconds of each upper variant in `ids`, in order, counting a recursion run that an earlier variant
    already did (lipcore memoises them within one call) as free."""
    from lipcore.api import estimate_cost
    from lipcore.variants import VARIANTS, Context

    out: dict[str, float] = {}
    ctx = Context(device=device, options=options)
    if not is_graph(net):
        shapes = net if isinstance(net, list) else [tuple(w.shape) for w in net.weights]
        for vid in ids:
            if VARIANTS[vid].kind == "upper":
                out[vid] = estimate_cost(shapes, "upper", ctx, vid)[1]  # lipcore's guard charges naive too
        return out
    one = _graph_run_seconds(net, device)
    done: set[str] = set()
    for vid in ids:
        if VARIANTS[vid].kind != "upper":
            continue
        if vid == "naive" or one is None:
            out[vid] = 0.0
            continue
        runs = _GRAPH_RUNS.get(vid, {vid})
        grid = (options.get(vid) or {}).get("c_grid")
        n = len(grid) if isinstance(grid, list | tuple) else (1 if grid is not None else len(runs - done))
        secs = n * one
        if vid == "optimized":  # tuning: forward + backward per step on (at most) the full-size model
            steps = int((options.get(vid) or {}).get("steps", 8))
            secs = one * (1 + 1.5 * (steps + 1))
        out[vid] = secs
        done |= runs
    return out


def plan(net: Any, ids: list[str] | None, device: Any, budget_s: float | None,
         options: dict[str, dict[str, Any]] | None = None) -> Plan:
    """Which variants to run. `ids` None: the default set for this kind of model (with the graph lower-bound
    options unless the user set them). With a budget, upper variants are admitted in order while the sum of SAFETY
    times their estimates fits in (1 - LOWER_SHARE) of it; the rest are skipped with their estimate. No budget: all
    of them, nothing estimated."""
    from lipcore.api import _validate_variants
    from lipcore.variants import VARIANTS

    opts = {k: dict(v) for k, v in (options or {}).items()}
    if ids is None:
        ids = default_variants(net)
        if is_graph(net):
            for vid, defaults in GRAPH_LOWER_OPTIONS.items():
                opts[vid] = {**defaults, **opts.get(vid, {})}
    ids = _validate_variants(ids)
    if budget_s is None:  # nothing to fit: no estimate (the graph's dry run) is paid for
        return Plan(run=list(ids), options=opts)
    est = estimates(net, ids, device, opts)
    out = Plan(run=[], estimates=est, options=opts)
    room = (1 - LOWER_SHARE) * budget_s if any(VARIANTS[v].kind == "lower" for v in ids) else budget_s
    out.upper_budget_s = room
    used = 0.0
    for vid in ids:
        secs = est.get(vid)
        if secs is None:  # lower bounds stop at the deadline with what they measured
            out.run.append(vid)
            continue
        if used + SAFETY * secs <= room:
            used += SAFETY * secs
            out.run.append(vid)
        else:
            left = max(0.0, room - used)
            out.skipped[vid] = (f"{SKIPPED} (estimated {_secs(secs)}, {_secs(left)} of the {budget_s:g} s budget "
                                f"left for upper bounds; raise --budget)")
    return out


def split(ids: list[str]) -> tuple[list[str], list[str]]:
    """(upper variants, lower variants), each in the given order."""
    from lipcore.variants import VARIANTS

    return [v for v in ids if VARIANTS[v].kind == "upper"], [v for v in ids if VARIANTS[v].kind == "lower"]


def merge(parts: list[Any]) -> Any:
    """One Report from the upper-bound and the lower-bound runs of one model, checked like a single run (no upper
    bound below a measured lower bound)."""
    from lipcore.api import _soundness_guard
    from lipcore.report import Report
    from lipcore.variants import VARIANTS

    results = {k: r for part in parts for k, r in part.results.items()}
    results = {v: results[v] for v in VARIANTS if v in results}
    _soundness_guard(results)
    first = parts[0]
    summary = next((p.summary for p in parts if p.summary), {})
    return Report(model=first.model, results=results, device=first.device, engine_version=first.engine_version,
                  summary=summary)


def _secs(s: float) -> str:
    if not math.isfinite(s):
        return "unbounded time"
    return f"~{s:.2g} s" if s < 10 else f"~{s:.0f} s"
