"""`lipzoo audit` and `lipzoo watch`: run the Prefect audit flows from the command line.

Prefect runs locally with no server configured (a temporary one per process), quietly; PREFECT_HOME
defaults to ~/.cache/lipzoo/prefect. Heavy imports (prefect, torch) happen inside the commands.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from . import CliError

AUDIT_EPILOG = """\
With no arguments, audits the embedded demo zoo (ECLipsE benchmark MLPs, digits MLPs/CNNs, tiny timm
architectures) into ./lipzoo.duckdb and prints the leaderboard. A second run computes only what is new.
Exit status: 0 all results landed, 1 something failed (the rest landed; see the summary), 2 usage error.

examples:
  lipzoo audit
  lipzoo audit deploy/zoos/demo.toml --device cpu --catalog /tmp/zoo.duckdb
  lipzoo audit --hf my-org --activation relu          every model of an HF author/organisation
  lipzoo audit --hf my-org/my-mlp --variant eclipse-fast --variant lower-ascent
  lipzoo audit --timm 'resnet1*' --input-shape 3 64 64
  lipzoo audit --local checkpoints/ --activation tanh
  lipzoo audit --runner dask://scheduler:8786
"""

WATCH_EPILOG = """\
Resolves every model's current revision, emits a Prefect event `lipzoo.checkpoint.new` for each revision the
catalog has not seen, and audits only those models (--no-audit: only emit the events).

examples:
  lipzoo watch deploy/zoos/demo.toml
  lipzoo watch --hf my-org --activation relu --no-audit
"""


def _common(p: argparse.ArgumentParser) -> None:
    from flows.hubs import flagged_hubs

    p.add_argument("zoo", nargs="?", metavar="ZOO.toml", help="zoo manifest (default: the demo zoo, unless "
                   f"{_flags()} name the models)")
    src = p.add_argument_group("models instead of a manifest")
    for hub in flagged_hubs():  # each hub declares its flag (flows/hubs: Hub.flag_help, Hub.cli)
        src.add_argument(f"--{hub.name}", dest=hub.name, action="append", metavar=hub.flag_metavar,
                         help=hub.flag_help)
    src.add_argument("--activation", metavar="ACT", help="activation of plain weight files (relu, tanh, "
                     "leaky_relu:0.1, ...)")
    src.add_argument("--input-shape", nargs="+", type=int, metavar="N", help="input shape without batch "
                     "(e.g. 3 64 64) for convolutional models")
    src.add_argument("--endpoint", metavar="URL", help="Hugging Face endpoint for --hf (default: HF_ENDPOINT)")
    src.add_argument("--pretrained", choices=["auto", "true", "false"], default="auto",
                     help="--timm weights: hub weights when reachable (auto), required (true), or seeded "
                     "random init (false)")
    p.add_argument("--variant", action="append", metavar="ID", help="bound variant to compute (repeatable; "
                   "default: what the manifest says per entry)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where lipcore runs (default: manifest, "
                   "else auto = cuda when available)")
    p.add_argument("--budget", type=float, metavar="S", help="per-model time budget in seconds")
    p.add_argument("--catalog", metavar="PATH", help="DuckDB catalog (default: $LIPZOO_CATALOG or ./lipzoo.duckdb)")
    p.add_argument("--runner", metavar="SPEC", help="task runner, e.g. dask://host:8786 or ray://host:10001 "
                   "(default: a local thread pool)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON (no progress bar)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="show Prefect's task/flow log lines")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    raw = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("audit", help="audit a model zoo into the catalog (default: the demo zoo)",
                              description="Pull the models of a zoo from their hubs, compute every bound variant "
                              "that is missing from the catalog, write the results, print the leaderboard.",
                              formatter_class=raw, epilog=AUDIT_EPILOG)
    _common(p)
    p.add_argument("--force", action="store_true", help="recompute even what the catalog already has")
    p.add_argument("--top", type=int, default=None, metavar="N", help="leaderboard rows to print (default 20)")
    p.add_argument("--no-leaderboard", action="store_true", help="do not print the leaderboard")
    p.set_defaults(func=cmd_audit)

    p = subparsers.add_parser("watch", help="audit only models with a new checkpoint; emit Prefect events",
                              description="Resolve current revisions; emit lipzoo.checkpoint.new per new revision "
                              "and audit only those models.", formatter_class=raw, epilog=WATCH_EPILOG)
    _common(p)
    p.add_argument("--no-audit", action="store_true", help="only emit the events (e.g. a trigger audits)")
    p.add_argument("--no-events", action="store_true", help="do not emit Prefect events")
    p.set_defaults(func=cmd_watch)


def _flags() -> str:
    from flows.hubs import flagged_hubs

    return "/".join(f"--{h.name}" for h in flagged_hubs())


def _zoo_arg(args: argparse.Namespace) -> Any:
    """The manifest path or the ad-hoc manifest dict the arguments describe (validated here: one-line errors
    before any flow starts)."""
    from flows.hubs import flagged_hubs
    from flows.zoo import ZooError, adhoc_zoo, load_zoo, override

    sources = {h.name: getattr(args, h.name, None) for h in flagged_hubs()}
    adhoc = any(sources.values())
    if adhoc and args.zoo:
        raise CliError(f"give either a zoo manifest or {_flags()}, not both")
    try:
        zoo: Any = adhoc_zoo(**sources, activation=args.activation, input_shape=args.input_shape,
                             endpoint=args.endpoint,
                             pretrained={"auto": "auto", "true": True, "false": False}[args.pretrained]) \
            if adhoc else (str(Path(args.zoo).resolve()) if args.zoo else None)
        override(load_zoo(zoo), variants=args.variant, device=args.device, budget_s=args.budget)
    except ZooError as e:
        raise CliError(str(e)) from None
    if args.runner:
        try:
            import flows.runners  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            raise CliError(f"--runner {args.runner}: flows.runners is not available in this install") from None
    if args.device == "cuda" and not args.runner:
        import torch

        if not torch.cuda.is_available():
            raise CliError("--device cuda: CUDA is not available here; use --device cpu or auto")
    return zoo


def _quiet_prefect(verbose: bool) -> None:
    if verbose or os.environ.get("LIPZOO_DEBUG"):
        return
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.events"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # Prefect re-applies its logging config when a flow starts (the levels above are reset), and its engine logs
    # every task/flow exception with a traceback ("Encountered exception during execution"): the error reaches
    # the user as lipzoo's one line instead. Prefect's own records below CRITICAL are dropped where they are
    # handled (-v or LIPZOO_DEBUG=1 show them).
    orig = logging.Logger.handle
    if getattr(orig, "_lipzoo_quiet", False):
        return

    def handle(self: logging.Logger, record: logging.LogRecord) -> None:
        if (self.name == "prefect" or self.name.startswith("prefect.")) and record.levelno < logging.CRITICAL:
            return None
        return orig(self, record)

    handle._lipzoo_quiet = True  # type: ignore[attr-defined]
    logging.Logger.handle = handle  # type: ignore[method-assign]


def _run(flow: Any, kwargs: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """Run a flow; (summary, failed). A flow that died for another reason becomes a one-line error."""
    from flows import progress
    from flows.audit import AuditFailed

    bar = None
    if not (args.json or args.quiet):
        bar = progress.RichBar()
        progress.install(bar)
    try:
        state = flow(**kwargs, return_state=True)
    finally:
        progress.install(None)
        if bar is not None:
            bar.end()
    result = state.result(raise_on_failure=False)
    if isinstance(result, AuditFailed):
        return result.summary, True
    if isinstance(result, BaseException):
        from catalogs import CatalogError

        if isinstance(result, CatalogError | ValueError | FileNotFoundError):
            raise CliError(str(result).splitlines()[0]) from None
        raise result
    if not isinstance(result, dict):
        raise CliError(f"the flow ended in state {state.name}: {state.message}")
    return result, False


def _print_summary(s: dict[str, Any], failed: bool) -> None:
    from flows.audit import summary_line

    out = sys.stderr
    print(("FAILED: " if failed else "") + summary_line(s).split("; first failure")[0], file=out)
    if s.get("new_revisions") is not None:
        print(f"{len(s['new_revisions'])} new revision(s) of {s.get('watched', 0)} watched model(s)", file=out)
    for f in s.get("failures") or []:
        where = f"{f['model_id']}@{str(f.get('revision', ''))[:12]}"
        where += f" [{f['variant']}]" if f.get("variant") else ""
        print(f"  failed: {where}: {f['reason']}", file=out)
    for n in s.get("notes") or []:  # one line per model: the note's first clause (the rest is in params.notes)
        rev = str(n["revision"])
        rev = rev.rsplit(":timm=", 1)[0] if rev.startswith("random-init:") else rev[:12]  # a random init says so
        print(f"  note: {n['model_id']}@{rev}: {n['notes'][0].split('; ')[0]}", file=out)
    if s.get("overhead_per_model_s") is not None:
        # with parallel tasks the lipcore seconds (summed over tasks) can exceed the flow's wall time
        ov = s["overhead_per_model_s"]
        overhead = f"overhead {ov:.3f} s/model" if ov >= 0 else "tasks ran in parallel"
        print(f"catalog {s['catalog']} (run {s['run_id']}); lipcore {s['lipcore_seconds']:.1f} s summed over "
              f"tasks, {overhead}", file=out)


def _leaderboard(catalog: str, top: int | None) -> None:
    """The catalog's own leaderboard rendering (lipzoo/cli/catalog.py), so there is one table, not two."""
    try:
        from .catalog import cmd_leaderboard
    except ImportError:  # catalog CLI not installed: a minimal table
        from catalogs import Catalog

        for r in Catalog(catalog, read_only=True).leaderboard(top=top or 20):
            print(f"{r.get('rank') or '-':>3}  {r['model_id']:<50} {r.get('best_upper')}")
        return
    ns = argparse.Namespace(catalog=catalog, top=top, format="table", variant=None, hub=None, wide=False)
    cmd_leaderboard(ns)


def _kwargs(args: argparse.Namespace, zoo: Any) -> dict[str, Any]:
    from catalogs import resolve_catalog_path

    return {"zoo": zoo, "variants": args.variant, "device": args.device,
            "catalog": str(resolve_catalog_path(args.catalog)), "runner": args.runner, "budget_s": args.budget}


def _prestart() -> Any:
    from flows.prefect_env import start_temporary_server

    return start_temporary_server()


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM stop the audit the same way: the first one raises KeyboardInterrupt in the flow (no
    new work; what finished is written; the run is recorded 'interrupted'), later ones are ignored so they
    cannot cut that write short (SIGKILL still ends the process; the catalog stays consistent)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def _start(args: argparse.Namespace) -> Any:
    """The zoo the arguments name, with Prefect quiet and its temporary server up (started first: it boots
    while the zoo manifest is read and the flows import)."""
    server = _prestart()
    zoo = _zoo_arg(args)
    _quiet_prefect(args.verbose)
    _stop_on_signals()
    import flows.audit  # noqa: F401  (the heavy import, overlapped with the server start)

    if server is not None:
        try:
            server.wait_ready()
        except RuntimeError as e:
            raise CliError(str(e)) from None
    return zoo


def cmd_audit(args: argparse.Namespace) -> int:
    zoo = _start(args)
    from flows.audit import audit_zoo

    kw = _kwargs(args, zoo)
    summary, failed = _run(audit_zoo, {**kw, "force": args.force}, args)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print_summary(summary, failed)
        if not args.no_leaderboard:
            _leaderboard(kw["catalog"], args.top)
    return 1 if failed else 0


def cmd_watch(args: argparse.Namespace) -> int:
    zoo = _start(args)
    from flows.audit import watch_zoo

    kw = _kwargs(args, zoo)
    summary, failed = _run(watch_zoo, {**kw, "audit": not args.no_audit, "emit": not args.no_events}, args)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print_summary(summary, failed)
    return 1 if failed else 0
