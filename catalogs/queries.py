"""The SQL behind the writer and the query commands (leaderboard, history, stale, diff, runs).

Functions take an open connection and return `list[dict]`; `Catalog` owns the connections.
"""

from __future__ import annotations

from typing import Any

import duckdb

from .errors import UnknownModelError, UnknownRunError, UnknownVariantError
from .schema import BOUND_COLS, bounds_sql, current_results_sql, latest_source

# ---- writer ---------------------------------------------------------------------------------------------
# `_lipzoo_batch` is the registered dict of NumPy columns from columns.rows_to_columns (keys already unique;
# computed_at arrives as a naive UTC TIMESTAMP and is converted with timezone('UTC', ...)).
UPSERT_MODELS_SQL = """
INSERT INTO models (model_id, hub, repo_id, architecture, first_seen, last_seen)
SELECT model_id, arg_max(hub, ord), arg_max(repo_id, ord),
       arg_max(architecture, ord) FILTER (WHERE architecture IS NOT NULL),
       timezone('UTC', min(computed_at)), timezone('UTC', max(computed_at))
FROM _lipzoo_batch GROUP BY model_id
ON CONFLICT (model_id) DO UPDATE SET
    hub = excluded.hub, repo_id = excluded.repo_id,
    architecture = coalesce(excluded.architecture, models.architecture),
    first_seen = least(models.first_seen, excluded.first_seen),
    last_seen = greatest(models.last_seen, excluded.last_seen)
"""

UPSERT_REVISIONS_SQL = """
INSERT INTO revisions (model_id, revision, weights_digest, first_seen, last_seen)
SELECT model_id, revision, arg_max(weights_digest, ord) FILTER (WHERE weights_digest IS NOT NULL),
       timezone('UTC', min(computed_at)), timezone('UTC', max(computed_at))
FROM _lipzoo_batch GROUP BY model_id, revision
ON CONFLICT (model_id, revision) DO UPDATE SET
    weights_digest = coalesce(excluded.weights_digest, revisions.weights_digest),
    first_seen = least(revisions.first_seen, excluded.first_seen),
    last_seen = greatest(revisions.last_seen, excluded.last_seen)
"""

CONFLICTS_SQL = """
SELECT count(*) FROM _lipzoo_batch b SEMI JOIN results r
ON r.model_id = b.model_id AND r.revision = b.revision AND r.variant = b.variant AND r.engine_version = b.engine_version
"""

# the plain INSERT (no key exists yet: the usual audit) costs half the ON CONFLICT one on a 600k-row catalog
INSERT_RESULTS_SQL = """
INSERT INTO results (model_id, revision, variant, engine_version, hub, repo_id, weights_digest, kind, status,
                     value, reason, seconds, device, params, lipzoo_version, run_id, flow_run_id, computed_at,
                     written_at, vacuous)
SELECT model_id, revision, variant, engine_version, hub, repo_id, weights_digest, kind, status,
       value, reason, seconds, device, params::JSON, lipzoo_version, run_id, flow_run_id,
       timezone('UTC', computed_at), $1, vacuous
FROM _lipzoo_batch
"""

# an ok result is never overwritten by a failed/refused re-run of the same key
UPSERT_RESULTS_SQL = INSERT_RESULTS_SQL + """\
ON CONFLICT (model_id, revision, variant, engine_version) DO UPDATE SET
    hub = excluded.hub, repo_id = excluded.repo_id, weights_digest = excluded.weights_digest,
    kind = excluded.kind, status = excluded.status, value = excluded.value, reason = excluded.reason,
    seconds = excluded.seconds, device = excluded.device, params = excluded.params,
    lipzoo_version = excluded.lipzoo_version, run_id = excluded.run_id, flow_run_id = excluded.flow_run_id,
    computed_at = excluded.computed_at, written_at = excluded.written_at, vacuous = excluded.vacuous
WHERE NOT (results.status = 'ok' AND excluded.status <> 'ok')
"""

# rows tagged with a run id nobody begun (written without begin_run) still get a runs row, so diff works
ENSURE_RUNS_SQL = """
INSERT INTO runs (run_id, flow_run_id, started_at, finished_at, device, lipzoo_version, status)
SELECT run_id, any_value(flow_run_id), timezone('UTC', min(computed_at)), timezone('UTC', max(computed_at)),
       any_value(device), any_value(lipzoo_version), 'external'
FROM _lipzoo_batch WHERE run_id IS NOT NULL GROUP BY run_id
ON CONFLICT (run_id) DO NOTHING
"""

RUN_ENGINE_SQL = """
UPDATE runs SET engine_version = s.ev
FROM (SELECT run_id, max(engine_version) AS ev FROM _lipzoo_batch WHERE run_id IS NOT NULL GROUP BY run_id) s
WHERE runs.run_id = s.run_id AND runs.engine_version IS DISTINCT FROM s.ev
"""

RUNS_SQL = """
SELECT r.run_id, r.status, r.started_at, r.finished_at, r.zoo, r.device, r.engine_version, r.lipzoo_version,
       r.flow_run_id, r.host, r.pid, r.git_sha,
       (SELECT count(*) FROM results x WHERE x.run_id = r.run_id) AS n_results
FROM runs r ORDER BY r.started_at DESC, r.run_id DESC LIMIT $1
"""


def fetch_dicts(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description or []]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


# ---- leaderboard ----------------------------------------------------------------------------------------
LEADERBOARD_COLUMNS = (
    "model_id, hub, repo_id, revision, best_upper, best_upper_variant, best_upper_vacuous, best_lower, "
    "best_lower_variant, tightness, sound, status, n_ok, n_refused, n_failed, first_problem, architecture, "
    "weights_digest, revision_seen, engine_version, computed_at")


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _ident(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


_LB_VARIANT_SQL = """
WITH v AS (
    SELECT *, (status = 'ok' AND value IS NOT NULL AND isfinite(value)) AS usable
    FROM leaderboard_variants WHERE variant = $1 AND ($2::VARCHAR IS NULL OR hub = $2)
)
SELECT CASE WHEN v.usable THEN rank() OVER (PARTITION BY v.usable ORDER BY v.value ASC) END AS rank,
       v.model_id, v.hub, v.repo_id, v.revision, v.variant, v.kind, v.status, v.value, v.vacuous, v.reason,
       l.best_upper, l.best_upper_variant, l.best_lower, l.best_lower_variant, l.tightness, l.sound,
       v.engine_version, v.computed_at
FROM v LEFT JOIN leaderboard l ON l.model_id = v.model_id
ORDER BY rank ASC NULLS LAST, v.status, v.model_id
LIMIT $3
"""

def variant_ids(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Variants present in the catalog, upper-bound ones first (then lower), alphabetical within each."""
    rows = con.execute("SELECT variant, max(kind) FROM results WHERE variant <> '*' GROUP BY variant").fetchall()
    return [v for v, _ in sorted(rows, key=lambda r: (r[1] != "upper", r[0]))]


def leaderboard(con: duckdb.DuckDBPyConnection, variant: str | None = None, hub: str | None = None,
                top: int | None = None, variant_columns: bool = True) -> list[dict[str, Any]]:
    limit = top if top and top > 0 else None
    if variant:
        rows = fetch_dicts(con.execute(_LB_VARIANT_SQL, [variant, hub, limit]))
        if not rows:
            known = variant_ids(con)
            if variant not in known:
                raise UnknownVariantError(f"unknown variant {variant!r}; variants in this catalog: "
                                          f"{', '.join(known) or '(none yet)'}")
        return rows
    # one pass: the bounds aggregate over the latest revisions, with one pivot column per variant
    pivot: list[str] = []
    names: list[str] = []
    if variant_columns:
        base = {c.strip() for c in LEADERBOARD_COLUMNS.split(",")} | {"rank"}
        for i, v in enumerate(variant_ids(con)):
            names.append(v if v not in base else f"variant:{v}")
            pivot.append(f"max(value) FILTER (WHERE usable AND variant = {_lit(v)}) AS __pivot{i}")
    source = "(" + current_results_sql(latest_source("WHERE $1::VARCHAR IS NULL OR res.hub = $1"), BOUND_COLS) + ")"
    extra = "".join(f", b.__pivot{i} AS {_ident(n)}" for i, n in enumerate(names))
    sql = (f"SELECT CASE WHEN best_upper IS NOT NULL THEN rank() OVER (ORDER BY best_upper ASC NULLS LAST) END "
           f"AS rank, {LEADERBOARD_COLUMNS}{extra} FROM ({bounds_sql(source, pivot)}) b "
           f"ORDER BY rank ASC NULLS LAST, model_id LIMIT $2")
    return fetch_dicts(con.execute(sql, [hub, limit]))


# ---- models / history -----------------------------------------------------------------------------------
def resolve_model(con: duckdb.DuckDBPyConnection, model: str) -> str:
    """A model_id from what a user typed: the model_id, a repo id, or a fragment matching exactly one model."""
    if con.execute("SELECT 1 FROM models WHERE model_id = $1", [model]).fetchone():
        return model
    by_repo = [m for (m,) in con.execute("SELECT model_id FROM models WHERE repo_id = $1 ORDER BY 1",
                                         [model]).fetchall()]
    if len(by_repo) == 1:
        return by_repo[0]
    if len(by_repo) > 1:
        raise UnknownModelError(f"model {model!r} is ambiguous: {', '.join(by_repo)}; pass the full model id")
    like = [m for (m,) in con.execute(
        "SELECT model_id FROM models WHERE contains(lower(model_id), lower($1)) ORDER BY 1 LIMIT 6", [model]
    ).fetchall()]
    if len(like) == 1:
        return like[0]
    if like:
        more = ", ..." if len(like) > 5 else ""
        raise UnknownModelError(f"model {model!r} is ambiguous: {', '.join(like[:5])}{more}; pass the full model id")
    n = con.execute("SELECT count(*) FROM models").fetchone()
    raise UnknownModelError(f"unknown model {model!r} ({n[0] if n else 0} models in this catalog); "
                            f"`lipzoo leaderboard` lists them")


def history(con: duckdb.DuckDBPyConnection, model: str) -> list[dict[str, Any]]:
    model_id = resolve_model(con, model)
    return fetch_dicts(con.execute(
        "SELECT * FROM history WHERE model_id = $1 "
        "ORDER BY revision_seen, revision, kind DESC, variant, computed_at", [model_id]))


def history_summary(con: duckdb.DuckDBPyConnection, model: str) -> list[dict[str, Any]]:
    model_id = resolve_model(con, model)
    return fetch_dicts(con.execute(
        "SELECT model_id, revision, revision_seen, weights_digest, best_upper, best_upper_variant, "
        "best_upper_vacuous, best_lower, best_lower_variant, tightness, sound, status, n_ok, n_refused, n_failed, "
        "first_problem, engine_version, computed_at FROM revision_bounds WHERE model_id = $1 "
        "ORDER BY revision_seen, revision", [model_id]))


# ---- stale ----------------------------------------------------------------------------------------------
def stale(con: duckdb.DuckDBPyConnection, engine_version: str, hub: str | None = None) -> list[dict[str, Any]]:
    return fetch_dicts(con.execute(
        "SELECT * FROM stale($1) WHERE $2::VARCHAR IS NULL OR hub = $2 ORDER BY model_id", [engine_version, hub]))


# ---- runs / diff ----------------------------------------------------------------------------------------
def unknown_run(con: duckdb.DuckDBPyConnection, run: str, matches: list[str] | None = None) -> UnknownRunError:
    if matches:
        return UnknownRunError(f"run {run!r} is ambiguous: {', '.join(matches[:5])}; give more characters")
    recent = [r for (r,) in con.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 3").fetchall()]
    hint = f"recent: {', '.join(recent)}; " if recent else "no runs recorded yet; "
    return UnknownRunError(f"unknown run {run!r} ({hint}`lipzoo runs` lists them)")


def resolve_run(con: duckdb.DuckDBPyConnection, run: str) -> str:
    """A run id from an exact id or a unique prefix."""
    if con.execute("SELECT 1 FROM runs WHERE run_id = $1", [run]).fetchone():
        return run
    matches = [r for (r,) in con.execute(
        "SELECT run_id FROM runs WHERE starts_with(run_id, $1) ORDER BY started_at DESC LIMIT 6", [run]).fetchall()]
    if len(matches) == 1:
        return matches[0]
    raise unknown_run(con, run, matches)


_DIFF_SQL = """
WITH rr AS (
    SELECT r.model_id, r.variant, r.revision, r.kind, r.status, r.value, r.vacuous, r.engine_version,
           r.computed_at, rv.first_seen AS rev_seen, coalesce(ru.started_at, r.computed_at) AS run_started
    FROM results r
    JOIN revisions rv ON rv.model_id = r.model_id AND rv.revision = r.revision
    LEFT JOIN runs ru ON ru.run_id = r.run_id
), a AS (
    SELECT * FROM rr WHERE run_started <= $1
    QUALIFY row_number() OVER (PARTITION BY model_id, variant ORDER BY rev_seen DESC, revision DESC,
                               computed_at DESC) = 1
), b AS (
    SELECT * FROM rr WHERE run_started <= $2
    QUALIFY row_number() OVER (PARTITION BY model_id, variant ORDER BY rev_seen DESC, revision DESC,
                               computed_at DESC) = 1
), d AS (
    SELECT coalesce(a.model_id, b.model_id) AS model_id, coalesce(a.variant, b.variant) AS variant,
           coalesce(b.kind, a.kind) AS kind,
           a.revision AS revision_a, b.revision AS revision_b,
           a.status AS status_a, b.status AS status_b,
           a.value AS value_a, b.value AS value_b,
           CASE WHEN a.value > 0 AND b.value IS NOT NULL THEN b.value / a.value END AS ratio,
           CASE WHEN a.model_id IS NULL THEN 'added'
                WHEN b.model_id IS NULL THEN 'removed'
                WHEN a.revision = b.revision AND a.status = b.status AND a.value IS NOT DISTINCT FROM b.value
                     AND a.engine_version = b.engine_version THEN 'same'
                ELSE 'changed' END AS change,
           a.engine_version AS engine_a, b.engine_version AS engine_b
    FROM a FULL OUTER JOIN b ON a.model_id = b.model_id AND a.variant = b.variant
)
SELECT * FROM d WHERE $3 OR change <> 'same'
ORDER BY CASE change WHEN 'changed' THEN 0 WHEN 'added' THEN 1 WHEN 'removed' THEN 2 ELSE 3 END,
         model_id, kind DESC, variant
"""


def diff(con: duckdb.DuckDBPyConnection, run_a: str, run_b: str,
         include_unchanged: bool = False) -> list[dict[str, Any]]:
    """The catalog as it stood after run A vs after run B: for each (model, variant), the result at the newest
    revision written by that run or an earlier one. A result later overwritten in place (same key re-written)
    belongs to its newest writer."""
    ra, rb = resolve_run(con, run_a), resolve_run(con, run_b)
    row_a = con.execute("SELECT started_at FROM runs WHERE run_id = $1", [ra]).fetchone()
    row_b = con.execute("SELECT started_at FROM runs WHERE run_id = $1", [rb]).fetchone()
    assert row_a and row_b
    return fetch_dicts(con.execute(_DIFF_SQL, [row_a[0], row_b[0], include_unchanged]))
