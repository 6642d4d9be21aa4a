"""ResultRow batches -> column arrays, the shape the single writer hands to DuckDB in one statement.

Why columns: DuckDB inserts a registered dict of NumPy arrays at ~1 M rows/s, while `executemany` costs
~1 ms per row and binding Python lists as LIST parameters ~15 us per value (measured, 100k rows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from .rows import ResultRow

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
KINDS = ("upper", "lower")
STATUSES = ("ok", "refused", "failed")

# column name -> ResultRow attribute (the writer's staging relation has exactly these columns)
STRING_FIELDS = ["model_id", "hub", "repo_id", "revision", "variant", "kind", "status", "reason", "device",
                 "architecture", "weights_digest", "engine_version", "lipzoo_version", "run_id", "flow_run_id"]


def to_utc(dt: datetime) -> datetime:
    """Naive datetimes are taken as UTC (lipzoo only ever produces aware UTC ones)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def epoch_us(dt: datetime) -> int:
    return (to_utc(dt) - _EPOCH) // _US


def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become strings ('nan', 'inf'); DuckDB's JSON type rejects NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def dump_json(obj: Any) -> str | None:
    if obj is None:
        return None
    if not obj:
        return "{}"
    try:
        return json.dumps(obj, sort_keys=True, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_clean(obj), sort_keys=True, default=str)


def rows_to_columns(rows: Sequence[ResultRow], run_id: str | None, lipzoo_version: str) -> dict[str, np.ndarray]:
    """Validate a batch and turn it into column arrays (plus `ord`, the row's position: the last duplicate wins).

    An `ok` row without a finite value is stored as `failed` (never as a bound); an unknown kind/status is a
    programming error and raises ValueError naming the model.
    """
    n = len(rows)
    cols: dict[str, list[Any]] = {f: [None] * n for f in STRING_FIELDS}
    value = np.full(n, np.nan)
    seconds = np.zeros(n)
    vacuous = np.zeros(n, dtype=bool)
    params: list[str | None] = [None] * n
    computed = np.empty(n, dtype=np.int64)
    for i, r in enumerate(rows):
        kind, status = r.kind, r.status
        if kind not in KINDS or status not in STATUSES:
            raise ValueError(f"{r.model_id}@{r.revision} variant {r.variant}: kind={kind!r} status={status!r} "
                             f"(expected kind in {KINDS}, status in {STATUSES})")
        if not r.model_id or not r.revision or not r.variant:
            raise ValueError(f"result row needs model_id, revision and variant (got {r.model_id!r}, "
                             f"{r.revision!r}, {r.variant!r})")
        reason = r.reason
        v = r.value
        if v is not None:
            v = float(v)
            if math.isfinite(v):
                value[i] = v
            elif status == "ok":
                status, reason = "failed", f"non-finite value {v} reported as ok"
        elif status == "ok":
            status, reason = "failed", "ok result without a value"
        cols["model_id"][i] = r.model_id
        cols["hub"][i] = r.hub
        cols["repo_id"][i] = r.repo_id
        cols["revision"][i] = r.revision
        cols["variant"][i] = r.variant
        cols["kind"][i] = kind
        cols["status"][i] = status
        cols["reason"][i] = reason
        cols["device"][i] = r.device
        cols["architecture"][i] = r.architecture
        cols["weights_digest"][i] = r.weights_digest
        cols["engine_version"][i] = r.engine_version or ""
        cols["lipzoo_version"][i] = r.lipzoo_version or lipzoo_version
        cols["run_id"][i] = run_id or r.run_id
        cols["flow_run_id"][i] = r.flow_run_id
        seconds[i] = r.seconds or 0.0
        vacuous[i] = bool(r.vacuous)
        params[i] = dump_json(r.params)
        computed[i] = epoch_us(r.computed_at)
    out: dict[str, np.ndarray] = {k: np.array(v, dtype=object) for k, v in cols.items()}
    out["value"] = value  # NaN -> NULL in DuckDB's NumPy scan
    out["seconds"] = seconds
    out["vacuous"] = vacuous
    out["params"] = np.array(params, dtype=object)
    out["computed_at"] = computed.view("datetime64[us]")
    out["ord"] = np.arange(n, dtype=np.int64)
    return out
