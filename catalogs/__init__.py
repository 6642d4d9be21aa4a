"""catalogs: the DuckDB catalog of audits (schema, migrations, the single writer, views, queries, exports)."""

from .rows import ResultRow

__all__ = ["ResultRow"]
