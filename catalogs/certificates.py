"""Certificate rows (issue 14): the write (upsert) and the reads behind `leaderboard --by certified-accuracy`,
`history` and the report. The math lives in flows/certify.py; this module only stores and queries.

Upsert key: (model_id, revision, scope, engine_version, dataset_digest, preprocess). Writing the same key again
replaces the row (a new bound for the same key means a recomputation); new data or new preprocessing is a new
key, and `current_certificates` keeps the newest per (model, revision, scope).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb

from .queries import fetch_dicts

COLUMNS = ["model_id", "revision", "scope", "variant", "engine_version", "dataset", "dataset_digest", "preprocess",
           "eps_units", "bound", "n", "clean_accuracy", "median_radius", "eps", "certified_accuracy", "margins",
           "seconds", "lipzoo_version", "run_id", "computed_at", "written_at"]


@dataclass
class CertificateRow:
    model_id: str
    revision: str
    scope: str  # 'best' or a variant id
    variant: str  # the variant whose bound was used
    engine_version: str
    dataset: str
    dataset_digest: str
    preprocess: str  # JSON of {"mean","std"} or "none"
    eps_units: str  # 'raw' | 'normalised'
    bound: float
    n: int
    clean_accuracy: float
    median_radius: float
    eps: list[float]
    certified_accuracy: list[float]
    margins: list[float]
    seconds: float = 0.0
    lipzoo_version: str = ""
    run_id: str | None = None
    computed_at: datetime = field(default_factory=lambda: datetime.now(UTC))


_INSERT = (f"INSERT OR REPLACE INTO certificates ({', '.join(COLUMNS)}) VALUES "
           f"({', '.join('$' + str(i + 1) for i in range(len(COLUMNS)))})")


def write(con: duckdb.DuckDBPyConnection, rows: list[CertificateRow], run_id: str | None) -> int:
    """Upsert `rows` inside the caller's transaction."""
    now = datetime.now(UTC)
    for r in rows:
        vals = [getattr(r, c) for c in COLUMNS[:-1]]
        vals[COLUMNS.index("run_id")] = run_id or r.run_id
        con.execute(_INSERT, [*vals, now])
    return len(rows)


def existing(con: duckdb.DuckDBPyConnection, model_id: str, revision: str) -> list[dict[str, Any]]:
    """Current certificates of one revision (without margins): what an audit compares against."""
    return fetch_dicts(con.execute(
        "SELECT scope, variant, bound, engine_version, dataset_digest, preprocess, eps FROM current_certificates "
        "WHERE model_id = $1 AND revision = $2", [model_id, revision]))


def bounds_of(con: duckdb.DuckDBPyConnection, model_id: str, revision: str) -> dict[str, Any]:
    """{'best': (variant, value, engine, vacuous) or None, variant: (variant, value, engine, vacuous)} of the
    revision's usable certified upper bounds (newest engine per variant)."""
    rows = con.execute(
        "SELECT variant, value, engine_version, vacuous FROM current_results WHERE model_id = $1 AND revision = $2 "
        "AND kind = 'upper' AND status = 'ok' AND value IS NOT NULL AND isfinite(value) AND value > 0",
        [model_id, revision]).fetchall()
    out: dict[str, Any] = {v: (v, float(val), eng, bool(vac)) for v, val, eng, vac in rows}
    real = [t for t in out.values() if not t[3]]
    pool = real or list(out.values())
    out["best"] = min(pool, key=lambda t: (t[1], t[0])) if pool else None
    return out


def _eps_expr(eps: float) -> str:
    # certified at eps  <=>  margin > sqrt(2) * bound * eps  (and margin > 0)
    return (f"list_count(list_filter(c.margins, lambda m: m > 0 AND m > sqrt(2) * c.bound * {float(eps)!r})) "
            f"/ c.n")


def leaderboard(con: duckdb.DuckDBPyConnection, eps: float, hub: str | None = None,
                top: int | None = None) -> list[dict[str, Any]]:
    """Latest revision of every model with a best-bound certificate, ranked by certified accuracy at `eps`
    (computed from the stored margins, so any eps works); ties share a rank."""
    where = "AND m.hub = $1" if hub else ""
    sql = f"""
    SELECT rank() OVER (ORDER BY certified_accuracy DESC) AS rank, * FROM (
        SELECT c.model_id, m.hub, m.repo_id, c.revision, CAST({float(eps)!r} AS DOUBLE) AS eps,
            {_eps_expr(eps)} AS certified_accuracy,
            c.clean_accuracy, c.median_radius, c.bound, c.variant, c.eps_units, c.dataset, c.n, c.engine_version
        FROM current_certificates c
        SEMI JOIN latest_revisions lr ON lr.model_id = c.model_id AND lr.revision = c.revision
        JOIN models m ON m.model_id = c.model_id
        WHERE c.scope = 'best' {where})
    ORDER BY rank, model_id"""
    rows = fetch_dicts(con.execute(sql, [hub] if hub else []))
    return rows[:top] if top else rows


def history(con: duckdb.DuckDBPyConnection, model_id: str) -> list[dict[str, Any]]:
    """Every current certificate of `model_id` across revisions (oldest revision first), without margins."""
    return fetch_dicts(con.execute(
        "SELECT c.revision, rv.first_seen AS revision_seen, c.scope, c.variant, c.bound, c.dataset, c.eps_units, "
        "c.n, c.clean_accuracy, c.median_radius, c.eps, c.certified_accuracy, c.engine_version, c.computed_at "
        "FROM current_certificates c JOIN revisions rv ON rv.model_id = c.model_id AND rv.revision = c.revision "
        "WHERE c.model_id = $1 ORDER BY rv.first_seen, c.revision, c.scope", [model_id]))


def curves(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Best-bound certificates at each model's latest revision with margins (for the report's figures)."""
    return fetch_dicts(con.execute(
        "SELECT c.model_id, c.revision, c.variant, c.bound, c.eps_units, c.dataset, c.n, c.clean_accuracy, "
        "c.median_radius, c.eps, c.certified_accuracy, c.margins FROM current_certificates c "
        "SEMI JOIN latest_revisions lr ON lr.model_id = c.model_id AND lr.revision = c.revision "
        "WHERE c.scope = 'best' ORDER BY c.model_id"))


def dump_pre(pre: dict[str, Any] | None) -> str:
    return json.dumps(pre, sort_keys=True) if pre else "none"
