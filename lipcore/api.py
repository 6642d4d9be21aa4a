"""`analyze`: one call from a model or weight file to a Report with every requested bound variant."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import BudgetExceeded, CertificationError, InputError, Refused
from .mlp.network import MLP
from .report import BoundResult, Report
from .variants import DEFAULT_VARIANTS, VARIANTS, Context, option_errors
from .version import ENGINE_VERSION

log = logging.getLogger("lipcore")

# A lower bound is a measured value; an upper bound below it (beyond float noise) proves a bug.
SOUNDNESS_RTOL = 1e-6


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' picks cuda when available; asking for cuda without it is an error the user can act on."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available here; use --device cpu or auto")
    return dev


def _validate_variants(variants: Iterable[str] | None) -> list[str]:
    vs = list(DEFAULT_VARIANTS if variants is None else variants)
    unknown = [v for v in vs if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    # run in registry order: members before their combination, closed forms before the optimizer
    return [v for v in VARIANTS if v in set(vs)]


def load_target(source: Any, *, activation: str | None = None, slope: Sequence[float] | None = None,
                input_shape: Sequence[int] | None = None, name: str | None = None, bn_eps: float | None = None
                ) -> Any:
    """Turn a module, a weight file or a list of matrices into what the variants bound (an MLP or a graph)."""
    from .mlp import loaders

    if isinstance(source, MLP):
        return source.normalised()
    trace = sys.modules.get("lipcore.graph.trace")  # a traced graph exists only once its module is loaded
    if trace is not None and isinstance(source, trace.GraphModel):
        return source  # already traced (a caller that planned from the graph): no second trace
    if isinstance(source, nn.Module):
        try:
            return loaders.mlp_from_module(source, name=name, input_shape=input_shape).normalised()
        except loaders.NotAnMLP as not_mlp:
            try:
                from . import graph
            except ImportError:
                raise not_mlp from None
            return graph.build_graph(source, input_shape=input_shape, name=name)
    return loaders.load(source, activation=activation, slope=slope, name=name, bn_eps=bn_eps).normalised()


def analyze(
    model_or_weights: Any,
    variants: Iterable[str] | None = None,
    device: str | torch.device | None = "cpu",
    *,
    activation: str | None = None,
    slope: Sequence[float] | None = None,
    input_shape: Sequence[int] | None = None,
    name: str | None = None,
    budget_s: float | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    progress: Callable[[str, BoundResult], None] | None = None,
    bn_eps: float | None = None,
) -> Report:
    """Bound a model with every requested variant.

    `model_or_weights`: a torch.nn.Module, a path (.npz, .mat, .safetensors, .pt), a list of weight
    matrices, or an `MLP`. Files carry no activation: give `activation` ("relu", "leaky_relu:0.1", ...) or
    `slope=(alpha, beta)`. A weight file does not store BatchNorm's eps: give `bn_eps`, else the bound holds
    for every eps >= 0 and the report's summary names that assumption. Raises `InputError` (one line naming
    the model) when the input cannot be bounded; a variant that declines or fails becomes a `refused`/`failed`
    result instead, never an exception.
    """
    dev = resolve_device(device)
    ids = _validate_variants(variants)
    errs = option_errors(options or {})
    if errs:
        raise ValueError("; ".join(errs))
    if name is None and isinstance(model_or_weights, str | Path):
        name = Path(model_or_weights).name
    ctx = Context(device=dev, seed=seed, options=dict(options or {}),
                  deadline=None if budget_s is None else time.monotonic() + budget_s)
    results = preload_refusals(model_or_weights, ids, ctx)  # refused from the file's shapes, before loading
    for vid, res in results.items():
        if progress is not None:
            progress(vid, res)
    if len(results) == len(ids):
        return Report(model=name or "model", results=results, device=str(dev), engine_version=ENGINE_VERSION,
                      summary={"layer_shapes": [list(map(int, sh)) for sh in weight_shapes(model_or_weights) or []]})
    target = load_target(model_or_weights, activation=activation, slope=slope, input_shape=input_shape, name=name,
                         bn_eps=bn_eps)
    is_graph = not isinstance(target, MLP)
    for vid in [v for v in ids if v not in results]:
        spec = VARIANTS[vid]
        res = BoundResult(variant=vid, kind=spec.kind, status="failed")
        t0 = time.perf_counter()
        try:
            if ctx.expired():
                raise Refused(f"not started: the {budget_s:.3g} s budget was spent by the variants before it")
            if not is_graph:
                resource_guard([w.shape for w in target.weights], vid, spec.kind, ctx)
            fn = spec.resolve(is_graph)
            if fn is None:
                raise Refused(f"{vid} is only available for plain MLPs")
            value, params = fn(target, ctx)
            value = float(value)
            if not (math.isfinite(value) and value >= 0):
                raise CertificationError(f"non-finite or negative value {value}")
            res.status, res.value, res.params = "ok", value, dict(params or {})
            res.vacuous = bool(res.params.pop("vacuous", False))
        except Refused as e:
            res.status, res.reason = "refused", str(e)
        except CertificationError as e:
            res.status, res.reason = "failed", f"certification failed: {e}"
        except BudgetExceeded as e:
            res.status, res.reason = "failed", f"{e} after {time.perf_counter() - t0:.1f} s" + (
                f" (the whole analysis had {budget_s:.3g} s)" if budget_s is not None else "")
        except ImportError as e:
            res.status, res.reason = "refused", (
                f"missing optional dependency ({e.name or e}); pip install 'lipzoo[sdp]'")
        except (InputError, ValueError, RuntimeError, np.linalg.LinAlgError, torch.linalg.LinAlgError) as e:
            res.status, res.reason = "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        res.seconds = time.perf_counter() - t0
        results[vid] = res
        if progress is not None:
            progress(vid, res)
    results = {vid: results[vid] for vid in ids}  # registry order, whichever were refused before loading
    _soundness_guard(results)
    return Report(model=getattr(target, "name", name or "model"), results=results, device=str(dev),
                  engine_version=ENGINE_VERSION, summary=target.summary())


# -- resource guard (issue 16) ----------------------------------------------------------------------------------
# Estimated from the shapes alone, before any dense linear algebra: a variant whose estimate exceeds the memory
# available (MemAvailable, or LIPZOO_MAX_MEMORY_GB when lower) or the time left of the budget is refused with
# the estimate at once, never an out-of-memory kill or a silent hour of eigendecompositions.
DENSE_COPIES = 6  # n x n float64 blocks alive at once in the recursion (G, M, its Cholesky factor, workspaces)
CALIBRATION_WIDTH = 768  # the synthetic net timed once per machine for the MLP guard's rate (3 layers, ~0.5 s)


def _recursion_flops(shapes: Sequence[tuple[int, ...]]) -> float:
    """The guard's cost model of one recursion (Gram, factorisation, rule): 2 a^2 b + 4 a^3 per (a, b) layer."""
    return sum(2.0 * a * a * b + 4.0 * a ** 3 for a, b in shapes)


def _time_recursion(device: torch.device) -> float:
    """Cost-model flops per second of one ECLipsE-Fast recursion here (best of three on a synthetic net)."""
    from .activations import get_activation
    from .mlp.recursion import SN1, run_rule

    n = CALIBRATION_WIDTH
    rng = np.random.default_rng(0)
    net = MLP([rng.standard_normal((n, n)) / math.sqrt(n) for _ in range(3)] + [rng.standard_normal((1, n))],
              [get_activation("relu")] * 3)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        run_rule(net, SN1, device=device, keep_p=False)
        best = min(best, time.perf_counter() - t0)
    return _recursion_flops([w.shape for w in net.weights]) / max(best, 1e-6)


def mlp_rate(device: torch.device) -> float:
    """The MLP guard's flop rate on this device: measured once (`_time_recursion`) and cached by lipcore.calibrate."""
    from . import calibrate

    return calibrate.dense_rate(device, _time_recursion).flops_per_s


def available_memory_bytes() -> float:
    cap = os.environ.get("LIPZOO_MAX_MEMORY_GB")
    avail = math.inf
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = float(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if cap:
        try:
            avail = min(avail, float(cap) * 2**30)
        except ValueError:
            pass
    return avail


def estimate_work(shapes: Sequence[tuple[int, ...]], kind: str, ctx: Context, variant: str) -> tuple[float, float]:
    """(bytes, cost-model flops) a variant needs on an MLP with these (out, in) weight shapes."""
    wbytes = sum(a * b for a, b in shapes) * 8.0
    if kind == "lower":
        if variant == "lower-ascent":
            passes = float(ctx.opt(variant, "starts", 16)) * (float(ctx.opt(variant, "steps", 200))
                                                              + float(ctx.opt(variant, "jv_steps", 100)))
        else:
            passes = float(ctx.opt(variant, "samples", 256))
        iters = float(ctx.opt(variant, "power_iters", 30))
        return wbytes + 256 * 8.0 * sum(a + b for a, b in shapes) * 4, passes * iters * 4.0 * sum(
            a * b for a, b in shapes)
    n = max(max(a, b) for a, b in shapes)
    return wbytes + DENSE_COPIES * 8.0 * n * n, _recursion_flops(shapes)


def estimate_cost(shapes: Sequence[tuple[int, ...]], kind: str, ctx: Context, variant: str) -> tuple[float, float]:
    """(bytes, seconds at this machine's measured rate) a variant needs on an MLP with these weight shapes."""
    nbytes, flops = estimate_work(shapes, kind, ctx, variant)
    return nbytes, flops / mlp_rate(ctx.device)


def weight_shapes(source: Any) -> list[tuple[int, int]] | None:
    """The 2-D weight shapes of a list of matrices, an .npz file or an MLP's .safetensors state dict (read from
    the headers, nothing loaded); None when the source is anything else."""
    try:
        if isinstance(source, list | tuple) and source and all(hasattr(w, "shape") for w in source):
            shapes = [tuple(int(d) for d in w.shape) for w in source]
        elif isinstance(source, str | Path) and str(source).lower().endswith(".npz") and Path(source).is_file():
            import zipfile

            shapes = []
            with zipfile.ZipFile(source) as z:
                for info in z.infolist():
                    if info.filename.startswith("W") and info.filename.endswith(".npy"):
                        with z.open(info) as fh:
                            version = np.lib.format.read_magic(fh)
                            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                    else np.lib.format.read_array_header_2_0)
                            shape = read(fh)[0]
                        shapes.append(tuple(int(d) for d in shape))
        elif isinstance(source, str | Path) and str(source).lower().endswith(".safetensors") and Path(source).is_file():
            from safetensors import safe_open

            with safe_open(str(source), "numpy") as fh:  # the JSON header only
                dims = [fh.get_slice(k).get_shape() for k in fh.keys()]  # noqa: SIM118
            if any(len(d) > 2 for d in dims):  # not a plain MLP state dict: the loader decides what it is
                return None
            shapes = [tuple(int(x) for x in d) for d in dims if len(d) == 2]
        else:
            return None
    except Exception:  # unreadable: the loader says what is wrong
        return None
    return shapes if shapes and all(len(sh) == 2 for sh in shapes) else None


def preload_refusals(source: Any, ids: list[str], ctx: Context) -> dict[str, BoundResult]:
    """The requested variants refused from the file's shapes alone, before anything is loaded (a 20000-wide layer
    is refused in a second, not after minutes of reading and converting 3 GB)."""
    shapes = weight_shapes(source)
    out: dict[str, BoundResult] = {}
    for vid in ids if shapes else ():
        try:
            resource_guard(shapes, vid, VARIANTS[vid].kind, ctx)
        except Refused as e:
            out[vid] = BoundResult(variant=vid, kind=VARIANTS[vid].kind, status="refused", reason=str(e))
    return out


def _gib(b: float) -> str:
    g = b / 2**30
    return f"{g:.1f}" if g >= 1 else f"{g:.2f}"


def resource_guard(shapes: Sequence[tuple[int, ...]], variant: str, kind: str, ctx: Context) -> None:
    """Raise Refused (with the estimate) when the variant would not fit in memory or (upper bounds) in the
    time left of the budget."""
    nbytes, flops = estimate_work(shapes, kind, ctx, variant)
    avail = available_memory_bytes()
    widest = max(max(sh) for sh in shapes)
    if nbytes > 0.8 * avail:
        raise Refused(f"needs ~{_gib(nbytes)} GiB (dense float64 work on layers up to {widest} wide) but "
                      f"{_gib(avail)} GiB is available (LIPZOO_MAX_MEMORY_GB caps it); ~{flops / 1e12:.3g} TFLOP")
    left = ctx.time_left()
    # lower bounds stop at the deadline with what they measured (a partial sample is still a lower bound); the
    # rate is measured (once per machine) only when there is a budget to compare with
    if kind != "upper" or left is None:
        return
    rate = mlp_rate(ctx.device)
    secs = flops / rate
    if secs > left:
        raise Refused(f"over budget: estimated {secs:.0f} s here (~{flops / 1e12:.3g} TFLOP at the measured "
                      f"{rate / 1e9:.0f} GFLOP/s; layers up to {widest} wide, ~{nbytes / 2**30:.1f} GiB) exceeds the "
                      f"{left:.0f} s left of the budget")


def _soundness_guard(results: dict[str, BoundResult]) -> None:
    """Never publish an upper bound below a measured lower bound: that is a bug, report it as one."""
    lows = [r.value for r in results.values() if r.kind == "lower" and r.status == "ok" and r.value is not None]
    if not lows:
        return
    lb = max(lows)
    for r in results.values():
        if r.kind == "upper" and r.status == "ok" and r.value is not None and r.value < lb * (1 - SOUNDNESS_RTOL):
            log.error("unsound bound %s=%g below lower bound %g", r.variant, r.value, lb)
            r.params["uncertified_value"] = r.value
            r.status, r.value = "failed", None
            r.reason = f"internal error: value below the measured lower bound {lb:.6g} (please report this bug)"
