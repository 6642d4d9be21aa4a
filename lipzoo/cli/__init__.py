"""The `lipzoo` command line.

Each subcommand lives in its own module with a `register(subparsers)` function; heavy imports (torch,
prefect, duckdb) happen inside the command, so `lipzoo --help` answers instantly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# module name -> registered in this order in --help
COMMAND_MODULES = ["bound", "audit", "catalog", "deploy"]

EPILOG = """\
examples:
  lipzoo audit                         audit the embedded demo zoo into ./lipzoo.duckdb, print the leaderboard
  lipzoo bound weights.npz --activation relu
  lipzoo bound model.pt --variant eclipse-fast --variant sh-combined --json
  lipzoo leaderboard --top 10 --format markdown
  lipzoo history my-org/my-mlp

Run `lipzoo COMMAND --help` for each command's options.
"""


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    __version__ = version("lipzoo")
    parser = argparse.ArgumentParser(
        prog="lipzoo",
        description="Certified Lipschitz upper bounds for whole model zoos "
                    "(ECLipsE-Fast, the Syed-Hu family, LipSDP) with a DuckDB catalog of every audit.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lipzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"lipzoo.cli.{name}")
        except ModuleNotFoundError as e:  # a command module not written yet must not break the others
            if e.name != f"lipzoo.cli.{name}":
                raise
            continue
        mod.register(sub)
    return parser


def _exit_interrupted(e: KeyboardInterrupt) -> None:
    """One line, then out within a moment: tasks still running in worker threads are abandoned (their models
    were not finished, so nothing of theirs was computed); what finished is already in the catalog or spool."""
    import atexit

    why = str(e) or "SIGINT"
    line = f"lipzoo: interrupted ({why})"
    s = sys.modules.get("flows.audit")
    summary = getattr(s, "last_interrupted", None) if s is not None else None
    if summary:
        n = summary.get("audited", 0)
        line += (f": {n} finished model(s) written to {summary.get('catalog')} (run {summary.get('run_id')}, "
                 f"status interrupted)")
        if summary.get("rows_spooled"):
            line += f"; {summary['rows_spooled']} rows spooled for the next audit"
    if os.environ.get("LIPZOO_DEBUG"):
        import traceback

        traceback.print_exception(e)
    print(line, file=sys.stderr, flush=True)
    try:
        sys.stdout.flush()
        atexit._run_exitfuncs()  # Prefect's temporary server is stopped here (worker threads are not joined)
    except BaseException:
        pass
    os._exit(130)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        if args.command is None and "audit" in parser._subparsers._group_actions[0].choices:  # type: ignore[union-attr]
            # `lipzoo` alone: the main job, the demo audit (documented in the README)
            args = parser.parse_args(["audit", *(argv or sys.argv[1:])])
        else:
            parser.print_help()
            return 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt as e:
        _exit_interrupted(e)
    except CliError as e:
        print(f"lipzoo: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # one line, no traceback; LIPZOO_DEBUG=1 for the traceback
        from lipcore.errors import LipzooError

        if os.environ.get("LIPZOO_DEBUG"):
            raise
        kind = "error" if isinstance(e, LipzooError | ValueError | FileNotFoundError | OSError) else "internal error"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"lipzoo: {kind}: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
