"""References to models, the only thing flows pass between tasks (never a module or a tensor).

Why references: a task that gets `ModelRef(hub, repo_id, revision, ...)` fetches the weights itself (the
HF cache makes a second fetch free), so tasks stay small to ship to a thread, a Dask worker or a GPU host,
and the catalog key (model, revision, variant, engine version) is known before any weight is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelRef:
    """One model at one revision on one hub.

    `revision`: HF commit sha, timm pretrained ``<hf id>@<sha>`` or ``random-init:seed=N:timm=V``, a local
    file's content digest, a benchmark net's weight digest. `location`: where the hub fetches it from (a
    local file path, an HF endpoint URL, ...); not part of the identity.
    """

    hub: str
    repo_id: str
    revision: str
    architecture: str | None = None
    location: str | None = field(default=None, compare=False)

    @property
    def model_id(self) -> str:
        return f"{self.hub}:{self.repo_id}"

    def __str__(self) -> str:
        return f"{self.model_id}@{self.revision[:12]}"


@dataclass(frozen=True)
class Unresolved:
    """A zoo entry's model that could not be resolved to a revision (missing repo, listing failed)."""

    hub: str
    repo_id: str
    reason: str

    @property
    def model_id(self) -> str:
        return f"{self.hub}:{self.repo_id}"


@dataclass
class Settings:
    """How to bound a model: what the zoo entry (or the CLI) asked for. Plain values only (picklable)."""

    variants: tuple[str, ...]
    device: str = "auto"
    budget_s: float | None = None
    input_shape: tuple[int, ...] | None = None
    activation: str | None = None
    slope: tuple[float, float] | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    hub_options: dict[str, Any] = field(default_factory=dict)  # hub-specific (pretrained, seed, endpoint, ...)
    certify: dict[str, Any] = field(default_factory=dict)  # eval / preprocess / eps / certify_variants (issue 14)


@dataclass
class Job:
    """What one `bound_model` task gets: a reference and the variants still missing for it."""

    ref: ModelRef
    settings: Settings

    @property
    def model_id(self) -> str:
        return self.ref.model_id


@dataclass
class Loaded:
    """What a hub's `fetch` hands to lipcore: a module, an MLP or a weight-file path, plus what it learned."""

    target: Any
    input_shape: tuple[int, ...] | None = None
    activation: str | None = None
    architecture: str | None = None
    weights_digest: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
