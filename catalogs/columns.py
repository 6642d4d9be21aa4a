"""ResultRow batches -> column arrays, the shape the single writer hands to DuckDB in one statement.

Why columns: DuckDB inserts a registered dict of NumPy arrays at ~1 M rows/s, while `executemany` costs
~1 ms per row and binding Python lists as LIST parameters ~15 us per value (measured, 100k rows).
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from operator import attrgetter
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


_ENCODE_LAX = json.JSONEncoder(sort_keys=True, default=str).encode
try:  # one reusable C encoder: JSONEncoder.encode builds a new one per call (~40% of the cost for small dicts)
    from json.encoder import c_make_encoder, encode_basestring_ascii

    if c_make_encoder is None:
        raise ImportError
    _C_ENCODER = c_make_encoder(None, str, encode_basestring_ascii, None, ": ", ", ", True, False, False)

    def _ENCODE(obj: Any) -> str:  # noqa: N802
        return "".join(_C_ENCODER(obj, 0))
except ImportError:  # pragma: no cover - pure-Python json
    _ENCODE = json.JSONEncoder(sort_keys=True, default=str, allow_nan=False).encode


def dump_json(obj: Any) -> str | None:
    if obj is None:
        return None
    if not obj:
        return "{}"
    try:
        return _ENCODE(obj)
    except ValueError:
        return _ENCODE_LAX(_clean(obj))


_FIELDS = ("model_id", "hub", "repo_id", "revision", "variant", "kind", "status", "value", "reason", "seconds",
           "vacuous", "device", "params", "architecture", "weights_digest", "engine_version", "lipzoo_version",
           "run_id", "flow_run_id", "computed_at")
_GET = attrgetter(*_FIELDS)


def _epoch_us(stamps: Sequence[datetime]) -> np.ndarray:
    try:  # fast path: aware datetimes (what ResultRow makes)
        us = [(d - _EPOCH) // _US for d in stamps]
    except TypeError:  # some naive ones: UTC by convention
        us = [epoch_us(d) for d in stamps]
    return np.array(us, dtype=np.int64)


def _obj(seq: Sequence[Any]) -> np.ndarray:
    a = np.empty(len(seq), dtype=object)
    a[:] = seq
    return a


def rows_to_columns(rows: Sequence[ResultRow], run_id: str | None, lipzoo_version: str) -> dict[str, np.ndarray]:
    """Validate a batch and turn it into column arrays (plus `ord`, the row's position in the batch).

    Duplicated keys (model_id, revision, variant, engine_version) keep the last row. An `ok` row without a
    finite value is stored as `failed` (never as a bound); an unknown kind/status or a missing key is a
    programming error and raises ValueError naming the row.
    """
    # the cyclic GC would rescan the ~100k fresh tuples/strings many times over: it doubles the cost
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _rows_to_columns(rows, run_id, lipzoo_version)
    finally:
        if was_enabled:
            gc.enable()


def _rows_to_columns(rows: Sequence[ResultRow], run_id: str | None, lipzoo_version: str) -> dict[str, np.ndarray]:
    cols = dict(zip(_FIELDS, (list(c) for c in zip(*map(_GET, rows), strict=True)), strict=True))
    n = len(rows)
    for name in ("model_id", "revision", "variant"):
        if not all(cols[name]):
            i = next(i for i, v in enumerate(cols[name]) if not v)
            r = rows[i]
            raise ValueError(f"result row needs model_id, revision and variant (got {r.model_id!r}, "
                             f"{r.revision!r}, {r.variant!r})")
    if not set(cols["kind"]) <= set(KINDS) or not set(cols["status"]) <= set(STATUSES):
        r = next(r for r in rows if r.kind not in KINDS or r.status not in STATUSES)
        raise ValueError(f"{r.model_id}@{r.revision} variant {r.variant}: kind={r.kind!r} status={r.status!r} "
                         f"(expected kind in {KINDS}, status in {STATUSES})")

    value = np.array([np.nan if v is None else v for v in cols["value"]], dtype=np.float64)
    finite = np.isfinite(value)
    if not finite.all():
        status, reason = cols["status"], cols["reason"]
        for i in np.flatnonzero(~finite):
            if status[i] == "ok":
                v = cols["value"][i]
                status[i] = "failed"
                reason[i] = "ok result without a value" if v is None else f"non-finite value {v} reported as ok"
        value[~finite] = np.nan  # NaN -> NULL in DuckDB's NumPy scan (inf would be stored)

    engine = [e or "" for e in cols["engine_version"]]
    keys = list(zip(cols["model_id"], cols["revision"], cols["variant"], engine, strict=True))
    keep: np.ndarray | None = None
    if len(set(keys)) != n:
        keep = np.array(sorted({k: i for i, k in enumerate(keys)}.values()), dtype=np.int64)

    out: dict[str, np.ndarray] = {
        name: _obj(cols[name]) for name in STRING_FIELDS
        if name not in ("engine_version", "lipzoo_version", "run_id")
    }
    out["engine_version"] = _obj(engine)
    out["lipzoo_version"] = _obj([v or lipzoo_version for v in cols["lipzoo_version"]])
    out["run_id"] = np.full(n, run_id, dtype=object) if run_id else _obj(cols["run_id"])
    out["value"] = value
    out["seconds"] = np.array([s or 0.0 for s in cols["seconds"]], dtype=np.float64)
    out["vacuous"] = np.array(cols["vacuous"], dtype=bool)
    out["params"] = _obj([dump_json(p) for p in cols["params"]])
    out["computed_at"] = _epoch_us(cols["computed_at"]).view("datetime64[us]")
    out["ord"] = np.arange(n, dtype=np.int64)
    if keep is not None:
        out = {k: v[keep] for k, v in out.items()}
    return out
