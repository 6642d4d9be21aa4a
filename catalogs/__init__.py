"""catalogs: the DuckDB catalog of audits (schema, migrations, the single writer, views, queries, exports).

    from catalogs import Catalog, resolve_catalog_path
    with Catalog(resolve_catalog_path(None)) as cat:        # read-write; migrations applied on open
        run_id = cat.begin_run("demo", device="cpu", flow_run_id=None, params={})
        done = cat.computed_keys(ENGINE_VERSION)              # {(model_id, revision, variant)} ok/refused
        cat.write(rows, run_id)                               # THE writer: one transaction per batch
        cat.finish_run(run_id, "completed", summary={})
    Catalog(path, read_only=True).leaderboard(top=10)         # list[dict]; also history/stale/diff/runs/export

Connections are per call (DuckDB lets one process hold the file), so keeping a Catalog object around does
not lock anyone out. Env: LIPZOO_CATALOG (default path), LIPZOO_LOCK_TIMEOUT (seconds to retry a held file).
No torch and no lipcore imports here: `lipzoo leaderboard` must answer in well under a second.
"""

from .catalog import Catalog, lipzoo_version, new_run_id, resolve_catalog_path
from .errors import (
    CatalogError,
    CatalogLockedError,
    CatalogMissingError,
    UnknownModelError,
    UnknownRunError,
    UnknownVariantError,
)
from .rows import ResultRow
from .schema import LATEST_VERSION, MIGRATIONS, migrate

__all__ = [
    "Catalog", "CatalogError", "CatalogLockedError", "CatalogMissingError", "LATEST_VERSION", "MIGRATIONS",
    "ResultRow", "UnknownModelError", "UnknownRunError", "UnknownVariantError", "lipzoo_version", "migrate",
    "new_run_id", "resolve_catalog_path",
]
