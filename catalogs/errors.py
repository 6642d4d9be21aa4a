"""Errors the catalog raises on purpose; each message is one line a user can act on."""

from __future__ import annotations

from pathlib import Path


class CatalogError(Exception):
    """Base class: the CLI prints the message as one line."""


class CatalogMissingError(CatalogError, FileNotFoundError):
    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"no catalog at {path}; run `lipzoo audit` first "
                         f"(or pass --catalog PATH / set LIPZOO_CATALOG)")


class CatalogLockedError(CatalogError):
    """Another process holds the DuckDB file (DuckDB allows one process per file, readers included)."""

    def __init__(self, path: Path, pid: int | None, holder: str | None, waited_s: float) -> None:
        self.path = path
        self.pid = pid
        self.holder = holder
        self.waited_s = waited_s
        who = f"PID {pid}" if pid is not None else "an unknown process"
        if holder:
            who += f" ({holder})"
        super().__init__(
            f"catalog {path} is locked by {who}; gave up after {waited_s:.1f} s — wait for it to finish "
            f"or raise LIPZOO_LOCK_TIMEOUT"
        )


class UnknownModelError(CatalogError, LookupError):
    pass


class UnknownRunError(CatalogError, LookupError):
    pass


class UnknownVariantError(CatalogError, LookupError):
    pass
