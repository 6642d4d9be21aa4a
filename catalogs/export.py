"""Parquet export: the catalog as files any tool reads (pandas, polars, Spark, DuckDB without lipzoo).

Layout under DIR (hive partitioning, so `read_parquet('DIR/results/*/*.parquet', hive_partitioning=true)`
gets the hub column back):
  results/hub=H/data_0.parquet     every stored result
  models/hub=H/...                 models
  revisions/hub=H/...              revisions (with the model's hub)
  leaderboard/hub=H/...            the leaderboard view (global rank)
  runs.parquet                     audit runs (not per hub)
Each partitioned table directory is replaced on re-export (OVERWRITE), never appended to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

_PARTITIONED = {
    "results": "SELECT * FROM results",
    "models": "SELECT * FROM models",
    "revisions": "SELECT rv.*, m.hub FROM revisions rv JOIN models m USING (model_id)",
    "leaderboard": "SELECT * FROM leaderboard",
    "certificates": "SELECT c.*, m.hub FROM certificates c JOIN models m USING (model_id)",
}


def export_parquet(con: duckdb.DuckDBPyConnection, directory: Path) -> dict[str, dict[str, Any]]:
    directory = directory.expanduser().absolute()
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"export target {directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[str, Any]] = {}
    for name, sql in _PARTITIONED.items():
        target = directory / name
        row = con.execute(f"SELECT count(*) FROM ({sql})").fetchone()
        n = int(row[0]) if row else 0
        if n:
            con.execute(f"COPY ({sql}) TO $1 (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (hub), OVERWRITE)",
                        [str(target)])
        out[name] = {"path": str(target), "rows": n}
    runs = directory / "runs.parquet"
    con.execute("COPY (SELECT * FROM runs ORDER BY started_at) TO $1 (FORMAT parquet, COMPRESSION zstd)", [str(runs)])
    row = con.execute("SELECT count(*) FROM runs").fetchone()
    out["runs"] = {"path": str(runs), "rows": int(row[0]) if row else 0}
    return out
