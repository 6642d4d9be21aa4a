"""`Catalog`: the one DuckDB file every bound lands in — connections, the single writer, runs, queries.

Why short-lived connections: DuckDB lets exactly one process hold the file (a read-only reader blocks a
writer too) and has no busy timeout. So every operation opens the file, does its work and closes it; a long
audit holds the lock only for the milliseconds of each write transaction, and `lipzoo leaderboard` can run
beside it. Opening retries with jittered exponential back-off for `lock_timeout_s`, then raises
`CatalogLockedError` naming the holder's PID (from DuckDB's own lock message).

Query methods return plain `list[dict]` (column name -> Python value; timestamps are aware UTC datetimes),
so the CLI, the flows and tests need no DuckDB types.
"""

from __future__ import annotations

import functools
import os
import random
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from . import queries
from .errors import CatalogError, CatalogLockedError, CatalogMissingError
from .rows import ResultRow
from .schema import LATEST_VERSION, current_version, migrate

DEFAULT_PATH = "lipzoo.duckdb"
DEFAULT_LOCK_TIMEOUT_S = 30.0
RUN_STATUSES = ("running", "completed", "failed", "aborted", "interrupted", "external")

_LOCK_RE = re.compile(r"Conflicting lock is held in (?P<holder>.*?) \(PID (?P<pid>\d+)\)")
_PROCESS_LOCKS: dict[str, threading.RLock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


def resolve_catalog_path(cli_value: str | os.PathLike[str] | None = None) -> Path:
    """--catalog PATH, else $LIPZOO_CATALOG, else ./lipzoo.duckdb."""
    raw = cli_value or os.environ.get("LIPZOO_CATALOG") or DEFAULT_PATH
    return Path(raw).expanduser()


@functools.cache
def lipzoo_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lipzoo")
    except PackageNotFoundError:
        return "0.0.0+src"


def _lock_timeout_default() -> float:
    raw = os.environ.get("LIPZOO_LOCK_TIMEOUT")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError as e:
            raise CatalogError(f"LIPZOO_LOCK_TIMEOUT={raw!r} is not a number of seconds") from e
    return DEFAULT_LOCK_TIMEOUT_S


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _git_sha() -> str | None:
    """The checkout's commit when lipzoo runs from a git tree (read from .git, no subprocess)."""
    if os.environ.get("LIPZOO_GIT_SHA"):
        return os.environ["LIPZOO_GIT_SHA"]
    git = Path(__file__).resolve().parents[1] / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:40]
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:40]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None


def new_run_id(now: datetime | None = None) -> str:
    """Sortable and readable: 20261125T080102Z-a1b2c3 (any unique prefix selects it in `lipzoo diff`)."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def _fetch_dicts(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description or []]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


class Catalog:
    """The lipzoo catalog at `path`. Construction opens it once (creating it unless read-only) and applies
    pending migrations; each method then uses its own short connection.

    `Catalog(path, read_only=True)` never creates the file (missing -> CatalogMissingError) and opens
    read-only connections, except a one-off read-write open to migrate an older schema.
    """

    def __init__(self, path: str | os.PathLike[str], read_only: bool = False,
                 lock_timeout_s: float | None = None) -> None:
        self.path = Path(path).expanduser().absolute()
        self.read_only = read_only
        self.lock_timeout_s = _lock_timeout_default() if lock_timeout_s is None else float(lock_timeout_s)
        # test hook: called inside the write transaction just before COMMIT (the SIGKILL test uses it)
        self._before_commit: Callable[[], None] | None = None
        with _PROCESS_LOCKS_GUARD:
            self._plock = _PROCESS_LOCKS.setdefault(str(self.path), threading.RLock())
        self.schema_version = self._ensure_schema()

    # -- context manager: connections are per operation, so there is nothing to release -----------------
    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing is held between operations; kept for symmetry with other handles."""

    def __repr__(self) -> str:
        return f"Catalog({str(self.path)!r}, read_only={self.read_only})"

    # picklable (Prefect may pass it to tasks on other threads/processes): drop the lock and the test hook
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "read_only": self.read_only, "lock_timeout_s": self.lock_timeout_s,
                "schema_version": self.schema_version}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._before_commit = None
        with _PROCESS_LOCKS_GUARD:
            self._plock = _PROCESS_LOCKS.setdefault(str(self.path), threading.RLock())

    # -- opening ------------------------------------------------------------------------------------------
    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        if read_only and not self.path.exists():
            raise CatalogMissingError(self.path)
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        delay = 0.02
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=read_only)
                break
            except duckdb.IOException as e:
                msg = str(e)
                m = _LOCK_RE.search(msg)
                if m is None and "Could not set lock" not in msg:
                    if "does not exist" in msg:
                        raise CatalogMissingError(self.path) from e
                    raise CatalogError(f"cannot open catalog {self.path}: {msg.splitlines()[0]}") from e
                waited = time.monotonic() - start
                if waited >= self.lock_timeout_s:
                    pid = int(m.group("pid")) if m else None
                    holder = m.group("holder").rsplit("/", 1)[-1] if m else None
                    raise CatalogLockedError(self.path, pid, holder, waited) from e
                time.sleep(min(delay * random.uniform(0.5, 1.5), max(0.0, self.lock_timeout_s - waited)))
                delay = min(delay * 2, 1.0)
            except duckdb.ConnectionException as e:
                raise CatalogError(
                    f"catalog {self.path} is already open in this process in another mode "
                    f"({str(e).splitlines()[0]}); close that connection first") from e
            except duckdb.Error as e:
                raise CatalogError(f"cannot open catalog {self.path}: {str(e).splitlines()[0]}") from e
        try:
            con.execute("SET TimeZone = 'UTC'")
        except BaseException:
            con.close()
            raise
        return con

    @contextmanager
    def connect(self, read_only: bool | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short connection (read-only for read-only catalogs); closed, and the file unlocked, on exit."""
        ro = self.read_only if read_only is None else read_only
        if not ro and self.read_only:
            raise CatalogError(f"catalog {self.path} was opened read-only")
        with self._plock:
            con = self._open(ro)
            try:
                yield con
            finally:
                con.close()

    def _ensure_schema(self) -> int:
        with self._plock:
            if self.read_only:
                con = self._open(True)
                try:
                    have = current_version(con)
                finally:
                    con.close()
                if have == LATEST_VERSION:
                    return have
                if have > LATEST_VERSION:
                    raise self._too_new(have)
            con = self._open(False)
            try:
                have = current_version(con)
                if have > LATEST_VERSION:
                    raise self._too_new(have)
                if have == 0 and self._has_foreign_tables(con):
                    raise CatalogError(f"{self.path} is a DuckDB file but not a lipzoo catalog (no schema_version "
                                       f"table); pass another --catalog")
                migrate(con)
                return current_version(con)
            finally:
                con.close()

    @staticmethod
    def _has_foreign_tables(con: duckdb.DuckDBPyConnection) -> bool:
        row = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main'").fetchone()
        return bool(row and row[0])

    def _too_new(self, have: int) -> CatalogError:
        return CatalogError(f"catalog {self.path} has schema v{have}, newer than this lipzoo "
                            f"({lipzoo_version()}, schema v{LATEST_VERSION}); upgrade lipzoo")

    # -- runs ---------------------------------------------------------------------------------------------
    def begin_run(self, zoo: str | None, device: str, flow_run_id: str | None = None,
                  params: dict[str, Any] | None = None) -> str:
        """Record a new audit run ('running'); first mark this host's runs whose process is gone 'aborted'."""
        from .columns import dump_json  # the writer's modules (numpy) stay out of read-only commands

        run_id = new_run_id()
        with self.connect(read_only=False) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                self._abort_dead_runs(con)
                con.execute(
                    "INSERT INTO runs (run_id, flow_run_id, zoo, started_at, device, lipzoo_version, status, params, "
                    "host, pid, git_sha) VALUES ($1, $2, $3, $4, $5, $6, 'running', $7::JSON, $8, $9, $10)",
                    [run_id, flow_run_id, zoo, datetime.now(UTC), device, lipzoo_version(),
                     dump_json(params or {}), socket.gethostname(), os.getpid(), _git_sha()])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return run_id

    @staticmethod
    def _abort_dead_runs(con: duckdb.DuckDBPyConnection) -> list[str]:
        rows = con.execute("SELECT run_id, pid FROM runs WHERE status = 'running' AND host = $1",
                           [socket.gethostname()]).fetchall()
        dead = [rid for rid, pid in rows if pid is None or not _pid_alive(int(pid))]
        if dead:
            con.execute("UPDATE runs SET status = 'aborted', finished_at = $1 WHERE run_id IN (SELECT unnest($2))",
                        [datetime.now(UTC), dead])
        return dead

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
        """Close a run: status 'completed' | 'failed' | 'interrupted' (SIGINT/SIGTERM; what finished is written)
        (or 'aborted'). runs.status is a plain VARCHAR: no migration needed for 'interrupted'."""
        if status not in ("completed", "failed", "aborted", "interrupted"):
            raise ValueError(f"run status must be completed, failed, interrupted or aborted (got {status!r})")
        from .columns import dump_json

        with self.connect(read_only=False) as con:
            found = con.execute("SELECT count(*) FROM runs WHERE run_id = $1", [run_id]).fetchone()
            if not found or not found[0]:
                raise queries.unknown_run(con, run_id)
            con.execute("UPDATE runs SET status = $1, finished_at = $2, summary = $3::JSON WHERE run_id = $4",
                        [status, datetime.now(UTC), dump_json(summary or {}), run_id])

    def runs(self, limit: int | None = 20) -> list[dict[str, Any]]:
        """Runs, newest first; a 'running' run whose process is gone (same host) shows as 'aborted'."""
        with self.connect() as con:
            rows = _fetch_dicts(con.execute(queries.RUNS_SQL, [limit]))
        host = socket.gethostname()
        for r in rows:
            if r["status"] == "running" and r.get("host") == host and r.get("pid") and not _pid_alive(r["pid"]):
                r["status"] = "aborted"
        return rows

    # -- the single writer --------------------------------------------------------------------------------
    def write(self, rows: Sequence[ResultRow], run_id: str | None = None) -> int:
        """THE writer: one transaction, one columnar upsert per table. Returns the rows accepted (after
        de-duplicating the batch on its key; the last duplicate wins).

        Upsert key (model_id, revision, variant, engine_version): writing the same results again replaces them
        in place, except that an `ok` result is never replaced by a later `refused`/`failed` one for the same
        key (a transient failure must not erase a certified bound). `run_id` (else each row's own) tags rows.
        """
        if not rows:
            return 0
        from .columns import rows_to_columns

        cols = rows_to_columns(rows, run_id, lipzoo_version())
        with self.connect(read_only=False) as con:
            con.register("_lipzoo_batch", cols)
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    con.execute(queries.UPSERT_MODELS_SQL)
                    con.execute(queries.UPSERT_REVISIONS_SQL)
                    conflicts = con.execute(queries.CONFLICTS_SQL).fetchone()
                    sql = queries.UPSERT_RESULTS_SQL if conflicts and conflicts[0] else queries.INSERT_RESULTS_SQL
                    con.execute(sql, [datetime.now(UTC)])
                    con.execute(queries.ENSURE_RUNS_SQL)
                    con.execute(queries.RUN_ENGINE_SQL)
                    if self._before_commit is not None:
                        self._before_commit()
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            finally:
                con.unregister("_lipzoo_batch")
        return len(cols["ord"])

    # -- reads --------------------------------------------------------------------------------------------
    def computed_keys(self, engine_version: str) -> set[tuple[str, str, str]]:
        """(model_id, revision, variant) already computed (ok or refused) by `engine_version`; failed rows are
        left out so the next audit retries them."""
        with self.connect() as con:
            rows = con.execute("SELECT model_id, revision, variant FROM results WHERE engine_version = $1 "
                               "AND status IN ('ok', 'refused')", [engine_version]).fetchall()
        return {(m, r, v) for m, r, v in rows}

    def latest_revision(self, model_id: str) -> str | None:
        with self.connect() as con:
            row = con.execute("SELECT revision FROM latest_revisions WHERE model_id = $1", [model_id]).fetchone()
        return row[0] if row else None

    def leaderboard(self, variant: str | None = None, hub: str | None = None,
                    top: int | None = None, variant_columns: bool = True) -> list[dict[str, Any]]:
        """Latest revision of every model, ranked ascending by best certified upper bound (or by `variant`'s
        value). Ties share a rank (1, 1, 3). Models without a usable bound have rank None and come last.
        With `variant_columns`, each row also has one key per variant id holding that variant's ok value."""
        with self.connect() as con:
            return queries.leaderboard(con, variant=variant, hub=hub, top=top, variant_columns=variant_columns)

    def history(self, model: str) -> list[dict[str, Any]]:
        """Every stored result of `model` (model_id, or a repo id / unique fragment), oldest revision first."""
        with self.connect() as con:
            return queries.history(con, model)

    def history_summary(self, model: str) -> list[dict[str, Any]]:
        """One row per revision of `model`: best upper/lower, tightness, status counts."""
        with self.connect() as con:
            return queries.history_summary(con, model)

    def resolve_model(self, model: str) -> str:
        with self.connect() as con:
            return queries.resolve_model(con, model)

    def stale(self, engine_version: str, hub: str | None = None) -> list[dict[str, Any]]:
        """Models whose newest revision has no ok/refused result from `engine_version`."""
        with self.connect() as con:
            return queries.stale(con, engine_version, hub)

    def diff(self, run_a: str, run_b: str, include_unchanged: bool = False) -> list[dict[str, Any]]:
        """What moved between two audits: the catalog as of run A vs as of run B, per (model, variant)."""
        with self.connect() as con:
            return queries.diff(con, run_a, run_b, include_unchanged)

    def resolve_run(self, run: str) -> str:
        with self.connect() as con:
            return queries.resolve_run(con, run)

    def variants(self) -> list[str]:
        with self.connect() as con:
            return [v for (v,) in con.execute("SELECT DISTINCT variant FROM results ORDER BY 1").fetchall()]

    def export(self, directory: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
        """Write Parquet files under `directory` (results/models/revisions/leaderboard partitioned by hub,
        runs as one file). Returns {table: {"path": str, "rows": int}}."""
        from .export import export_parquet

        with self.connect() as con:
            return export_parquet(con, Path(directory))

    # -- certificates (issue 14; catalogs/certificates.py) ---------------------------------------------
    def write_certificates(self, rows: Sequence[Any], run_id: str | None = None) -> int:
        """The single writer for certificate rows: one transaction, upsert on the certificate key."""
        from . import certificates

        if not rows:
            return 0
        with self.connect(read_only=False) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                n = certificates.write(con, list(rows), run_id)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return n

    def certificate_inputs(self, model_id: str, revision: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(usable upper bounds of the revision incl. 'best', its current certificates) in one connection."""
        from . import certificates

        with self.connect() as con:
            return certificates.bounds_of(con, model_id, revision), certificates.existing(con, model_id, revision)

    def certified_leaderboard(self, eps: float, hub: str | None = None, top: int | None = None) -> list[dict[str, Any]]:
        """Latest revisions ranked by certified accuracy at `eps` (from the stored margins)."""
        from . import certificates

        with self.connect() as con:
            return certificates.leaderboard(con, eps, hub, top)

    def certificate_history(self, model: str) -> list[dict[str, Any]]:
        from . import certificates

        with self.connect() as con:
            return certificates.history(con, queries.resolve_model(con, model))

    def certificate_curves(self) -> list[dict[str, Any]]:
        from . import certificates

        with self.connect() as con:
            return certificates.curves(con)
