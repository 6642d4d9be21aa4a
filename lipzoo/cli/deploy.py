"""`lipzoo serve` (scheduled audits, the checkpoint watcher, event-triggered re-audits) and `lipzoo report`.

serve: the deployments of deploy/serve.py served from this one process (Prefect's `serve`); report: the
self-contained HTML page of flows/report.py. Heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lipzoo.cli import CliError

_RAW = argparse.RawDescriptionHelpFormatter
_CATALOG_HELP = "catalog file (default: $LIPZOO_CATALOG, else ./lipzoo.duckdb)"

SERVE_EPILOG = """\
Serves three Prefect deployments from this process until Ctrl-C:

  audit-zoo/audit-nightly     on the --cron schedule: audit the zoo (only new models/revisions are computed)
  watch-zoo/watch             every --watch-every minutes: find new revisions on the hubs and emit one
                              lipzoo.checkpoint.new event per new revision
  audit-model/on-checkpoint   on each lipzoo.checkpoint.new event: re-audit that one model at that revision

With PREFECT_API_URL set, it serves against that server (a team's, Postgres-backed); otherwise it starts
a local Prefect server on 127.0.0.1:--port (UI at http://127.0.0.1:4200) and stops it on exit. Runs are
executed by this process, one subprocess each (--limit at a time). For GPU hosts pulling work from a
work pool, use deploy/prefect.yaml with `prefect deploy` instead (deploy/README.md).

Anything can announce a checkpoint, e.g. a CI job after training or a webhook endpoint:
  prefect event emit lipzoo.checkpoint.new --resource-id lipzoo.model.hf:my-org/my-mlp \\
      --resource '{"lipzoo.hub": "hf", "lipzoo.repo_id": "my-org/my-mlp"}' --payload '{"revision": "SHA"}'

examples:
  lipzoo serve                                   the demo zoo, nightly at 03:00 UTC, watcher every 15 min
  lipzoo serve zoo.toml --catalog /data/lipzoo.duckdb --cron "30 1 * * *" --watch-every 5
  lipzoo serve zoo.toml --no-watch --runner dask://gpu-head:8786
  PREFECT_API_URL=http://prefect.internal:4200/api lipzoo serve zoo.toml
"""

REPORT_EPILOG = """\
Writes one HTML file with no external resources and no scripts (mail it, attach it to CI, open it offline):
the leaderboard, a tightness heat map (best certified upper / measured lower bound, per variant and model),
and per model every variant's bound against the lower bound (log scale) and its bounds across revisions.

examples:
  lipzoo report                                 ./report.html from ./lipzoo.duckdb
  lipzoo report --out public/lipzoo.html --catalog /data/lipzoo.duckdb
  lipzoo report --model my-org/my-mlp           the leaderboard plus that model's plots only
  lipzoo report --top 20                        plots for the 20 best-ranked models
"""


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve scheduled audits, the checkpoint watcher and event-triggered re-audits",
                       description="Run lipzoo as a service: Prefect deployments served from this process.",
                       epilog=SERVE_EPILOG, formatter_class=_RAW)
    p.add_argument("zoo", nargs="?", metavar="ZOO.toml", help="zoo manifest (default: the demo zoo)")
    p.add_argument("--cron", default="0 3 * * *", metavar="EXPR",
                   help='when the full audit runs, cron syntax in UTC (default: "0 3 * * *")')
    p.add_argument("--watch-every", type=float, default=15.0, metavar="MINUTES",
                   help="how often the watcher looks for new revisions (default: 15)")
    p.add_argument("--no-nightly", action="store_true", help="do not serve the scheduled audit")
    p.add_argument("--no-watch", action="store_true", help="do not serve the watcher")
    p.add_argument("--no-trigger", action="store_true",
                   help="no event-triggered re-audit (the watcher then audits what it finds itself)")
    p.add_argument("--catalog", metavar="PATH", help=_CATALOG_HELP)
    p.add_argument("--runner", metavar="SPEC",
                   help="task runner of each audit: threads[:N] (default), dask, dask://HOST:PORT, ray://HOST:PORT")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the manifest's device")
    p.add_argument("--limit", type=int, default=2, metavar="N",
                   help="flow runs executed at once by this process (default: 2)")
    p.add_argument("--port", type=int, default=4200,
                   help="port of the local Prefect server started when PREFECT_API_URL is unset (default: 4200)")
    p.add_argument("--poll", type=float, default=5.0, metavar="SECONDS",
                   help="how often to check for due runs (default: 5; Prefect's own default is 10)")
    p.set_defaults(func=cmd_serve)

    r = sub.add_parser("report", help="write a self-contained HTML report (leaderboard, bound plots, history)",
                       description="Render the catalog as one self-contained HTML page.",
                       epilog=REPORT_EPILOG, formatter_class=_RAW)
    r.add_argument("--out", "-o", default="report.html", metavar="FILE", help="output file (default: report.html)")
    r.add_argument("--catalog", metavar="PATH", help=_CATALOG_HELP)
    r.add_argument("--model", metavar="MODEL", help="plot only this model (id, repo id or unique fragment)")
    r.add_argument("--top", type=int, metavar="N", help="plot only the N best-ranked models (default: all)")
    r.set_defaults(func=cmd_report)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.zoo and not Path(args.zoo).is_file():
        raise CliError(f"zoo manifest {args.zoo} not found")
    if args.watch_every is not None and args.watch_every <= 0:
        raise CliError("--watch-every must be a positive number of minutes")
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")
    if args.runner:
        from flows.runners import runner_kind

        try:
            runner_kind(args.runner)
        except ValueError as e:
            raise CliError(str(e)) from None
    _check_cron(args.cron)
    if args.zoo:  # a bad manifest should fail here, not in every scheduled run
        from flows.zoo import load_zoo

        try:
            load_zoo(args.zoo)
        except Exception as e:
            raise CliError(str(e).splitlines()[0]) from None
    from deploy.serve import serve_zoo

    try:
        serve_zoo(args.zoo, cron=None if args.no_nightly else args.cron,
                  watch_every=None if args.no_watch else args.watch_every, catalog=args.catalog,
                  runner=args.runner, device=args.device, trigger=not args.no_trigger, limit=args.limit,
                  port=args.port, poll_seconds=args.poll, announce=lambda s: print(s, flush=True))
    except RuntimeError as e:
        raise CliError(str(e)) from None
    return 0


def _check_cron(expr: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=expr, timezone="UTC")
    except ValueError:  # pydantic's ValidationError is a ValueError
        raise CliError(f"--cron {expr!r} is not a cron expression (minute hour day month weekday, "
                       "e.g. '0 3 * * *')") from None


def cmd_report(args: argparse.Namespace) -> int:
    from catalogs import resolve_catalog_path
    from catalogs.errors import CatalogError
    from flows.report import write_report

    path = resolve_catalog_path(args.catalog)
    if not path.exists():
        raise CliError(f"catalog {path} not found; run `lipzoo audit` first or pass --catalog")
    try:
        out = write_report(path, args.out, model=args.model, top=args.top)
    except CatalogError as e:
        raise CliError(str(e).splitlines()[0]) from None
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0
