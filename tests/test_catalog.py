"""The DuckDB catalog on real files: migrations, the single writer's upserts, views and queries."""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime, timedelta

import duckdb
import pytest
from test_catalog_helpers import T0, model_rows, row

from catalogs import (
    LATEST_VERSION,
    Catalog,
    CatalogError,
    CatalogMissingError,
    ResultRow,
    UnknownModelError,
    UnknownRunError,
    UnknownVariantError,
    migrate,
    resolve_catalog_path,
)


@pytest.fixture
def cat(tmp_path):
    return Catalog(tmp_path / "c.duckdb")


def count(cat: Catalog, sql: str = "SELECT count(*) FROM results", params=None) -> int:
    with cat.connect() as con:
        return con.execute(sql, params or []).fetchone()[0]


# ---- paths / opening ------------------------------------------------------------------------------------
def test_resolve_catalog_path_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("LIPZOO_CATALOG", raising=False)
    assert resolve_catalog_path(None) == resolve_catalog_path("lipzoo.duckdb")
    assert str(resolve_catalog_path(None)) == "lipzoo.duckdb"
    monkeypatch.setenv("LIPZOO_CATALOG", str(tmp_path / "env.duckdb"))
    assert resolve_catalog_path(None) == tmp_path / "env.duckdb"
    assert resolve_catalog_path(str(tmp_path / "flag.duckdb")) == tmp_path / "flag.duckdb"


def test_read_only_missing_file_is_one_line_error(tmp_path):
    with pytest.raises(CatalogMissingError) as e:
        Catalog(tmp_path / "nope.duckdb", read_only=True)
    assert str(e.value).startswith(f"no catalog at {tmp_path / 'nope.duckdb'}; run `lipzoo audit` first")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "nope.duckdb").exists()


def test_read_only_catalog_refuses_writes(tmp_path):
    Catalog(tmp_path / "c.duckdb")
    ro = Catalog(tmp_path / "c.duckdb", read_only=True)
    with pytest.raises(CatalogError, match="read-only"):
        ro.write([row("a", "naive", 1.0)])


# ---- migrations -----------------------------------------------------------------------------------------
def test_migrations_from_empty_file(tmp_path):
    path = tmp_path / "sub" / "new.duckdb"
    with Catalog(path) as cat:
        assert cat.schema_version == LATEST_VERSION == 3
        with cat.connect() as con:
            versions = con.execute("SELECT version, description FROM schema_version ORDER BY 1").fetchall()
            tables = {t for (t,) in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema='main'").fetchall()}
    assert [v for v, _ in versions] == [1, 2, 3]
    assert {"models", "revisions", "runs", "results", "schema_version", "leaderboard", "leaderboard_variants",
            "history", "latest_revisions", "revision_bounds", "current_results", "certificates",
            "current_certificates", "certified_leaderboard"} <= tables
    # re-opening applies nothing new
    assert Catalog(path).schema_version == 3
    assert count(Catalog(path), "SELECT count(*) FROM schema_version") == 3


def test_migration_from_previous_schema_keeps_data(tmp_path):
    path = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(path))
    assert migrate(con, target=1) == [1]
    # data as lipzoo with schema v1 wrote it (no vacuous column, no runs.pid)
    day = "TIMESTAMPTZ '2026-01-01'"
    con.execute(f"INSERT INTO models VALUES ('hf:a', 'hf', 'a', 'mlp', {day}, {day})")
    con.execute(f"INSERT INTO revisions VALUES ('hf:a', 'r0', 'sha256:1', {day}, {day})")
    con.execute(f"INSERT INTO runs (run_id, started_at, status) VALUES ('old-run', {day}, 'completed')")
    for variant, kind, value in [("naive", "upper", 9.0), ("eclipse-fast", "upper", 4.0),
                                 ("lower-ascent", "lower", 2.0)]:
        con.execute("INSERT INTO results (model_id, revision, variant, engine_version, hub, repo_id, kind, status, "
                    "value, run_id, computed_at, written_at) VALUES ('hf:a', 'r0', $1, '1', 'hf', 'a', $2, 'ok', $3, "
                    f"'old-run', {day}, {day})", [variant, kind, value])
    with pytest.raises(duckdb.BinderException):
        con.execute("SELECT vacuous FROM results")
    con.close()

    cat = Catalog(path)
    assert cat.schema_version == 3
    with cat.connect() as con:
        assert con.execute("SELECT count(*), bool_or(vacuous) FROM results").fetchone() == (3, False)
        assert con.execute("SELECT pid, host FROM runs").fetchone() == (None, None)
    (lb,) = cat.leaderboard()
    assert (lb["rank"], lb["best_upper"], lb["best_upper_variant"], lb["best_lower"]) == (1, 4.0, "eclipse-fast", 2.0)
    assert lb["tightness"] == 2.0
    # and the migrated catalog takes new writes
    cat.write([row("a", "naive", 8.0, revision="r1", day=5)])
    assert cat.latest_revision("hf:a") == "r1"


def test_read_only_open_migrates_an_old_catalog(tmp_path):
    path = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(path))
    migrate(con, target=1)
    con.close()
    ro = Catalog(path, read_only=True)
    assert ro.schema_version == 3
    assert ro.leaderboard() == []


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.duckdb"
    Catalog(path)
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_version (version, description) VALUES (99, 'from the future')")
    con.close()
    with pytest.raises(CatalogError, match="schema v99, newer than this lipzoo"):
        Catalog(path)
    with pytest.raises(CatalogError, match="schema v99"):
        Catalog(path, read_only=True)


def test_foreign_duckdb_file_is_not_adopted(tmp_path):
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE sales (x INTEGER)")
    con.close()
    with pytest.raises(CatalogError, match="not a lipzoo catalog"):
        Catalog(path)


# ---- the writer -----------------------------------------------------------------------------------------
def test_write_stores_every_field(cat):
    when = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    run_id = cat.begin_run("demo", "cpu", flow_run_id="flow-123", params={"budget_s": 60})
    r = ResultRow(model_id="hf:org/mlp", hub="hf", repo_id="org/mlp", revision="abc123", variant="eclipse-fast",
                  kind="upper", status="ok", value=3.1415e-5, seconds=0.25, vacuous=True, device="cuda",
                  params={"c": 1.5, "bad": float("nan")}, architecture="mlp", weights_digest="sha256:ff",
                  engine_version="7", lipzoo_version="9.9", flow_run_id="flow-123", computed_at=when)
    assert cat.write([r], run_id) == 1
    with cat.connect() as con:
        got = dict(zip(
            ["value", "seconds", "vacuous", "device", "params", "weights_digest", "engine_version", "lipzoo_version",
             "run_id", "flow_run_id", "computed_at", "kind", "status"],
            con.execute("SELECT value, seconds, vacuous, device, params, weights_digest, engine_version, "
                        "lipzoo_version, run_id, flow_run_id, computed_at, kind, status FROM results").fetchone(),
            strict=True))
        model = con.execute("SELECT hub, repo_id, architecture, first_seen FROM models").fetchone()
        rev = con.execute("SELECT weights_digest, first_seen FROM revisions").fetchone()
        run = con.execute("SELECT zoo, device, flow_run_id, status, pid, engine_version, params->>'$.budget_s' "
                          "FROM runs").fetchone()
    assert got["value"] == 3.1415e-5 and got["seconds"] == 0.25 and got["vacuous"] is True
    assert (got["device"], got["weights_digest"], got["engine_version"], got["lipzoo_version"]) == (
        "cuda", "sha256:ff", "7", "9.9")
    assert json.loads(got["params"]) == {"bad": "nan", "c": 1.5}
    assert (got["run_id"], got["flow_run_id"]) == (run_id, "flow-123")
    assert got["computed_at"] == when  # microsecond-exact, UTC
    assert model == ("hf", "org/mlp", "mlp", when)
    assert rev == ("sha256:ff", when)
    assert run == ("demo", "cpu", "flow-123", "running", os.getpid(), "7", "60")


def test_write_defaults_lipzoo_version_and_coerces_nonfinite_ok(cat):
    from catalogs import lipzoo_version

    rows = [row("a", "naive", float("inf")), row("a", "eclipse-fast", None), row("a", "sh-spectral", 2.0)]
    assert cat.write(rows) == 3
    with cat.connect() as con:
        got = con.execute("SELECT variant, status, value, reason, lipzoo_version FROM results "
                          "ORDER BY variant").fetchall()
    assert got == [
        ("eclipse-fast", "failed", None, "ok result without a value", lipzoo_version()),
        ("naive", "failed", None, "non-finite value inf reported as ok", lipzoo_version()),
        ("sh-spectral", "ok", 2.0, None, lipzoo_version()),
    ]


def test_write_rejects_bad_kind_naming_the_model(cat):
    with pytest.raises(ValueError, match=r"hf:a@r0 variant naive: kind='middle'"):
        cat.write([row("a", "naive", 1.0, kind="middle")])
    assert count(cat) == 0


def test_upsert_is_idempotent(cat):
    batch = model_rows("a", {"naive": 9.0, "eclipse-fast": 4.0}, {"lower-ascent": 2.0}) + \
        model_rows("b", {"naive": 5.0}, revision="r7")
    run1 = cat.begin_run("z", "cpu")
    assert cat.write(batch, run1) == 4
    run2 = cat.begin_run("z", "cpu")
    assert cat.write(batch, run2) == 4  # the same audit again
    assert count(cat) == 4
    assert count(cat, "SELECT count(*) FROM models") == 2
    assert count(cat, "SELECT count(*) FROM revisions") == 2
    assert count(cat, "SELECT count(DISTINCT run_id) FROM results") == 1  # rows now belong to the re-run
    # a changed value for the same key replaces it in place
    cat.write([row("a", "naive", 8.5)])
    assert count(cat) == 4
    assert count(cat, "SELECT value FROM results WHERE variant='naive' AND model_id='hf:a'") == 8.5
    # a new engine version is a new key
    cat.write([row("a", "naive", 8.0, engine="2")])
    assert count(cat) == 5


def test_duplicates_inside_one_batch_last_wins(cat):
    assert cat.write([row("a", "naive", 1.0), row("a", "naive", 2.0), row("a", "naive", 3.0)]) == 1
    assert count(cat, "SELECT value FROM results") == 3.0


def test_ok_is_never_replaced_by_a_later_failure(cat):
    cat.write([row("a", "naive", 1.0), row("a", "optimized", None, status="failed", reason="timeout")])
    cat.write([row("a", "naive", None, status="failed", reason="timeout"), row("a", "optimized", 0.9)])
    with cat.connect() as con:
        got = con.execute("SELECT variant, status, value FROM results ORDER BY variant").fetchall()
    assert got == [("naive", "ok", 1.0), ("optimized", "ok", 0.9)]


def test_computed_keys_skip_failed_rows(cat):
    cat.write([
        row("a", "naive", 1.0), row("a", "lipsdp-neuron", None, status="refused", reason="no cvxpy"),
        row("a", "optimized", None, status="failed", reason="boom"), row("a", "naive", 1.0, engine="2"),
    ])
    assert cat.computed_keys("1") == {("hf:a", "r0", "naive"), ("hf:a", "r0", "lipsdp-neuron")}
    assert cat.computed_keys("2") == {("hf:a", "r0", "naive")}
    assert cat.computed_keys("3") == set()


def test_runs_lifecycle_and_unknown_run(cat):
    run_id = cat.begin_run("demo", "cpu")
    (r,) = cat.runs()
    assert (r["run_id"], r["status"], r["finished_at"]) == (run_id, "running", None)
    cat.finish_run(run_id, "completed", {"models": 3})
    (r,) = cat.runs()
    assert r["status"] == "completed" and r["finished_at"] >= r["started_at"]
    with pytest.raises(UnknownRunError, match=r"unknown run 'nope' \(recent: " + run_id):
        cat.finish_run("nope", "completed")
    with pytest.raises(ValueError):
        cat.finish_run(run_id, "great")
    assert cat.resolve_run(run_id[:12]) == run_id


# ---- leaderboard ----------------------------------------------------------------------------------------
def _zoo(cat: Catalog) -> None:
    cat.write(
        model_rows("tie-b", {"naive": 5.0, "eclipse-fast": 2.0}, {"lower-ascent": 1.0})
        + model_rows("tie-a", {"naive": 3.0, "eclipse-fast": 2.0}, {"lower-ascent": 1.6})
        + model_rows("best", {"naive": 1.5, "eclipse-fast": 1.0}, {"lower-ascent": 0.5})
        + model_rows("worst", {"naive": 30.0}, hub="timm")
        # vacuous bound below everything: shown, but not the best bound while a real one exists
        + model_rows("vac", {"naive": 4.0}) + [row("vac", "layernorm-bound", 0.1, vacuous=True)]
        # only a vacuous bound: it is the best bound then
        + [row("onlyvac", "layernorm-bound", 40.0, vacuous=True)]
        # failed / refused rows: never ranked as bounds
        + [row("broken", "*", None, status="failed", reason="corrupt safetensors")]
        + [row("refuser", "lipsdp-neuron", None, status="refused", reason="too big"),
           row("refuser", "naive", None, status="failed", reason="nan weights")]
        # unsound: upper below lower gets flagged (a vacuous bound too, even when it is not the best bound)
        + model_rows("unsound", {"naive": 2.5}, {"lower-ascent": 3.0})
        + model_rows("unsound-vac", {"naive": 50.0}, {"lower-ascent": 3.0})
        + [row("unsound-vac", "layernorm-bound", 1.0, vacuous=True)]
    )


def test_leaderboard_order_ties_and_unranked(cat):
    _zoo(cat)
    lb = cat.leaderboard()
    got = [(r["rank"], r["model_id"], r["best_upper"]) for r in lb]
    assert got == [
        (1, "hf:best", 1.0),
        (2, "hf:tie-a", 2.0), (2, "hf:tie-b", 2.0),  # tie: same rank, then model id order
        (4, "hf:unsound", 2.5),
        (5, "hf:vac", 4.0),
        (6, "timm:worst", 30.0),
        (7, "hf:onlyvac", 40.0),
        (8, "hf:unsound-vac", 50.0),
        (None, "hf:broken", None), (None, "hf:refuser", None),
    ]
    by = {r["model_id"]: r for r in lb}
    assert by["hf:vac"]["best_upper_variant"] == "naive" and by["hf:vac"]["best_upper_vacuous"] is False
    assert by["hf:vac"]["layernorm-bound"] == 0.1  # still shown as the variant's value
    assert by["hf:onlyvac"]["best_upper_vacuous"] is True
    assert by["hf:tie-a"]["tightness"] == 1.25 and by["hf:tie-b"]["tightness"] == 2.0
    assert by["hf:best"]["best_lower"] == 0.5 and by["hf:best"]["best_lower_variant"] == "lower-ascent"
    assert by["hf:unsound"]["sound"] is False and by["hf:best"]["sound"] is True
    assert by["hf:unsound-vac"]["sound"] is False and by["hf:vac"]["sound"] is None  # no lower bound: unknown
    assert by["hf:broken"]["status"] == "failed" and by["hf:broken"]["first_problem"] == "failed: corrupt safetensors"
    assert by["hf:refuser"]["status"] == "failed"
    assert (by["hf:refuser"]["n_refused"], by["hf:refuser"]["n_failed"]) == (1, 1)
    assert by["hf:refuser"]["naive"] is None and by["hf:refuser"]["lipsdp-neuron"] is None
    assert by["hf:tie-a"]["naive"] == 3.0 and by["hf:tie-a"]["eclipse-fast"] == 2.0


def test_leaderboard_top_hub_and_variant(cat):
    _zoo(cat)
    assert [r["model_id"] for r in cat.leaderboard(top=3)] == ["hf:best", "hf:tie-a", "hf:tie-b"]
    top3 = cat.leaderboard(top=3)
    assert top3[0]["naive"] == 1.5  # variant columns filled for the limited set too
    timm = cat.leaderboard(hub="timm")
    assert [(r["rank"], r["model_id"]) for r in timm] == [(1, "timm:worst")]  # ranked within the hub
    naive = cat.leaderboard(variant="naive")
    got = [(r["rank"], r["model_id"], r["value"], r["status"]) for r in naive]
    assert got == [
        (1, "hf:best", 1.5, "ok"), (2, "hf:unsound", 2.5, "ok"), (3, "hf:tie-a", 3.0, "ok"),
        (4, "hf:vac", 4.0, "ok"), (5, "hf:tie-b", 5.0, "ok"), (6, "timm:worst", 30.0, "ok"),
        (7, "hf:unsound-vac", 50.0, "ok"), (None, "hf:refuser", None, "failed"),
    ]
    with pytest.raises(UnknownVariantError, match="unknown variant 'nope'; variants in this catalog: "):
        cat.leaderboard(variant="nope")


def test_leaderboard_prefers_newest_engine_result(cat):
    cat.write([row("a", "naive", 2.0, engine="1", day=0), row("b", "naive", 3.0, day=0)])
    cat.write([row("a", "naive", 5.0, engine="2", day=1)])  # new engine redefined the bound
    lb = cat.leaderboard()
    assert [(r["model_id"], r["best_upper"]) for r in lb] == [("hf:b", 3.0), ("hf:a", 5.0)]


def test_empty_catalog_queries(cat):
    assert cat.leaderboard() == []
    assert cat.stale("1") == []
    assert cat.runs() == []
    assert cat.latest_revision("hf:x") is None
    with pytest.raises(UnknownModelError, match=r"unknown model 'x' \(0 models in this catalog\)"):
        cat.history("x")


# ---- history --------------------------------------------------------------------------------------------
def test_history_across_three_revisions(cat):
    for i, (rev, up, lo) in enumerate([("sha-1", 10.0, 1.0), ("sha-2", 6.0, 1.5), ("sha-3", 4.0, 2.0)]):
        run = cat.begin_run("z", "cpu")
        cat.write(model_rows("org/mlp", {"naive": up * 2, "eclipse-fast": up}, {"lower-ascent": lo},
                             revision=rev, day=i, weights_digest=f"sha256:{i}")
                  + [row("org/mlp", "lipsdp-neuron", None, status="refused", reason="no cvxpy", revision=rev, day=i)]
                  + model_rows("org/other", {"naive": 1.0}, revision=rev, day=i), run)
        cat.finish_run(run, "completed")
    assert cat.latest_revision("hf:org/mlp") == "sha-3"
    summary = cat.history_summary("org/mlp")  # repo id resolves to the model
    assert [(s["revision"], s["best_upper"], s["best_lower"], s["tightness"], s["n_refused"]) for s in summary] == [
        ("sha-1", 10.0, 1.0, 10.0, 1), ("sha-2", 6.0, 1.5, 4.0, 1), ("sha-3", 4.0, 2.0, 2.0, 1)]
    assert [s["weights_digest"] for s in summary] == ["sha256:0", "sha256:1", "sha256:2"]
    assert summary[0]["revision_seen"] == T0 and summary[2]["revision_seen"] == T0 + timedelta(days=2)
    rows = cat.history("hf:org/mlp")
    assert len(rows) == 12
    assert [r["revision"] for r in rows][::4] == ["sha-1", "sha-2", "sha-3"]
    refused = [r for r in rows if r["status"] == "refused"]
    assert len(refused) == 3 and all(r["reason"] == "no cvxpy" and r["value"] is None for r in refused)
    assert {r["revision"] for r in rows if r["is_latest_revision"]} == {"sha-3"}
    (lb,) = [r for r in cat.leaderboard() if r["model_id"] == "hf:org/mlp"]
    assert (lb["revision"], lb["best_upper"]) == ("sha-3", 4.0)
    with pytest.raises(UnknownModelError, match="ambiguous: hf:org/mlp, hf:org/other"):
        cat.history("org/")


# ---- stale ----------------------------------------------------------------------------------------------
def test_stale_models(cat):
    cat.write(model_rows("fresh", {"naive": 1.0}, engine="2")
              + model_rows("old", {"naive": 1.0}, engine="1")
              + [row("flaky", "naive", None, status="failed", reason="oom", engine="2")]
              + model_rows("moved", {"naive": 1.0}, engine="2", revision="r0", day=0)
              + model_rows("moved", {"naive": 1.0}, engine="1", revision="r1", day=1))
    stale = {r["model_id"]: r for r in cat.stale("2")}
    assert set(stale) == {"hf:old", "hf:flaky", "hf:moved"}
    assert stale["hf:old"]["engines_present"] == ["1"]
    assert stale["hf:flaky"]["failed_current"] == 1
    assert stale["hf:moved"]["revision"] == "r1"
    assert [r["model_id"] for r in cat.stale("1")] == ["hf:flaky", "hf:fresh"]


# ---- diff -----------------------------------------------------------------------------------------------
def test_diff_between_two_audits(cat):
    ra = cat.begin_run("z", "cpu")
    cat.write(model_rows("a", {"naive": 4.0}) + model_rows("b", {"naive": 2.0}), ra)
    cat.finish_run(ra, "completed")
    rb = cat.begin_run("z", "cpu")
    cat.write(model_rows("a", {"naive": 3.0}, revision="r1", day=1) + model_rows("c", {"naive": 9.0}, day=1), rb)
    cat.finish_run(rb, "completed")
    d = cat.diff(ra, rb)
    got = [(r["change"], r["model_id"], r["revision_a"], r["revision_b"], r["value_a"], r["value_b"]) for r in d]
    assert got == [("changed", "hf:a", "r0", "r1", 4.0, 3.0), ("added", "hf:c", None, "r0", None, 9.0)]
    assert d[0]["ratio"] == 0.75
    everything = cat.diff(ra, rb, include_unchanged=True)
    assert [r["change"] for r in everything] == ["changed", "added", "same"]
    back = cat.diff(rb, ra)
    assert [(r["change"], r["model_id"]) for r in back] == [("changed", "hf:a"), ("removed", "hf:c")]
    assert cat.diff(ra, ra) == []
    with pytest.raises(UnknownRunError, match="unknown run 'zzz'.*`lipzoo runs` lists them"):
        cat.diff("zzz", rb)


# ---- export ---------------------------------------------------------------------------------------------
def test_export_parquet_partitioned_by_hub(cat, tmp_path):
    _zoo(cat)
    cat.begin_run("z", "cpu")
    out = cat.export(tmp_path / "exp")
    assert out["results"]["rows"] == count(cat) and out["runs"]["rows"] == 1
    assert sorted(p.name for p in (tmp_path / "exp" / "results").iterdir()) == ["hub=hf", "hub=timm"]
    con = duckdb.connect()
    got = con.execute(f"SELECT hub, count(*) FROM read_parquet('{tmp_path}/exp/results/*/*.parquet', "
                      "hive_partitioning=true) GROUP BY hub ORDER BY hub").fetchall()
    assert got == [("hf", count(cat) - 1), ("timm", 1)]
    lb = con.execute(f"SELECT model_id, rank FROM read_parquet('{tmp_path}/exp/leaderboard/*/*.parquet') "
                     "WHERE rank IS NOT NULL ORDER BY rank, model_id LIMIT 2").fetchall()
    assert lb == [("hf:best", 1), ("hf:tie-a", 2)]
    # re-export replaces, never appends
    cat.export(tmp_path / "exp")
    n = con.execute(f"SELECT count(*) FROM read_parquet('{tmp_path}/exp/results/*/*.parquet')").fetchone()[0]
    assert n == count(cat)


def test_plain_sql_views_work_without_lipzoo(cat):
    _zoo(cat)
    con = duckdb.connect(str(cat.path), read_only=True)
    try:
        assert con.execute("SELECT model_id FROM leaderboard WHERE rank = 1").fetchall() == [("hf:best",)]
        assert con.execute("SELECT count(*) FROM stale('2')").fetchone()[0] == 10
        top = con.execute("SELECT model_id, variant_rank FROM leaderboard_variants WHERE variant = 'naive' "
                          "ORDER BY variant_rank LIMIT 1").fetchone()
        assert top == ("hf:best", 1)
    finally:
        con.close()
    assert math.isclose(cat.leaderboard()[0]["best_upper"], 1.0)


def test_catalog_pickles_for_task_runners(cat):
    import pickle

    cat.write([row("a", "naive", 1.0)])
    clone = pickle.loads(pickle.dumps(cat))
    assert clone.path == cat.path and clone._plock is cat._plock
    assert clone.write([row("b", "naive", 2.0)]) == 1
    assert [r["model_id"] for r in cat.leaderboard()] == ["hf:a", "hf:b"]
