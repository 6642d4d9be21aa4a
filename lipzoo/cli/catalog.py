"""`lipzoo leaderboard | history | diff | stale | runs | export`: query the DuckDB catalog of audits.

Only catalogs (duckdb + numpy) is imported, and only inside the commands: no torch, no Prefect, so these
answer in a fraction of a second. Each command opens the catalog read-only for the moment it queries, so it
works while an audit is writing (the writer retries around it, and it retries around the writer).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from lipzoo.cli import CliError

_RAW = argparse.RawDescriptionHelpFormatter
_TABLE_DEFAULT_TOP = 50
DEFAULT_CERT_EPS = 0.1

_CATALOG_HELP = "catalog file (default: $LIPZOO_CATALOG, else ./lipzoo.duckdb)"

LEADERBOARD_EPILOG = """\
Ranks the newest revision of every model by its best certified upper bound (smallest first). Only `ok`
results count as bounds: refused/failed models are listed last without a rank, and a vacuous upper bound
is used only when a model has nothing better. Tied bounds share a rank (1, 1, 3). tightness = best
upper / best lower (1.0 would be exact); a model whose upper bound is below its lower bound is flagged
UNSOUND.

examples:
  lipzoo leaderboard                              top 50 as a table
  lipzoo leaderboard --top 10 --format markdown   paste into a README
  lipzoo leaderboard --variant eclipse-fast       rank by one variant's value
  lipzoo leaderboard --hub timm --format csv > timm.csv
  lipzoo leaderboard --wide                       one column per variant
  lipzoo leaderboard --by certified-accuracy --eps 0.5   rank by certified accuracy at l2 radius 0.5
  duckdb lipzoo.duckdb "SELECT * FROM leaderboard ORDER BY rank LIMIT 5"   the same view in plain SQL
"""

HISTORY_EPILOG = """\
MODEL is a model id (hf:org/name, timm:resnet18, local:path), a repo id, or any fragment that matches
exactly one model. Default: one line per revision (oldest first); --long: every stored result.

examples:
  lipzoo history hf:my-org/my-mlp
  lipzoo history my-org/my-mlp --long --variant eclipse-fast
  lipzoo history resnet18 --format json
"""

DIFF_EPILOG = """\
Compares the catalog as it stood after run A with the catalog after run B, per (model, variant): bounds
that changed (new revision, new engine, new value or status), were added, or disappeared. Run ids accept
any unique prefix; `lipzoo runs` lists them.

examples:
  lipzoo runs --limit 5
  lipzoo diff 20261124T0300 20261125T0300
  lipzoo diff RUN_A RUN_B --all --format csv
"""

STALE_EPILOG = """\
Models whose newest revision has no ok/refused result from the given engine version (default: the
installed lipcore's ENGINE_VERSION); the next `lipzoo audit` recomputes them.

examples:
  lipzoo stale
  lipzoo stale --engine-version 1 --hub hf --format json
"""

EXPORT_EPILOG = """\
Writes Parquet (zstd) under DIR: results/, models/, revisions/, leaderboard/ partitioned by hub
(DIR/results/hub=hf/data_0.parquet ...) and runs.parquet. Re-exporting replaces those directories.

examples:
  lipzoo export out/
  duckdb -c "SELECT hub, count(*) FROM read_parquet('out/results/*/*.parquet', hive_partitioning=true) GROUP BY 1"
"""

RUNS_EPILOG = """\
examples:
  lipzoo runs                 the 20 newest audit runs
  lipzoo runs --limit 0 --format csv
"""


def _common(formats: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--catalog", metavar="PATH", help=_CATALOG_HELP)
    if formats:
        p.add_argument("--format", choices=["table", "csv", "json", "markdown"], default="table",
                       help="table (default, for people) | csv | json (exact, every column) | markdown")
    return p


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = _common()

    p = subparsers.add_parser("leaderboard", parents=[common], formatter_class=_RAW, epilog=LEADERBOARD_EPILOG,
                              help="rank models by best certified upper bound",
                              description="Rank every model's newest revision by its best certified bound.")
    p.add_argument("--variant", metavar="ID", help="rank by this variant's value instead of the best bound")
    p.add_argument("--hub", metavar="H", help="only models from this hub (hf, timm, local); ranks within it")
    p.add_argument("--top", metavar="N", type=int, default=None,
                   help=f"show the N best (default: {_TABLE_DEFAULT_TOP} for table, all for other formats; 0 = all)")
    p.add_argument("--wide", action="store_true", help="table/markdown: add one column per variant "
                   "(csv/json always carry them)")
    p.add_argument("--by", choices=("upper-bound", "certified-accuracy"), default="upper-bound",
                   help="rank by best certified upper bound (default) or by certified accuracy at --eps "
                        "(models with an evaluation set; docs/certificates.md)")
    p.add_argument("--eps", metavar="EPS", type=float, default=None,
                   help=f"with --by certified-accuracy: the l2 radius (default {DEFAULT_CERT_EPS}; any value works, "
                        "computed from the stored margins)")
    p.set_defaults(func=cmd_leaderboard)

    p = subparsers.add_parser("history", parents=[common], formatter_class=_RAW, epilog=HISTORY_EPILOG,
                              help="a model's bounds over revisions and time",
                              description="Show one model's bounds across its revisions and audits.")
    p.add_argument("model", metavar="MODEL", help="model id, repo id or a unique fragment")
    p.add_argument("--long", action="store_true", help="every stored result instead of one line per revision")
    p.add_argument("--variant", metavar="ID", help="with --long: only this variant")
    p.add_argument("--certificates", action="store_true", help="only the certificates (certified accuracy per "
                   "revision); tables show them after the bounds anyway")
    p.set_defaults(func=cmd_history)

    p = subparsers.add_parser("diff", parents=[common], formatter_class=_RAW, epilog=DIFF_EPILOG,
                              help="what moved between two audit runs",
                              description="Show which bounds moved between two audit runs.")
    p.add_argument("run_a", metavar="RUN_A", help="the earlier run (id or unique prefix)")
    p.add_argument("run_b", metavar="RUN_B", help="the later run (id or unique prefix)")
    p.add_argument("--all", action="store_true", help="also list unchanged (model, variant) pairs")
    p.set_defaults(func=cmd_diff)

    p = subparsers.add_parser("stale", parents=[common], formatter_class=_RAW, epilog=STALE_EPILOG,
                              help="models lacking results from the current engine",
                              description="List models whose newest revision lacks results from an engine version.")
    p.add_argument("--engine-version", metavar="V", help="engine version to check (default: installed lipcore's)")
    p.add_argument("--hub", metavar="H", help="only models from this hub")
    p.set_defaults(func=cmd_stale)

    p = subparsers.add_parser("runs", parents=[common], formatter_class=_RAW, epilog=RUNS_EPILOG,
                              help="list audit runs (ids for `lipzoo diff`)",
                              description="List audit runs, newest first.")
    p.add_argument("--limit", metavar="N", type=int, default=20, help="how many (default 20; 0 = all)")
    p.set_defaults(func=cmd_runs)

    p = subparsers.add_parser("export", parents=[_common(formats=False)], formatter_class=_RAW,
                              epilog=EXPORT_EPILOG, help="export the catalog to Parquet, partitioned by hub",
                              description="Export the catalog to Parquet files partitioned by hub.")
    p.add_argument("directory", metavar="DIR", help="output directory (created if missing)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_export)


# ---- helpers --------------------------------------------------------------------------------------------
def _open(args: argparse.Namespace) -> Any:
    from catalogs import Catalog, CatalogError, resolve_catalog_path

    path = resolve_catalog_path(getattr(args, "catalog", None))
    try:
        _write_spooled(path)
        return Catalog(path, read_only=True)
    except CatalogError as e:
        raise CliError(str(e)) from e


def _write_spooled(path: Any) -> None:
    """Rows an audit had to spool (the catalog's write lock was held when it ended) are written by the next
    lipzoo command that reads this catalog, if the lock is free now; otherwise one line says they still wait."""
    from catalogs import Catalog, CatalogLockedError
    from flows import spool

    files = spool.pending(path)
    if not files or not path.exists():
        return
    try:
        n = spool.replay(Catalog(path, lock_timeout_s=0))
    except CatalogLockedError as e:
        print(f"lipzoo: {len(files)} spooled run(s) wait to be written ({e})", file=sys.stderr)
        return
    print(f"lipzoo: wrote {n} spooled result rows into {path}", file=sys.stderr)


def _run(fn: Any, *a: Any, **kw: Any) -> Any:
    from catalogs import CatalogError

    try:
        return fn(*a, **kw)
    except CatalogError as e:
        raise CliError(str(e)) from e


def current_engine_version() -> str:
    """lipcore.ENGINE_VERSION without importing lipcore (which imports torch, ~2 s): read it from the source."""
    import importlib.util

    spec = importlib.util.find_spec("lipcore")
    if spec and spec.origin:
        try:
            text = Path(spec.origin).read_text()
        except OSError:
            text = ""
        m = re.search(r"^ENGINE_VERSION\s*=\s*[\"']([^\"']+)[\"']", text, re.MULTILINE)
        if m:
            return m.group(1)
    import lipcore

    return str(lipcore.ENGINE_VERSION)


def _status_cell(r: dict[str, Any]) -> str:
    if r.get("sound") is False:
        return "UNSOUND: upper < lower"
    if r.get("status") == "ok":
        extra = []
        if r.get("n_refused"):
            extra.append(f"{r['n_refused']} refused")
        if r.get("n_failed"):
            extra.append(f"{r['n_failed']} failed")
        return f"{r.get('n_ok', 0)} ok" + (f", {', '.join(extra)}" if extra else "")
    return (r.get("first_problem") or r.get("status") or "")[:60]


# ---- commands -------------------------------------------------------------------------------------------
def cmd_leaderboard(args: argparse.Namespace) -> int:
    from catalogs.render import Col, emit

    cat = _open(args)
    top = args.top
    if top is None and args.format == "table":
        top = _TABLE_DEFAULT_TOP
    if top is not None and top < 0:
        raise CliError(f"--top must be >= 0 (got {top})")
    if getattr(args, "by", "upper-bound") == "certified-accuracy":
        return _certified_leaderboard(cat, args, top or None)
    rows = _run(cat.leaderboard, variant=args.variant, hub=args.hub, top=top or None,
                variant_columns=args.format in ("csv", "json") or args.wide)
    if not rows and args.hub:
        with cat.connect() as con:
            hubs = [h for (h,) in con.execute("SELECT DISTINCT hub FROM models ORDER BY 1").fetchall()]
        if args.hub not in hubs:
            raise CliError(f"no models from hub {args.hub!r} in {cat.path} (hubs: {', '.join(hubs) or 'none'})")
    for r in rows:
        r["state"] = _status_cell(r)
        if args.variant is None:
            r["upper_by"] = (r.get("best_upper_variant") or "") + (" (vacuous)" if r.get("best_upper_vacuous") else "")
    if args.format in ("csv", "json"):
        for r in rows:
            r.pop("state", None)
            r.pop("upper_by", None)
    if args.variant:
        cols = [Col("rank", "#", "int"), Col("model_id", "model"), Col("revision", "revision", "rev"),
                Col("value", args.variant, "num"), Col("status", "status"), Col("vacuous", "vacuous", "bool"),
                Col("best_upper", "best upper", "num"), Col("best_lower", "best lower", "num"),
                Col("tightness", "upper/lower", "ratio"), Col("reason", "reason")]
        what = f"ranked by {args.variant} (ascending; ties share a rank)"
    else:
        cols = [Col("rank", "#", "int"), Col("model_id", "model"), Col("revision", "revision", "rev"),
                Col("best_upper", "best upper", "num"), Col("upper_by", "by"),
                Col("best_lower", "best lower", "num"), Col("best_lower_variant", "by"),
                Col("tightness", "upper/lower", "ratio"), Col("state", "results")]
        if args.wide and rows:
            from catalogs.queries import variant_ids

            with cat.connect() as con:
                cols += [Col(v, v, "num") for v in variant_ids(con) if v in rows[0]]
        what = "ranked by best certified upper bound (ascending; ties share a rank)"
    caption = None
    if args.format == "table":
        with cat.connect() as con:
            total = con.execute("SELECT count(*) FROM models WHERE $1::VARCHAR IS NULL OR hub = $1",
                                [args.hub]).fetchone()
        n = total[0] if total else 0
        caption = f"{len(rows)} of {n} models · {what} · {cat.path}"
        if not rows:
            caption = f"no results in {cat.path} yet; run `lipzoo audit`"
    from catalogs.queries import LEADERBOARD_COLUMNS

    empty = ["rank", *(c.strip() for c in LEADERBOARD_COLUMNS.split(","))]
    emit(rows, cols, args.format, title="lipzoo leaderboard", caption=caption, empty_keys=empty)
    # called by `lipzoo audit` (a Namespace without `by`): the certified table follows when there are certificates
    if not hasattr(args, "by") and args.format == "table" and args.variant is None:
        args.eps = None
        _certified_leaderboard(cat, args, top or None, quiet_empty=True)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from catalogs.render import Col, emit

    cat = _open(args)
    model_id = _run(cat.resolve_model, args.model)
    if args.long:
        rows = _run(cat.history, model_id)
        if args.variant:
            known = sorted({r["variant"] for r in rows})
            rows = [r for r in rows if r["variant"] == args.variant]
            if not rows:
                raise CliError(f"model {model_id} has no results for variant {args.variant!r} "
                               f"(it has: {', '.join(known)})")
        cols = [Col("revision", "revision", "rev"), Col("revision_seen", "first seen", "time"),
                Col("variant", "variant"), Col("kind", "kind"), Col("status", "status"), Col("value", "value", "num"),
                Col("vacuous", "vacuous", "bool"), Col("seconds", "seconds", "num"), Col("engine_version", "engine"),
                Col("run_id", "run"), Col("reason", "reason")]
    else:
        rows = _run(cat.history_summary, model_id)
        for r in rows:
            r["state"] = _status_cell(r)
            r["upper_by"] = (r.get("best_upper_variant") or "") + (" (vacuous)" if r.get("best_upper_vacuous") else "")
        if args.format in ("csv", "json"):
            for r in rows:
                r.pop("state")
                r.pop("upper_by")
        cols = [Col("revision", "revision", "rev"), Col("revision_seen", "first seen", "time"),
                Col("best_upper", "best upper", "num"), Col("upper_by", "by"), Col("best_lower", "best lower", "num"),
                Col("best_lower_variant", "by"), Col("tightness", "upper/lower", "ratio"), Col("state", "results"),
                Col("engine_version", "engine")]
    certs = _run(cat.certificate_history, model_id)
    if getattr(args, "certificates", False):
        rows = certs
        for r in rows:
            r["cert_acc"] = ", ".join(f"{e:g}: {a:.3f}" for e, a in zip(r["eps"], r["certified_accuracy"], strict=True))
        cols = [Col("revision", "revision", "rev"), Col("revision_seen", "first seen", "time"), Col("scope", "scope"),
                Col("variant", "bound by"), Col("bound", "L", "num"), Col("clean_accuracy", "clean acc", "num"),
                Col("median_radius", "median radius", "num"), Col("cert_acc", "certified accuracy (eps: acc)"),
                Col("eps_units", "eps units"), Col("dataset", "dataset"), Col("engine_version", "engine")]
        emit(rows, cols, args.format, title=f"certificates of {model_id}",
             caption=f"{len(rows)} certificates, oldest revision first · {cat.path}")
        return 0
    emit(rows, cols, args.format, title=f"history of {model_id}",
         caption=f"{len(rows)} {'results' if args.long else 'revisions'}, oldest first · {cat.path}")
    if certs and args.format in ("table", "markdown"):
        args.certificates = True
        return cmd_history(args)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from catalogs.render import Col, emit

    cat = _open(args)
    a = _run(cat.resolve_run, args.run_a)
    b = _run(cat.resolve_run, args.run_b)
    rows = _run(cat.diff, a, b, include_unchanged=args.all)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["change"]] = counts.get(r["change"], 0) + 1
    cols = [Col("change", "change"), Col("model_id", "model"), Col("variant", "variant"),
            Col("revision_a", "rev A", "rev"), Col("revision_b", "rev B", "rev"), Col("status_a", "status A"),
            Col("status_b", "status B"), Col("value_a", "value A", "num"), Col("value_b", "value B", "num"),
            Col("ratio", "B/A", "ratio")]
    summary = ", ".join(f"{n} {k}" for k, n in counts.items()) or "nothing moved"
    emit(rows, cols, args.format, title=f"diff {a} → {b}", caption=f"{summary} · {cat.path}",
         empty_keys=["model_id", "variant", "kind", "revision_a", "revision_b", "status_a", "status_b", "value_a",
                     "value_b", "ratio", "change", "engine_a", "engine_b"])
    return 0


def cmd_stale(args: argparse.Namespace) -> int:
    from catalogs.render import Col, emit

    cat = _open(args)
    engine = args.engine_version or current_engine_version()
    rows = _run(cat.stale, engine, hub=args.hub)
    for r in rows:
        r["engines"] = ", ".join(v or "''" for v in (r.get("engines_present") or [])) or "none"
    if args.format in ("csv", "json"):
        for r in rows:
            r.pop("engines")
    cols = [Col("model_id", "model"), Col("revision", "newest revision", "rev"),
            Col("revision_seen", "first seen", "time"), Col("engines", "engines with results"),
            Col("failed_current", f"failed @ {engine}", "int")]
    emit(rows, cols, args.format, title=f"stale models (engine {engine})",
         caption=f"{len(rows)} stale · `lipzoo audit` recomputes them · {cat.path}",
         empty_keys=["model_id", "hub", "repo_id", "revision", "revision_seen", "engines_present", "failed_current"])
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from catalogs.render import Col, emit

    cat = _open(args)
    rows = _run(cat.runs, limit=args.limit if args.limit and args.limit > 0 else None)
    cols = [Col("run_id", "run"), Col("status", "status"), Col("started_at", "started (UTC)", "time"),
            Col("finished_at", "finished (UTC)", "time"), Col("zoo", "zoo"), Col("device", "device"),
            Col("engine_version", "engine"), Col("n_results", "results", "int"), Col("flow_run_id", "flow run")]
    emit(rows, cols, args.format, title="audit runs", caption=f"newest first · {cat.path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import json

    cat = _open(args)
    target = Path(args.directory)
    try:
        out = _run(cat.export, target)
    except OSError as e:
        raise CliError(f"cannot export to {target}: {e}") from e
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name, info in out.items():
            print(f"{name:<12} {info['rows']:>9} rows  {info['path']}")
    return 0


def _certified_leaderboard(cat: Any, args: argparse.Namespace, top: int | None, quiet_empty: bool = False) -> int:
    """`leaderboard --by certified-accuracy`: rank by certified accuracy at eps; models without an evaluation set
    follow unranked with their bound only."""
    from catalogs.render import Col, emit

    eps = DEFAULT_CERT_EPS if getattr(args, "eps", None) is None else float(args.eps)
    if eps < 0:
        raise CliError(f"--eps must be >= 0 (got {eps})")
    rows = _run(cat.certified_leaderboard, eps, hub=args.hub)
    if quiet_empty and not rows:
        return 0
    have = {r["model_id"] for r in rows}
    for r in rows:
        r["units"] = r.get("eps_units")
    for b in [] if quiet_empty else _run(cat.leaderboard, hub=args.hub, variant_columns=False):
        if b["model_id"] not in have:
            rows.append({"rank": None, "model_id": b["model_id"], "revision": b["revision"], "eps": eps,
                         "bound": b.get("best_upper"), "variant": b.get("best_upper_variant"), "units": "no data"})
    rows = rows[:top] if top else rows
    cols = [Col("rank", "#", "int"), Col("model_id", "model"), Col("revision", "revision", "rev"),
            Col("certified_accuracy", f"cert. acc @ eps={eps:g}", "num"), Col("clean_accuracy", "clean acc", "num"),
            Col("median_radius", "median radius", "num"), Col("bound", "L (best upper)", "num"),
            Col("variant", "by"), Col("units", "eps units"), Col("n", "samples", "int")]
    caption = (f"{len(have)} models with certificates · ranked by certified accuracy at l2 eps = {eps:g} "
               f"(radius m/(sqrt(2) L); ties share a rank) · {cat.path}")
    emit(rows, cols, args.format, title="lipzoo certified leaderboard", caption=caption,
         empty_keys=["rank", "model_id", "revision", "eps", "certified_accuracy", "clean_accuracy", "median_radius"])
    return 0


def show_leaderboard(catalog: str | Path | None = None, top: int | None = 20, fmt: str = "table",
                     hub: str | None = None, variant: str | None = None, wide: bool = False) -> int:
    """Print the leaderboard exactly as `lipzoo leaderboard` does (for `lipzoo audit` to call at its end)."""
    args = argparse.Namespace(catalog=str(catalog) if catalog else None, top=top, format=fmt, hub=hub,
                              variant=variant, wide=wide)
    return cmd_leaderboard(args)  # no `by`: the certified table follows when there are certificates
