"""The plain result objects lipcore returns (no Prefect, no DuckDB: flows and catalogs consume these)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "refused", "failed"]
Kind = Literal["upper", "lower"]


@dataclass
class BoundResult:
    """One variant's outcome. `value` is None unless status is ok.

    `kind` says whether the value is a certified upper bound or a measured lower bound; `vacuous` marks an
    upper bound that is certified but meaningless in practice (e.g. LayerNorm's max|gamma|/sqrt(eps)).
    """

    variant: str
    kind: Kind
    status: Status
    value: float | None = None
    seconds: float = 0.0
    reason: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    vacuous: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["value"] is not None and not math.isfinite(d["value"]):
            d["value"] = None
        return d


@dataclass
class Report:
    """Every requested variant's result for one model, plus a summary of what was bounded."""

    model: str
    results: dict[str, BoundResult]
    device: str = "cpu"
    engine_version: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    def ok(self, kind: Kind) -> dict[str, BoundResult]:
        return {k: r for k, r in self.results.items() if r.kind == kind and r.status == "ok"}

    def best_upper(self) -> BoundResult | None:
        """The smallest certified, non-vacuous upper bound (vacuous ones only if nothing else is there)."""
        ups = self.ok("upper")
        real = [r for r in ups.values() if not r.vacuous] or list(ups.values())
        return min(real, key=lambda r: r.value, default=None)  # type: ignore[arg-type,return-value]

    def best_lower(self) -> BoundResult | None:
        return max(self.ok("lower").values(), key=lambda r: r.value, default=None)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "device": self.device,
            "engine_version": self.engine_version,
            "summary": self.summary,
            "results": {k: r.to_dict() for k, r in self.results.items()},
        }

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), default=str, **kw)
