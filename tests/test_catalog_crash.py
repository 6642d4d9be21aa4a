"""Crash safety and the lock: real child processes holding or writing the DuckDB file, killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_catalog_helpers import big_batch

from catalogs import Catalog, CatalogLockedError
from lipzoo.cli import main

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1"}

HOLDER = """
import duckdb, sys
con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "ro")
con.execute("SELECT count(*) FROM results").fetchall()
print("HELD", flush=True)
sys.stdin.readline()
con.close()
"""

WRITER = """
import sys, time
from catalogs import Catalog
from test_catalog_helpers import big_batch
cat = Catalog(sys.argv[1])
run = cat.begin_run("doomed", "cpu")
print("RUN", run, flush=True)
rows = big_batch(int(sys.argv[2]), revision="r1")
if sys.argv[3] == "hook":
    def hook():
        print("IN_TXN", flush=True)
        time.sleep(120)
    cat._before_commit = hook
print("WRITING", flush=True)
cat.write(rows, run)
print("COMMITTED", flush=True)
time.sleep(120)
"""


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV)


def _wait_for(proc: subprocess.Popen, marker: str, timeout: float = 90.0) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child exited before {marker!r}: {proc.stderr.read()}")
        lines.append(line.strip())
        if line.strip().startswith(marker):
            return lines
    raise AssertionError(f"no {marker!r} within {timeout} s")


@pytest.fixture
def catalog(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb", lock_timeout_s=30)
    cat.write(big_batch(50))  # committed baseline: 600 rows at revision r0
    return cat


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_lock_held_names_pid_then_retry_succeeds(catalog, mode):
    holder = _spawn(HOLDER, str(catalog.path), mode)
    try:
        _wait_for(holder, "HELD")
        t0 = time.monotonic()
        with pytest.raises(CatalogLockedError) as e:
            Catalog(catalog.path, lock_timeout_s=0.4).write(big_batch(1, revision="r9"))
        assert time.monotonic() - t0 >= 0.4
        assert e.value.pid == holder.pid
        assert f"locked by PID {holder.pid}" in str(e.value) and "\n" not in str(e.value)
        # the holder lets go after ~1 s: a writer with a longer timeout gets through
        threading.Timer(1.0, lambda: (holder.stdin.write("\n"), holder.stdin.flush())).start()
        t0 = time.monotonic()
        assert Catalog(catalog.path, lock_timeout_s=30).write(big_batch(2, revision="r9")) == 24
        assert time.monotonic() - t0 >= 0.8
        holder.wait(timeout=30)
    finally:
        holder.kill()
        holder.wait()
    assert len(catalog.history("m000000")) == 24  # r0 and r9


def test_cli_reports_lock_holder(catalog, capsys, monkeypatch):
    holder = _spawn(HOLDER, str(catalog.path), "rw")
    try:
        _wait_for(holder, "HELD")
        monkeypatch.setenv("LIPZOO_LOCK_TIMEOUT", "0.3")
        assert main(["leaderboard", "--catalog", str(catalog.path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"lipzoo: error: catalog {catalog.path} is locked by PID {holder.pid}")
        assert len(err.splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()


def test_sigkill_inside_write_transaction_leaves_no_partial_batch(catalog):
    n_models = 4000  # 48,000 rows
    child = _spawn(WRITER, str(catalog.path), str(n_models), "hook")
    try:
        lines = _wait_for(child, "IN_TXN")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
        child.wait()
    doomed_run = next(ln.split()[1] for ln in lines if ln.startswith("RUN"))
    # the file opens, the committed baseline is intact and nothing of the killed batch is there
    cat = Catalog(catalog.path)
    with cat.connect() as con:
        assert con.execute("SELECT count(*) FROM results").fetchone()[0] == 600
        assert con.execute("SELECT count(*) FROM results WHERE revision = 'r1'").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM revisions WHERE revision = 'r1'").fetchone()[0] == 0
        assert con.execute("SELECT status FROM runs WHERE run_id = $1", [doomed_run]).fetchone()[0] == "running"
    assert {r["run_id"]: r["status"] for r in cat.runs()}[doomed_run] == "aborted"  # shown as such
    # the next audit marks it aborted and completes the work
    rerun = cat.begin_run("again", "cpu")
    with cat.connect() as con:
        assert con.execute("SELECT status FROM runs WHERE run_id = $1", [doomed_run]).fetchone()[0] == "aborted"
    done = cat.computed_keys("1")
    todo = [r for r in big_batch(n_models, revision="r1") if (r.model_id, r.revision, r.variant) not in done]
    assert len(todo) == n_models * 12
    assert cat.write(todo, rerun) == n_models * 12
    cat.finish_run(rerun, "completed")
    with cat.connect() as con:
        assert con.execute("SELECT count(*) FROM results").fetchone()[0] == 600 + n_models * 12
    assert cat.latest_revision("hf:org/m000001") == "r1"


def _kill_during_write(catalog: Catalog, n_models: int, delay: float) -> int:
    child = _spawn(WRITER, str(catalog.path), str(n_models), "nohook")
    try:
        _wait_for(child, "WRITING")
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
        child.wait()
    cat = Catalog(catalog.path)
    with cat.connect() as con:
        n = con.execute("SELECT count(*) FROM results WHERE revision = 'r1'").fetchone()[0]
        total = con.execute("SELECT count(*) FROM results").fetchone()[0]
        models = con.execute("SELECT count(*) FROM revisions WHERE revision = 'r1'").fetchone()[0]
    assert n in (0, n_models * 12), n
    assert total == 600 + n
    assert models == (n_models if n else 0)  # models/revisions rows commit with their results, or not at all
    return n


def _calibrate(tmp_path: Path, n_models: int) -> float:
    scratch = Catalog(tmp_path / "calibrate.duckdb")
    t0 = time.monotonic()
    scratch.write(big_batch(n_models, revision="r1"))
    return time.monotonic() - t0


def test_sigkill_at_an_arbitrary_moment_is_all_or_nothing(catalog, tmp_path):
    """No hook: the kill lands wherever the child is, aimed at ~60% of a calibrated write; all or nothing."""
    n_models = 6000  # 72,000 rows
    _kill_during_write(catalog, n_models, 0.6 * _calibrate(tmp_path, n_models))


@pytest.mark.slow
def test_sigkill_sweep_through_the_write(catalog, tmp_path):
    """Kills spread from before the transaction to past the commit (checkpoint included): always all or nothing,
    and the catalog always reopens."""
    n_models = 6000
    d = _calibrate(tmp_path, n_models)
    outcomes = []
    for frac in (0.2, 0.4, 0.55, 0.7, 0.8, 0.9, 1.0, 1.2):
        n = _kill_during_write(catalog, n_models, frac * d)
        outcomes.append(n)
        if n:  # committed: take it out again so the next kill starts from the same baseline
            with Catalog(catalog.path).connect() as con:
                con.execute("DELETE FROM results WHERE revision = 'r1'")
                con.execute("DELETE FROM revisions WHERE revision = 'r1'")
    print("rows present after each kill:", outcomes)
