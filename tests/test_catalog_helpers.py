"""Row builders shared by the catalog tests (real DuckDB files in tmp dirs; nothing mocked)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from catalogs import ResultRow

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(model: str, variant: str, value: float | None, *, kind: str = "upper", status: str = "ok",
        revision: str = "r0", hub: str = "hf", engine: str = "1", day: float = 0.0, **kw: Any) -> ResultRow:
    return ResultRow(model_id=f"{hub}:{model}", hub=hub, repo_id=model, revision=revision, variant=variant,
                     kind=kind, status=status, value=value, engine_version=engine,  # type: ignore[arg-type]
                     computed_at=T0 + timedelta(days=day), **kw)


def model_rows(model: str, upper: dict[str, float], lower: dict[str, float] | None = None,
               **kw: Any) -> list[ResultRow]:
    out = [row(model, v, x, **kw) for v, x in upper.items()]
    out += [row(model, v, x, kind="lower", **kw) for v, x in (lower or {}).items()]
    return out


def big_batch(n_models: int, variants: int = 12, revision: str = "r0", engine: str = "1") -> list[ResultRow]:
    """n_models x variants rows (the last two variants are lower bounds), deterministic values."""
    rows = []
    for m in range(n_models):
        for v in range(variants):
            lower = v >= variants - 2
            rows.append(ResultRow(
                model_id=f"hf:org/m{m:06d}", hub="hf" if m % 3 else "timm", repo_id=f"org/m{m:06d}",
                revision=revision, variant=f"v{v:02d}", kind="lower" if lower else "upper", status="ok",
                value=(0.5 if lower else 1.0 + v) * (1 + m % 97), engine_version=engine, seconds=0.01,
                params={"iters": v}, computed_at=T0 + timedelta(seconds=m)))
    return rows
