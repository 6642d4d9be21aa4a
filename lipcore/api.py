"""`analyze`: one call from a model or weight file to a Report with every requested bound variant."""

from __future__ import annotations

import logging
import math
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
from .variants import DEFAULT_VARIANTS, VARIANTS, Context
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
                input_shape: Sequence[int] | None = None, name: str | None = None) -> Any:
    """Turn a module, a weight file or a list of matrices into what the variants bound (an MLP or a graph)."""
    from .mlp import loaders

    if isinstance(source, MLP):
        return source
    if isinstance(source, nn.Module):
        try:
            return loaders.mlp_from_module(source, name=name, input_shape=input_shape)
        except loaders.NotAnMLP as not_mlp:
            try:
                from . import graph
            except ImportError:
                raise not_mlp from None
            return graph.build_graph(source, input_shape=input_shape, name=name)
    return loaders.load(source, activation=activation, slope=slope, name=name)


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
) -> Report:
    """Bound a model with every requested variant.

    `model_or_weights`: a torch.nn.Module, a path (.npz, .mat, .safetensors, .pt), a list of weight
    matrices, or an `MLP`. Files carry no activation: give `activation` ("relu", "leaky_relu:0.1", ...) or
    `slope=(alpha, beta)`. Raises `InputError` (one line naming the model) when the input cannot be bounded;
    a variant that declines or fails becomes a `refused`/`failed` result instead, never an exception.
    """
    dev = resolve_device(device)
    ids = _validate_variants(variants)
    if name is None and isinstance(model_or_weights, str | Path):
        name = Path(model_or_weights).name
    target = load_target(model_or_weights, activation=activation, slope=slope, input_shape=input_shape, name=name)
    is_graph = not isinstance(target, MLP)
    ctx = Context(device=dev, seed=seed, options=dict(options or {}),
                  deadline=None if budget_s is None else time.monotonic() + budget_s)
    results: dict[str, BoundResult] = {}
    for vid in ids:
        spec = VARIANTS[vid]
        res = BoundResult(variant=vid, kind=spec.kind, status="failed")
        t0 = time.perf_counter()
        try:
            ctx.check_deadline()
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
            res.status, res.reason = "failed", str(e)
        except ImportError as e:
            res.status, res.reason = "refused", (
                f"missing optional dependency ({e.name or e}); pip install 'lipzoo[sdp]'")
        except (InputError, ValueError, RuntimeError, np.linalg.LinAlgError, torch.linalg.LinAlgError) as e:
            res.status, res.reason = "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        res.seconds = time.perf_counter() - t0
        results[vid] = res
        if progress is not None:
            progress(vid, res)
    _soundness_guard(results)
    return Report(model=getattr(target, "name", name or "model"), results=results, device=str(dev),
                  engine_version=ENGINE_VERSION, summary=target.summary())


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
