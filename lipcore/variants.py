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
from collections.abc import Callable
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

    def resolve(self, graph: bool) -> Callable[..., tuple[float, dict[str, Any]]] | None:
        path = self.graph_fn if graph else self.mlp_fn
        if path is None:
            return None
        mod, _, fn = path.partition(":")
        return getattr(importlib.import_module(mod), fn)


def _v(id: str, kind: str, mlp: str | None, graph: str | None, desc: str, sdp: bool = False) -> VariantSpec:
    return VariantSpec(id, kind, mlp, graph, desc, sdp)  # type: ignore[arg-type]


VARIANTS: dict[str, VariantSpec] = {v.id: v for v in [
    _v("naive", "upper", "lipcore.mlp.closed_form:naive", "lipcore.graph.bounds:naive",
       "product of layer spectral norms times activation gains"),
    _v("eclipse-fast", "upper", "lipcore.mlp.closed_form:eclipse_fast", "lipcore.graph.bounds:eclipse_fast",
       "ECLipsE-Fast (Xu & Sivaranjani 2024): Lambda = I / lambda_max(G)"),
    _v("sh-spectral", "upper", "lipcore.mlp.closed_form:sh_spectral", "lipcore.graph.bounds:sh_spectral",
       "Syed-Hu scalar member: Lambda = c I / lambda_max(G), best c on a grid in (0, 2)"),
    _v("sh-gershgorin", "upper", "lipcore.mlp.closed_form:sh_gershgorin", "lipcore.graph.bounds:sh_gershgorin",
       "Syed-Hu Gershgorin member: Lambda_ii = c / sum_j |G_ij|, best c on a grid in (0, 2)"),
    _v("sh-shift", "upper", "lipcore.mlp.closed_form:sh_shift", "lipcore.graph.bounds:sh_shift",
       "Syed-Hu shift member: Lambda_ii = 1 / (G_ii/2 + c ||offdiag(G)/2||), best c > 1 on a grid"),
    _v("sh-combined", "upper", "lipcore.mlp.closed_form:sh_combined", "lipcore.graph.bounds:sh_combined",
       "minimum over the Syed-Hu family (c grids, per-layer greedy mixing) and naive"),
    _v("optimized", "upper", "lipcore.mlp.optimize:optimized", "lipcore.graph.bounds:optimized",
       "SDP-free: complete (c, U) parameterisation of admissible Lambda tuned by gradient descent "
       "(traced models: one U entry per channel, tuned on a small-input proxy)"),
    _v("lipsdp-neuron", "upper", "lipcore.mlp.sdp:lipsdp_neuron", None,
       "LipSDP-Neuron (Fazlyab et al. 2019), certified by re-running the recursion", sdp=True),
    _v("lipsdp-layer", "upper", "lipcore.mlp.sdp:lipsdp_layer", None,
       "LipSDP-Layer: one multiplier per layer, certified", sdp=True),
    _v("eclipse", "upper", "lipcore.mlp.sdp:eclipse", None,
       "ECLipsE: one small SDP per layer (Xu & Sivaranjani 2024), certified", sdp=True),
    _v("lower-sampled", "lower", "lipcore.lower:lower_sampled", "lipcore.lower:lower_sampled",
       "largest Jacobian spectral norm over random inputs (a lower bound)"),
    _v("lower-ascent", "lower", "lipcore.lower:lower_ascent", "lipcore.lower:lower_ascent",
       "gradient ascent on the local Lipschitz ratio (a lower bound)"),
]}

UPPER = [k for k, v in VARIANTS.items() if v.kind == "upper"]
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
        return self.options.get(variant, {}).get(key, default)

    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise BudgetExceeded("time budget exceeded")

    def time_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()
