"""`lipzoo leaderboard | history | diff | stale | runs | export` on a real catalog file, through lipzoo.cli.main."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from test_catalog_helpers import model_rows, row

from catalogs import Catalog
from lipzoo.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """Two audits: run A (three models at r0), run B (a new revision of `alpha`, a new model, a failure)."""
    monkeypatch.delenv("LIPZOO_CATALOG", raising=False)
    cat = Catalog(tmp_path / "zoo.duckdb")
    ra = cat.begin_run("demo", "cpu")
    cat.write(model_rows("org/alpha", {"naive": 12.0, "eclipse-fast": 3.1415e-5}, {"lower-ascent": 1.5e-5})
              + model_rows("org/beta", {"naive": 7.0, "eclipse-fast": 3.1415e-5}, {"lower-ascent": 2.0e-5})
              + model_rows("resnet18", {"naive": 1.25e4}, hub="timm"), ra)
    cat.finish_run(ra, "completed")
    rb = cat.begin_run("demo", "cpu")
    cat.write(model_rows("org/alpha", {"naive": 11.0, "eclipse-fast": 2.0e-5}, {"lower-ascent": 1.6e-5},
                         revision="r1", day=1)
              + [row("org/gamma", "*", None, status="failed", reason="corrupt safetensors header", day=1)], rb)
    cat.finish_run(rb, "completed")
    return cat, ra, rb


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_leaderboard_csv_is_exact(zoo, capsys):
    cat, _, _ = zoo
    rc, out, err = run_cli(capsys, "leaderboard", "--catalog", str(cat.path), "--format", "csv")
    assert rc == 0 and err == ""
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["rank"], r["model_id"]) for r in rows] == [
        ("1", "hf:org/alpha"), ("2", "hf:org/beta"), ("3", "timm:resnet18"), ("", "hf:org/gamma")]
    a = rows[0]
    assert (a["revision"], float(a["best_upper"]), a["best_upper_variant"]) == ("r1", 2.0e-5, "eclipse-fast")
    assert float(a["tightness"]) == 2.0e-5 / 1.6e-5
    assert (a["eclipse-fast"], a["naive"], a["lower-ascent"]) == ("2e-05", "11.0", "1.6e-05")
    assert rows[3]["status"] == "failed" and rows[3]["first_problem"] == "failed: corrupt safetensors header"
    assert rows[3]["best_upper"] == ""


def test_leaderboard_json_markdown_table(zoo, capsys):
    cat, _, _ = zoo
    rc, out, _ = run_cli(capsys, "leaderboard", "--catalog", str(cat.path), "--format", "json", "--top", "2")
    data = json.loads(out)
    assert [d["model_id"] for d in data] == ["hf:org/alpha", "hf:org/beta"]
    assert data[1]["best_upper"] == 3.1415e-5 and data[1]["sound"] is True
    assert data[0]["computed_at"] == "2026-01-02T00:00:00Z"
    rc, out, _ = run_cli(capsys, "leaderboard", "--catalog", str(cat.path), "--format", "markdown")
    lines = out.splitlines()
    assert lines[0].startswith("| # | model | revision | best upper |")
    assert lines[2].startswith("| 1 | hf:org/alpha | r1 | 2e-05 | eclipse-fast | 1.6e-05 | lower-ascent | 1.25 |")
    assert "| 2 | hf:org/beta | r0 | 3.142e-05 |" in lines[3]
    assert "| 3 | timm:resnet18 | r0 | 1.25e+04 |" in lines[4]
    assert lines[5].startswith("|  | hf:org/gamma |") and "failed: corrupt safetensors header" in lines[5]
    rc, out, _ = run_cli(capsys, "leaderboard", "--catalog", str(cat.path), "--wide")
    assert rc == 0 and "hf:org/alpha" in out and "3.142e-05" in out and "4 of 4 models" in out
    assert "eclipse-fast" in out.splitlines()[2]  # --wide adds a column per variant


def test_leaderboard_variant_hub_top(zoo, capsys):
    cat, _, _ = zoo
    rc, out, _ = run_cli(capsys, "leaderboard", "--catalog", str(cat.path), "--variant", "naive", "--format", "json")
    assert [(d["rank"], d["model_id"], d["value"]) for d in json.loads(out)] == [
        (1, "hf:org/beta", 7.0), (2, "hf:org/alpha", 11.0), (3, "timm:resnet18", 12500.0)]
    rc, out, _ = run_cli(capsys, "leaderboard", "--catalog", str(cat.path), "--hub", "timm", "--format", "json")
    assert [(d["rank"], d["model_id"]) for d in json.loads(out)] == [(1, "timm:resnet18")]
    rc, _, err = run_cli(capsys, "leaderboard", "--catalog", str(cat.path), "--hub", "nope")
    assert rc == 2 and err.strip() == f"lipzoo: error: no models from hub 'nope' in {cat.path} (hubs: hf, timm)"
    rc, _, err = run_cli(capsys, "leaderboard", "--catalog", str(cat.path), "--variant", "nope")
    assert rc == 2 and "unknown variant 'nope'; variants in this catalog: eclipse-fast, naive, lower-ascent" in err


def test_catalog_path_from_env(zoo, capsys, monkeypatch):
    cat, _, _ = zoo
    monkeypatch.setenv("LIPZOO_CATALOG", str(cat.path))
    rc, out, _ = run_cli(capsys, "leaderboard", "--format", "json")
    assert rc == 0 and len(json.loads(out)) == 4


def test_missing_catalog_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIPZOO_CATALOG", raising=False)
    for cmd in (["leaderboard"], ["history", "x"], ["diff", "a", "b"], ["stale"], ["runs"], ["export", "out"]):
        rc, out, err = run_cli(capsys, *cmd)
        assert rc == 2 and out == ""
        assert err.startswith(f"lipzoo: error: no catalog at {tmp_path / 'lipzoo.duckdb'}; run `lipzoo audit` first")
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "lipzoo.duckdb").exists()


def test_history_command(zoo, capsys):
    cat, _, _ = zoo
    rc, out, _ = run_cli(capsys, "history", "org/alpha", "--catalog", str(cat.path), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["revision"], float(r["best_upper"]), float(r["best_lower"])) for r in rows] == [
        ("r0", 3.1415e-5, 1.5e-5), ("r1", 2.0e-5, 1.6e-5)]
    rc, out, _ = run_cli(capsys, "history", "hf:org/alpha", "--catalog", str(cat.path), "--long", "--variant", "naive",
                         "--format", "json")
    assert [(d["revision"], d["value"]) for d in json.loads(out)] == [("r0", 12.0), ("r1", 11.0)]
    assert json.loads(out)[0]["params"] == {}
    rc, out, _ = run_cli(capsys, "history", "gamma", "--catalog", str(cat.path), "--long")
    assert rc == 0 and "failed" in out and "corrupt safetensors header" in out
    rc, _, err = run_cli(capsys, "history", "zeta", "--catalog", str(cat.path))
    assert rc == 2 and err.strip() == ("lipzoo: error: unknown model 'zeta' (4 models in this catalog); "
                                       "`lipzoo leaderboard` lists them")
    rc, _, err = run_cli(capsys, "history", "org/", "--catalog", str(cat.path))
    assert rc == 2 and "ambiguous: hf:org/alpha, hf:org/beta, hf:org/gamma" in err


def test_diff_and_runs_commands(zoo, capsys):
    cat, ra, rb = zoo
    rc, out, _ = run_cli(capsys, "runs", "--catalog", str(cat.path), "--format", "json")
    assert [(d["run_id"], d["status"], d["n_results"]) for d in json.loads(out)] == [(rb, "completed", 4),
                                                                                       (ra, "completed", 7)]
    rc, out, _ = run_cli(capsys, "diff", ra[:-2], rb, "--catalog", str(cat.path), "--format", "csv")
    got = [(r["change"], r["model_id"], r["variant"], r["value_a"], r["value_b"])
           for r in csv.DictReader(io.StringIO(out))]
    assert got == [("changed", "hf:org/alpha", "eclipse-fast", "3.1415e-05", "2e-05"),
                   ("changed", "hf:org/alpha", "naive", "12.0", "11.0"),
                   ("changed", "hf:org/alpha", "lower-ascent", "1.5e-05", "1.6e-05"),
                   ("added", "hf:org/gamma", "*", "", "")]
    rc, out, _ = run_cli(capsys, "diff", ra, rb, "--catalog", str(cat.path))
    assert rc == 0 and "3 changed, 1 added" in out
    rc, _, err = run_cli(capsys, "diff", "nope", rb, "--catalog", str(cat.path))
    assert rc == 2 and err.startswith("lipzoo: error: unknown run 'nope' (recent: ") and "`lipzoo runs`" in err


def test_stale_command(zoo, capsys):
    cat, _, _ = zoo
    rc, out, _ = run_cli(capsys, "stale", "--catalog", str(cat.path), "--engine-version", "1", "--format", "json")
    assert [d["model_id"] for d in json.loads(out)] == ["hf:org/gamma"]
    rc, out, _ = run_cli(capsys, "stale", "--catalog", str(cat.path), "--engine-version", "2", "--format", "json")
    assert len(json.loads(out)) == 4
    from lipcore import ENGINE_VERSION
    from lipzoo.cli.catalog import current_engine_version

    assert current_engine_version() == ENGINE_VERSION


def test_export_command(zoo, capsys, tmp_path):
    cat, _, _ = zoo
    rc, out, _ = run_cli(capsys, "export", str(tmp_path / "out"), "--catalog", str(cat.path), "--json")
    info = json.loads(out)
    assert info["results"]["rows"] == 11 and info["runs"]["rows"] == 2
    n = duckdb.connect().execute(
        f"SELECT hub, count(*) FROM read_parquet('{tmp_path}/out/results/*/*.parquet', hive_partitioning=true) "
        "GROUP BY hub ORDER BY hub").fetchall()
    assert n == [("hf", 10), ("timm", 1)]


def test_help_teaches_with_examples(capsys):
    for cmd in ("leaderboard", "history", "diff", "stale", "runs", "export"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        out = capsys.readouterr().out
        assert "examples:" in out and "--catalog" in out, cmd


def test_leaderboard_command_does_not_import_torch(zoo):
    cat, _, _ = zoo
    # through the real entry point: every command module's register() runs, as when a user types the command
    code = ("import sys; from lipzoo.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules and 'lipcore' not in sys.modules, 'heavy import'; sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", code, "leaderboard", "--catalog", str(cat.path), "--format", "csv"],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[1].startswith("1,hf:org/alpha,")


def test_show_leaderboard_helper_for_audit(zoo, capsys):
    from lipzoo.cli.catalog import show_leaderboard

    cat, _, _ = zoo
    assert show_leaderboard(cat.path, top=1, fmt="csv") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("1,hf:org/alpha,hf,org/alpha,r1,2e-05,eclipse-fast,")


def test_empty_catalog_outputs_keep_their_shape(tmp_path, capsys):
    path = str(Catalog(tmp_path / "empty.duckdb").path)
    rc, out, _ = run_cli(capsys, "leaderboard", "--catalog", path, "--format", "csv")
    assert rc == 0 and out.startswith("rank,model_id,hub,repo_id,revision,best_upper,") and len(out.splitlines()) == 1
    rc, out, _ = run_cli(capsys, "leaderboard", "--catalog", path, "--format", "json")
    assert json.loads(out) == []
    rc, out, _ = run_cli(capsys, "leaderboard", "--catalog", path)
    assert rc == 0 and "no results in" in out and "`lipzoo audit`" in out
