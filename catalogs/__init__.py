"""catalogs: the DuckDB catalog of audits (schema, migrations, the single writer, views, queries, exports).

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
