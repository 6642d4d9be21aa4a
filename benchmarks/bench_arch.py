"""Architectures benchmark: certified bounds of timm models (random weights) through the graph engine.

    python -m benchmarks.bench_arch [--models resnet18,vgg11] [--quick] [--device cpu|cuda] [--budget 900]

Upper variants: naive, eclipse-fast, sh-spectral (c = 1.35) and optimized (per-channel multipliers tuned on a 64-px
proxy of the model, certified at full size; refused where the proxy's tuning cost is above the guard).
Prints, per model: status (ok / ok+vacuous / refused with the operator), naive, best certified bound (variant),
lower bound, naive/best, seconds of eclipse-fast, of the best variant and in total; and PASS/FAIL for the resnet18
target (the best certified bound >= 1000x below naive, computed in < 180 s on CPU). Torch uses every core of the
machine unless --threads says otherwise (the per-frequency linear algebra is batched BLAS/LAPACK).
Engine line per model (issue 13): eclipse-fast's seconds per phase, the flops the engine counted (FlopCounter:
products, Cholesky, triangular solves) per second, and that rate against a float64 GEMM rate measured in the
same run, before and after the model (the ratio is the figure of merit: it holds across machines and loads);
also the plan's cost model (8 F c^3 per activation) per second, the figure issue 13 quotes; and the resnet18
engine target (one eclipse-fast run <= 20 s, engine >= 35 % of the GEMM rate by the cost model).
Models are created with pretrained=False and torch.manual_seed(0); weights that timm
initialises to zero (Mixer/ResMLP heads, the last BN gamma of each ResNet block) are re-drawn (flows.inits.reinit_zero).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from flows.inits import reinit_zero as _reinit_zero  # the timm hub's reinit_zero draw, shared

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ALL = ["resnet18", "resnet50", "vgg11", "mobilenetv2_100", "mobilenetv3_small_100", "efficientnet_b0",
       "mixer_s16_224", "resmlp_12_224", "vit_tiny_patch16_224"]
QUICK = ["mobilenetv3_small_100", "efficientnet_b0", "vit_tiny_patch16_224", "mixer_s16_224", "resmlp_12_224"]
TARGET = ("resnet18", 1000.0, 180.0)
ENGINE_TARGET = ("resnet18", 20.0, 0.35)  # one eclipse-fast run <= 20 s, >= 35 % of the GEMM rate (cost model)


def gemm_rate(device: str, n: int = 2048, reps: int = 3) -> float:
    """float64 GEMM GFLOP/s on this device now (best of `reps`): the reference the engine's rate is read against."""
    import torch

    a = torch.randn(n, n, dtype=torch.float64, device=device)
    best = float("inf")
    for _ in range(reps + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ a
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


def engine_line(name: str, ef, g0: float, g1: float) -> tuple[str, bool | None]:  # noqa: ANN001 - a Result
    """eclipse-fast's phases, counted and cost-model GFLOP/s against the GEMM rate; the engine target's verdict."""
    p = ef.params if ef is not None and ef.status == "ok" else {}
    if "phases" not in p:
        return f"{'':24s}   engine: no eclipse-fast run ({ef.status if ef is not None else '-'})", None
    gemm = (g0 + g1) / 2
    secs = float(p["engine_seconds"])
    rate, model = p["flops"] / secs / 1e9, p["model_flops"] / secs / 1e9
    phases = ", ".join(f"{k} {v:.1f}" for k, v in p["phases"].items())
    line = (f"{'':24s}   engine (eclipse-fast): {secs:.1f} s = {phases}; {p['flops'] / 1e9:.0f} GFLOP counted = "
            f"{rate:.1f} GFLOP/s, float64 GEMM {gemm:.1f} GFLOP/s (before {g0:.1f}, after {g1:.1f}): "
            f"{100 * rate / gemm:.0f} %; cost model {p['model_flops'] / 1e12:.3f} TFLOP = {model:.1f} GFLOP/s = "
            f"{100 * model / gemm:.0f} %")
    ok = None
    if name == ENGINE_TARGET[0]:
        ok = secs <= ENGINE_TARGET[1] and model / gemm >= ENGINE_TARGET[2]
        line += (f"\n{'':24s}   target {name}: one eclipse-fast run <= {ENGINE_TARGET[1]:g} s at >= "
                 f"{100 * ENGINE_TARGET[2]:.0f} % of GEMM: {'PASS' if ok else 'FAIL'} ({secs:.1f} s, "
                 f"{100 * model / gemm:.0f} %)")
    return line, ok


def _lower_opts(quick: bool) -> dict:
    if quick:
        return {"lower-sampled": {"samples": 2, "power_iters": 3, "batch": 2},
                "lower-ascent": {"starts": 1, "steps": 3, "jv_steps": 3, "power_iters": 3}}
    return {"lower-sampled": {"samples": 4, "power_iters": 5, "batch": 2},
            "lower-ascent": {"starts": 1, "steps": 5, "jv_steps": 5, "power_iters": 5}}


def run(models: list[str], device: str, budget: float, quick: bool, members: bool, engine_only: bool = False) -> int:
    import timm
    import torch

    import lipcore

    variants = ["naive", "eclipse-fast", "sh-spectral", "optimized", "lower-sampled", "lower-ascent"]
    if engine_only:  # the engine measurement alone: one propagation, its naive cap and a cheap lower bound
        variants = ["naive", "eclipse-fast", "lower-sampled"]
    if members:
        variants.insert(3, "sh-combined")
    opts = _lower_opts(quick)
    # family members run only where one full propagation is cheap; one c each (sh-spectral: its default)
    for v, grid in (("sh-spectral", None), ("sh-gershgorin", [1.7]), ("sh-shift", [1.5])):
        opts[v] = {"max_est_s": 60.0 if quick else 300.0, **({"c_grid": grid} if grid else {})}
    opts["eclipse-fast"] = {"max_est_s": budget}  # the per-model budget is the only limit on the engine line
    head = (f"{'model':24s} {'status':44s} {'naive':>11s} {'best certified':>26s} {'lower':>10s} "
            f"{'naive/best':>10s} {'s(ef)':>7s} {'s(best)':>7s} {'s(total)':>8s}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}", flush=True)
    print(head)
    print("-" * len(head), flush=True)
    verdict = 0
    for name in models:
        torch.manual_seed(0)
        g0 = gemm_rate(device)
        t0 = time.perf_counter()
        try:
            m = timm.create_model(name, pretrained=False)
            _reinit_zero(m)
            rep = lipcore.analyze(m, variants, device=device, name=name, options=opts, budget_s=budget)
        except Exception as e:  # noqa: BLE001 - a benchmark row, not a crash
            print(f"{name:24s} FAILED: {type(e).__name__}: {e}", flush=True)
            verdict = 1
            continue
        total = time.perf_counter() - t0
        g1 = gemm_rate(device)
        res = rep.results
        best = rep.best_upper()
        low = rep.best_lower()
        nv = res["naive"]
        ef = res["eclipse-fast"]
        failed = [k for k, r in res.items() if r.status == "failed"]
        if failed:
            status = "FAILED " + ",".join(failed) + ": " + (res[failed[0]].reason or "")[:40]
            verdict = 1
        elif best is None:
            status = "refused: " + (nv.reason or ef.reason or "")
        else:
            status = "ok+vacuous" if best.vacuous else "ok"
            if ef.status == "refused":
                status += " (eclipse-fast refused: cost)" if "TFLOP" in (ef.reason or "") else " (eclipse-fast refused)"
        nvs = f"{nv.value:.4g}" if nv.value is not None else "-"
        bs = f"{best.value:.4g} ({best.variant})" if best is not None else "-"
        lbs = f"{low.value:.4g}" if low is not None else "-"
        ratio = nv.value / best.value if best is not None and nv.value and best.value else float("nan")
        bsec = best.seconds if best is not None else float("nan")
        print(f"{name:24s} {status[:44]:44s} {nvs:>11s} {bs:>26s} {lbs:>10s} {ratio:10.1f} {ef.seconds:7.1f} "
              f"{bsec:7.1f} {total:8.1f}", flush=True)
        if len(status) > 44:
            print(f"{'':24s}   {status}", flush=True)
        eline, eok = engine_line(name, ef, g0, g1)
        print(eline, flush=True)
        if eok is False:
            verdict = 1
        if best is not None and low is not None and best.value < low.value:
            print(f"{'':24s}   UNSOUND: best {best.value} < lower {low.value}", flush=True)
            verdict = 1
        if name == TARGET[0] and not engine_only:
            ok = best is not None and ratio >= TARGET[1] and bsec < TARGET[2]
            print(f"{'':24s}   target {TARGET[0]}: naive/best >= {TARGET[1]:g} in < {TARGET[2]:g} s on CPU: "
                  f"{'PASS' if ok else 'FAIL'} (ratio {ratio:.0f} with {best.variant if best else '-'} in "
                  f"{bsec:.0f} s; eclipse-fast ratio {nv.value / ef.value if ef.value else float('nan'):.0f} in "
                  f"{ef.seconds:.0f} s; {ef.params.get('restarts', '?')} restarts, grids "
                  f"{ef.params.get('grids', {})})", flush=True)
            if not ok:
                verdict = 1
    return verdict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help="comma-separated timm names (default: all nine)")
    ap.add_argument("--quick", action="store_true", help="cheap models only, tiny lower-bound budgets")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", type=float, default=1200.0, help="seconds per model")
    ap.add_argument("--members", action="store_true", help="also run sh-combined (one propagation per member)")
    ap.add_argument("--engine-only", action="store_true",
                    help="naive, eclipse-fast and lower-sampled only: the engine line (the 1000x target is skipped)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    models = a.models.split(",") if a.models else (QUICK if a.quick else ALL)
    return run(models, a.device, a.budget, a.quick, a.members, a.engine_only)


if __name__ == "__main__":
    sys.exit(main())
