"""The durable spool: computed result rows that could not reach the catalog (its write lock held by another
process past the wait, or an audit stopped while the lock was held) are kept on disk beside the catalog and
written by the next audit of that catalog.

Why a file beside the catalog and not memory: an audit that gives up waiting, or is stopped by SIGINT/SIGTERM,
must not throw away what it computed. One file per run, `<catalog>.spool/<run_id>.pkl` (pickled ResultRows:
written by this user's own lipzoo, read back only from that folder), fsynced and renamed into place, so a
crash mid-write leaves either the old state or the whole file. Replaying upserts by the results key, so a file
written twice (or replayed after a partial write) never duplicates a row.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

log = logging.getLogger("lipzoo.flows")


def spool_dir(catalog_path: str | os.PathLike[str]) -> Path:
    p = Path(catalog_path)
    return p.with_name(p.name + ".spool")


def spool(catalog_path: str | os.PathLike[str], run_id: str, rows: list[Any]) -> Path | None:
    """Append `rows` to the run's spool file (atomically replaced); returns the file, None when nothing to do."""
    if not rows:
        return None
    d = spool_dir(catalog_path)
    d.mkdir(parents=True, exist_ok=True)
    f = d / f"{run_id}.pkl"
    old: list[Any] = []
    if f.exists():
        with f.open("rb") as fh:
            old = pickle.load(fh)
    tmp = f.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(old + list(rows), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, f)
    return f


def pending(catalog_path: str | os.PathLike[str]) -> list[Path]:
    d = spool_dir(catalog_path)
    return sorted(d.glob("*.pkl")) if d.is_dir() else []


def replay(catalog: Any) -> int:
    """Write every spooled run's rows into `catalog` (each file in its own transaction, tagged with its own run
    id), deleting each file once written. Returns the rows written."""
    n = 0
    for f in pending(catalog.path):
        with f.open("rb") as fh:
            rows = pickle.load(fh)
        n += catalog.write(rows, f.stem)
        f.unlink()
        log.warning("wrote %d spooled result rows of run %s into %s", len(rows), f.stem, catalog.path)
    return n
