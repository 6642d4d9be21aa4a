"""The registry of bound variants: id -> what it is and which function computes it.

Why a registry of import paths: the CLI, the flows and the catalog all speak in variant ids; the
functions live in the module of their family (closed_form, optimize, sdp, lower, and the graph engine for
traced models) and are imported only when used, so `lipzoo --help` stays fast and `sdp` stays optional.

Every variant function has the signature ``fn(net, ctx) -> (value, params)`` and raises
`Refused(reason)` when it declines, `CertificationError` when its certificate fails.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .errors import BudgetExceeded


@dataclass(frozen=True)
class VariantSpec:
    id: str
    kind: Literal["upper", "lower"]
    mlp_fn: str | None
    graph_fn: str | None
    description: str
    needs_sdp: bool = False
    options: Mapping[str, str] = field(default_factory=dict)  # option key -> what it sets (the only keys read)

    def resolve(self, graph: bool) -> Callable[..., tuple[float, dict[str, Any]]] | None:
        path = self.graph_fn if graph else self.mlp_fn
        if path is None:
            return None
        mod, _, fn = path.partition(":")
        return getattr(importlib.import_module(mod), fn)


def _v(id: str, kind: str, mlp: str | None, graph: str | None, desc: str, sdp: bool = False,
       options: Mapping[str, str] | None = None) -> VariantSpec:
    return VariantSpec(id, kind, mlp, graph, desc, sdp, dict(options or {}))  # type: ignore[arg-type]


# Every option a variant reads is declared here, once: manifests and `analyze(options=...)` are checked against
# these tables (an unknown key is an error naming the close match), and `Context.opt` refuses to read a key its
# variant does not declare, so the tables cannot drift from the code.
_GRAPH_RUN = {
    "grid_extra": "graph engine: extra pixels added to every lifted grid (default 0)",
    "chunk": "graph engine: entries per batched frequency chunk, i.e. peak working memory (default 2^25)",
    "max_est_s": "graph engine: refuse when the estimated run time exceeds this many seconds",
}
_MEMBER = {
    "c_grid": "the member's c values (a number or a list); the best certified one is reported",
    "keep_p": "MLPs: keep the storage matrices of the best c for sh-combined's reuse (default true)",
    **_GRAPH_RUN,
}
_OPTIMIZED = {
    "steps": "gradient steps (MLPs: at most; graphs: Adam steps on the proxy)",
    "lr": "step size",
    "rtol": "MLPs: relative improvement that counts as progress",
    "patience": "MLPs: steps without progress before the step size halves",
    "halvings": "MLPs: step-size halvings before stopping",
    "max_seconds": "MLPs: tuning time limit in seconds",
    "proxy": "graphs: input size of the tuning proxy",
    "tune_s": "graphs: tuning time limit in seconds (overrides the cost refusal)",
    "power_iters": "graphs: power iterations per lambda_max while tuning",
    "c0": "graphs: the starting c",
    **_GRAPH_RUN,
}
_SDP = {
    "max_neurons": "refuse above this many neurons (the solver's memory grows as its square)",
    "max_seconds": "refuse when the solve is estimated above this many seconds",
    "time_limit": "the solver's own wall-clock limit in seconds",
    "solver": "cvxpy solver name (default CLARABEL)",
}
_LOWER = {
    "dtype": "float32 or float64 for the sampled forward passes (the best point is re-measured in float64)",
    "scale": "per-entry RMS of the random inputs (default 1)",
    "spread": "inputs are drawn at RMS from scale/spread to scale*spread",
    "full_jacobian_max": "use full Jacobians when min(inputs, outputs) is at most this",
}
_SAMPLED = {"samples": "number of random inputs", "power_iters": "power iterations per input (when not full)",
            "batch": "inputs per batch"}


VARIANTS: dict[str, VariantSpec] = {v.id: v for v in [
    _v("naive", "upper", "lipcore.mlp.closed_form:naive", "lipcore.graph.bounds:naive",
       "product of layer spectral norms times activation gains"),
    _v("eclipse-fast", "upper", "lipcore.mlp.closed_form:eclipse_fast", "lipcore.graph.bounds:eclipse_fast",
       "ECLipsE-Fast (Xu & Sivaranjani 2024): Lambda = I / lambda_max(G)", options=_GRAPH_RUN),
    _v("sh-spectral", "upper", "lipcore.mlp.closed_form:sh_spectral", "lipcore.graph.bounds:sh_spectral",
       "Syed-Hu scalar member: Lambda = c I / lambda_max(G), best c on a grid in (0, 2)", options=_MEMBER),
    _v("sh-gershgorin", "upper", "lipcore.mlp.closed_form:sh_gershgorin", "lipcore.graph.bounds:sh_gershgorin",
       "Syed-Hu Gershgorin member: Lambda_ii = c / sum_j |G_ij|, best c on a grid in (0, 2)", options=_MEMBER),
    _v("sh-shift", "upper", "lipcore.mlp.closed_form:sh_shift", "lipcore.graph.bounds:sh_shift",
       "Syed-Hu shift member: Lambda_ii = 1 / (G_ii/2 + c ||offdiag(G)/2||), best c > 1 on a grid", options=_MEMBER),
    _v("sh-combined", "upper", "lipcore.mlp.closed_form:sh_combined", "lipcore.graph.bounds:sh_combined",
       "minimum over the Syed-Hu family (c grids, per-layer greedy mixing) and naive",
       options={"greedy": "MLPs: also run the per-layer greedy mix of the members (default true)",
                "candidates": "MLPs: the greedy mix's candidate rules, e.g. ['sn:1', 'gc:1.7']"}),
    _v("optimized", "upper", "lipcore.mlp.optimize:optimized", "lipcore.graph.bounds:optimized",
       "SDP-free: complete (c, U) parameterisation of admissible Lambda tuned by gradient descent "
       "(traced models: one U entry per channel, tuned on a small-input proxy)",
       options=_OPTIMIZED),
    _v("lipsdp-neuron", "upper", "lipcore.mlp.sdp:lipsdp_neuron", None,
       "LipSDP-Neuron (Fazlyab et al. 2019), certified by re-running the recursion", sdp=True, options=_SDP),
    _v("lipsdp-layer", "upper", "lipcore.mlp.sdp:lipsdp_layer", None,
       "LipSDP-Layer: one multiplier per layer, certified", sdp=True, options=_SDP),
    _v("eclipse", "upper", "lipcore.mlp.sdp:eclipse", None,
       "ECLipsE: one small SDP per layer (Xu & Sivaranjani 2024), certified", sdp=True, options=_SDP),
    _v("lower-sampled", "lower", "lipcore.lower:lower_sampled", "lipcore.lower:lower_sampled",
       "largest Jacobian spectral norm over random inputs (a lower bound)", options={**_LOWER, **_SAMPLED}),
    _v("lower-ascent", "lower", "lipcore.lower:lower_ascent", "lipcore.lower:lower_ascent",
       "gradient ascent on the local Lipschitz ratio (a lower bound)",
       options={**_LOWER, "starts": "ascent starts (the best sampled points)", "steps": "pair-ratio ascent steps",
                "jv_steps": "J(x)v ascent steps", "lr": "step size relative to the input scale",
                "radius": "fixed pair distance (default: a spread of radii)", "power_iters": "power iterations"}),
]}

UPPER = [k for k, v in VARIANTS.items() if v.kind == "upper"]


def option_errors(options: Mapping[str, Any]) -> list[str]:
    """What is wrong with a per-variant options table (unknown variant, non-table, undeclared key), each with the
    closest known name; empty when it is valid."""
    from difflib import get_close_matches

    def close(word: str, known: Any) -> str:
        m = get_close_matches(word, sorted(known), n=1, cutoff=0.6)
        return f" (did you mean {m[0]!r}?)" if m else ""

    errs = []
    for vid, table in options.items():
        if vid not in VARIANTS:
            errs.append(f"options.{vid}: unknown variant{close(vid, VARIANTS)}; known: {', '.join(VARIANTS)}")
        elif not isinstance(table, Mapping):
            errs.append(f"options.{vid} must be a table of option = value, got {table!r}")
        else:
            declared = VARIANTS[vid].options
            errs += [f"options.{vid}.{k}: unknown option{close(k, declared)}; {vid} reads: "
                     f"{', '.join(sorted(declared)) or 'no options'}" for k in table if k not in declared]
    return errs
LOWER = [k for k, v in VARIANTS.items() if v.kind == "lower"]
DEFAULT_VARIANTS = list(VARIANTS)


@dataclass
class Context:
    """What every variant function gets beside the network: device, seed, deadline, options, shared memo.

    `memo` lets variants in one analyze() call share work (sh-combined reuses the members, optimized warm
    starts from the best closed-form multipliers).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    deadline: float | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)

    def opt(self, variant: str, key: str, default: Any) -> Any:
        spec = VARIANTS.get(variant)
        if spec is None or key not in spec.options:
            raise KeyError(f"variant {variant!r} reads option {key!r}, which it does not declare: add it to its "
                           "options in lipcore/variants.py")
        return self.options.get(variant, {}).get(key, default)

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise BudgetExceeded("time budget exceeded")

    def time_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def expired(self) -> bool:
        """The deadline has passed (never, without one): where work that already measured something stops."""
        return self.deadline is not None and time.monotonic() > self.deadline
