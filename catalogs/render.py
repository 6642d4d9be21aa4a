"""Rows (list of dicts) -> text in four formats, shared by the catalog commands and `lipzoo audit`.

table and markdown are for people: chosen columns, values to 4 significant digits (3.142e-05), ratios to 3.
csv and json are for programs: every key of every row, floats at full precision (shortest round-trip repr),
timestamps ISO 8601 UTC, NULL as empty (csv) / null (json). rich is imported only for `table`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

FORMATS = ("table", "csv", "json", "markdown")
_JSON_KEYS = {"params", "summary"}  # JSON-typed columns come back from DuckDB as strings


@dataclass(frozen=True)
class Col:
    key: str
    header: str
    kind: str = "text"  # text | num | ratio | int | time | bool | rev
    justify: str | None = None


def fmt_num(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{float(v):.4g}"


def fmt_cell(v: Any, kind: str) -> str:
    if v is None:
        return ""
    if kind == "num":
        return fmt_num(v)
    if kind == "ratio":
        return "" if isinstance(v, float) and not math.isfinite(v) else f"{float(v):.3g}"
    if kind == "int":
        return str(int(v))
    if kind == "time":
        return v.strftime("%Y-%m-%d %H:%M") if isinstance(v, datetime) else str(v)
    if kind == "bool":
        return "yes" if v else "no"
    if kind == "rev":
        s = str(v)
        return s if len(s) <= 14 else s[:12] + "…"
    return str(v)


def _iso(v: datetime | date) -> str:
    if isinstance(v, datetime) and v.tzinfo is not None and v.utcoffset() is not None and not v.utcoffset():
        return v.replace(tzinfo=None).isoformat() + "Z"
    return v.isoformat()


def _machine(v: Any, key: str = "") -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, datetime | date):
        return _iso(v)
    if key in _JSON_KEYS and isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    if isinstance(v, list | tuple):
        return [_machine(x) for x in v]
    return v


def _keys(rows: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    seen: set[str] = set()
    for r in rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    return keys


def _column_converter(rows: list[dict[str, Any]], key: str, for_csv: bool) -> Any:
    """One converter per column, picked from its first non-NULL value (columns are homogeneous)."""
    sample = next((r[key] for r in rows if r.get(key) is not None), None)
    if isinstance(sample, bool):
        return (lambda v: "true" if v else "false") if for_csv else None
    if isinstance(sample, float):
        if for_csv:
            return _csv_float
        return lambda v: v if math.isfinite(v) else None
    if isinstance(sample, datetime | date):
        return _iso
    if isinstance(sample, str) and key not in _JSON_KEYS:
        return None
    if isinstance(sample, int):
        return str if for_csv else None
    if for_csv:
        return lambda v: (json.dumps(m) if isinstance(m := _machine(v, key), dict | list) else str(m))
    return lambda v: _machine(v, key)


def to_json(rows: list[dict[str, Any]]) -> str:
    """A JSON array, one object per line (C encoder: fast for 10k-row leaderboards)."""
    keys = _keys(rows)
    conv = {k: _column_converter(rows, k, for_csv=False) for k in keys}
    out = []
    for r in rows:
        obj = {}
        for k in keys:
            v = r.get(k)
            f = conv[k]
            obj[k] = f(v) if (f is not None and v is not None) else v
        out.append(json.dumps(obj, allow_nan=False))
    return "[\n" + ",\n".join(out) + "\n]" if out else "[]"


def to_csv(rows: list[dict[str, Any]], header_if_empty: list[str] | None = None) -> str:
    """Column by column (the writer itself runs in C): 10k-row leaderboards print in well under a second."""
    buf = io.StringIO()
    keys = _keys(rows) or list(header_if_empty or [])
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    cols = []
    for k in keys:
        col = [r.get(k) for r in rows]  # None is written as an empty field
        f = _column_converter(rows, k, for_csv=True)
        if f is _csv_float:
            if not all(math.isfinite(v) for v in col if v is not None):  # the writer prints repr() of floats
                col = [None if v is None else f(v) for v in col]
        elif f is not None:
            col = [None if v is None else f(v) for v in col]
        cols.append(col)
    w.writerows(zip(*cols, strict=True))
    return buf.getvalue()


def _csv_float(v: float) -> str:
    return repr(v) if math.isfinite(v) else ""


def to_markdown(rows: list[dict[str, Any]], cols: list[Col]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(c.header) for c in cols) + " |",
             "|" + "|".join("---:" if c.kind in ("num", "ratio", "int") else "---" for c in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(esc(fmt_cell(r.get(c.key), c.kind)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict[str, Any]], cols: list[Col], title: str | None = None,
                caption: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    width = max(100, shutil.get_terminal_size((160, 24)).columns)
    console = Console(width=width, highlight=False, soft_wrap=False)
    table = Table(title=title, caption=caption, show_lines=False, header_style="bold")
    for c in cols:
        justify = c.justify or ("right" if c.kind in ("num", "ratio", "int") else "left")
        table.add_column(c.header, justify=justify, no_wrap=c.kind != "text" or c.key.endswith("_id"))  # type: ignore[arg-type]
    for r in rows:
        table.add_row(*(fmt_cell(r.get(c.key), c.kind) or "—" for c in cols))
    console.print(table)


def emit(rows: list[dict[str, Any]], cols: list[Col], fmt: str, title: str | None = None,
         caption: str | None = None, empty_keys: list[str] | None = None) -> None:
    """Print rows in `fmt` to stdout (table via rich; the others as exact text). `empty_keys`: the csv header
    when there are no rows (so an empty result still has the columns a non-empty one would have)."""
    import sys

    if fmt == "table":
        print_table(rows, cols, title=title, caption=caption)
    elif fmt == "csv":
        sys.stdout.write(to_csv(rows, header_if_empty=empty_keys or [c.key for c in cols]))
    elif fmt == "json":
        sys.stdout.write(to_json(rows) + "\n")
    elif fmt == "markdown":
        sys.stdout.write(to_markdown(rows, cols))
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
