"""The row contract between flows (which produce results) and the catalog (which stores them).

One `ResultRow` per (model, revision, variant) computed in a run. The writer takes a batch of these and
commits them in one transaction; upserts are keyed by (model_id, revision, variant, engine_version).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ResultRow:
    model_id: str  # stable identity across revisions: f"{hub}:{repo_id}", e.g. "hf:org/mlp", "timm:resnet18"
    hub: str  # "hf" | "timm" | "local"
    repo_id: str  # hub-specific id: HF repo, timm model name, or the file path relative to the local root
    revision: str  # HF commit sha, timm pretrained tag / "random-init:seed=0", local content digest
    variant: str  # a lipcore variant id ("eclipse-fast", "lower-ascent", ...) or "*" for a whole-model failure
    kind: Literal["upper", "lower"]
    status: Literal["ok", "refused", "failed"]
    value: float | None = None
    reason: str | None = None
    seconds: float = 0.0
    vacuous: bool = False
    device: str = "cpu"
    params: dict[str, Any] = field(default_factory=dict)
    architecture: str | None = None
    weights_digest: str | None = None
    engine_version: str = ""
    lipzoo_version: str = ""
    run_id: str | None = None
    flow_run_id: str | None = None
    computed_at: datetime = field(default_factory=utcnow)
