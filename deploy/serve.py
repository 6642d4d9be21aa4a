"""lipzoo as a service: the three deployments of the audit flows, served from one process.

Why Prefect deployments and not a loop of our own: schedules, event triggers, retries of crashed runs, a
UI and work pools for GPU hosts already exist there. This module only names the deployments and their
parameters; `lipzoo serve` serves them (`prefect.serve`), and deploy/prefect.yaml sends the same flows to a
work pool (`prefect deploy`).

    audit-zoo/audit-nightly      cron (default 03:00 UTC): audit the whole zoo (only what is new is computed)
    watch-zoo/watch              every N minutes: find new revisions, emit one `lipzoo.checkpoint.new` each
    audit-model/on-checkpoint    triggered by `lipzoo.checkpoint.new`: re-audit that one model at that revision

The event contract is flows.audit's (`_emit_new_checkpoint`): resource `lipzoo.hub` / `lipzoo.repo_id`,
payload `revision`. Anything may emit it (the watcher, `prefect event emit`, a tiny webhook endpoint: the
open-source Prefect server has no webhook receiver).

Schedules need the server's scheduler service, which Prefect's temporary per-process server does not run;
so with no PREFECT_API_URL, `serve_zoo` starts a real local server (`prefect server start` on 127.0.0.1)
as a child process first and stops it on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EVENT = "lipzoo.checkpoint.new"
NIGHTLY, WATCH, ON_CHECKPOINT = "audit-nightly", "watch", "on-checkpoint"
DEFAULT_CRON = "0 3 * * *"
DEFAULT_WATCH_MINUTES = 15.0
DEFAULT_PORT = 4200
# The trigger's templates: Jinja over the event, rendered by the server when the event arrives.
TRIGGER_PARAMETERS = {
    "hub": "{{ event.resource['lipzoo.hub'] }}",
    "repo_id": "{{ event.resource['lipzoo.repo_id'] }}",
    "revision": "{{ event.payload.revision }}",
}


def _abs(path: str | os.PathLike[str] | None) -> str | None:
    """Deployments run in other processes (and other directories): pass absolute paths."""
    return None if path is None else str(Path(path).expanduser().absolute())


def checkpoint_trigger(fixed: dict[str, Any] | None = None) -> Any:
    """The DeploymentEventTrigger that runs audit-model for the model and revision an event carries.

    `fixed` parameters (zoo, catalog, ...) are added as literals next to the templated ones.
    """
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name="lipzoo-checkpoint-new",
        description=f"re-audit the model and revision carried by a {EVENT} event",
        expect={EVENT},
        match={"prefect.resource.id": "lipzoo.model.*"},
        parameters={**TRIGGER_PARAMETERS, **(fixed or {})},
    )


def build_deployments(zoo: str | os.PathLike[str] | None = None, *, cron: str | None = DEFAULT_CRON,
                      watch_every: float | None = DEFAULT_WATCH_MINUTES, catalog: str | os.PathLike[str] | None = None,
                      runner: str | None = None, device: str | None = None, trigger: bool = True,
                      timezone: str = "UTC") -> list[Any]:
    """The RunnerDeployments `lipzoo serve` serves (none for a `cron`/`watch_every` of None).

    The watcher only emits events when the trigger deployment exists (the triggered runs audit); without
    the trigger it audits what it found itself.
    """
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from prefect.deployments.runner import EntrypointType

    from catalogs import resolve_catalog_path
    from flows.audit import audit_model, audit_zoo, watch_zoo

    common: dict[str, Any] = {"zoo": _abs(zoo), "catalog": _abs(resolve_catalog_path(catalog))}
    if runner:
        common["runner"] = runner
    if device:
        common["device"] = device
    common = {k: v for k, v in common.items() if v is not None}
    kw: dict[str, Any] = {"entrypoint_type": EntrypointType.MODULE_PATH, "tags": ["lipzoo"]}
    out = []
    if cron:
        out.append(audit_zoo.to_deployment(
            NIGHTLY, schedules=[CronSchedule(cron=cron, timezone=timezone)], parameters=dict(common),
            description=f"audit the zoo on the schedule {cron!r} ({timezone}); only new work is computed", **kw))
    if watch_every:
        from datetime import timedelta

        out.append(watch_zoo.to_deployment(
            WATCH, schedules=[IntervalSchedule(interval=timedelta(minutes=float(watch_every)))],
            parameters={**common, "audit": not trigger, "emit": True},
            description=f"every {watch_every:g} min: emit {EVENT} for each new revision"
                        + ("" if trigger else " and audit it"), **kw))
    if trigger:
        out.append(audit_model.to_deployment(
            ON_CHECKPOINT, triggers=[checkpoint_trigger(common)], parameters=dict(common),
            description=f"re-audit one model at one revision; runs on every {EVENT} event", **kw))
    return out


# ------------------------------------------------------------------------------------- a local server

def _free_port(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as r:  # noqa: S310 (loopback)
            return r.status == 200
    except Exception:
        return False


@contextlib.contextmanager
def local_server(port: int = DEFAULT_PORT, *, startup_timeout: float = 180.0,
                 log_path: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """`prefect server start` on 127.0.0.1:`port` as a child process; yields its API URL, stops it after.

    The database is SQLite under $PREFECT_HOME (flows.prefect_env sets a lipzoo default); for a team, run
    a server with Postgres instead and set PREFECT_API_URL (deploy/README.md).
    """
    from flows import prefect_env  # noqa: F401  (PREFECT_HOME and quiet defaults)

    url = f"http://127.0.0.1:{port}/api"
    if not _free_port(port):
        if healthy(url):
            raise RuntimeError(f"a Prefect server already answers on {url}: set PREFECT_API_URL={url} to use it, "
                               "or pass --port for a new one")
        raise RuntimeError(f"port {port} on 127.0.0.1 is taken; pass --port or set PREFECT_API_URL")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": url,
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port)}
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout
        while not healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server start exited with code {proc.returncode}"
                                   + (f"; see {log_path}" if log_path else ""))
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server on {url} did not answer within {startup_timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)
        if log is not subprocess.DEVNULL:
            log.close()


def _stop(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """SIGINT first (uvicorn and the services shut down cleanly), then SIGTERM, then SIGKILL; the whole group."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout if sig != signal.SIGKILL else 5)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def prefect_api(port: int = DEFAULT_PORT, log_path: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """The API to serve against: $PREFECT_API_URL when set, else a local server started for the duration."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        yield url
        return
    with local_server(port, log_path=log_path) as url:
        os.environ["PREFECT_API_URL"] = url
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: url}):
            yield url


def serve_zoo(zoo: str | os.PathLike[str] | None = None, *, cron: str | None = DEFAULT_CRON,
              watch_every: float | None = DEFAULT_WATCH_MINUTES, catalog: str | os.PathLike[str] | None = None,
              runner: str | None = None, device: str | None = None, trigger: bool = True, limit: int | None = 2,
              port: int = DEFAULT_PORT, poll_seconds: float | None = None, announce: Any = print) -> None:
    """Serve the deployments until interrupted (Ctrl-C): one process on a laptop, no work pool needed."""
    with prefect_api(port) as url, contextlib.ExitStack() as stack:
        from prefect import serve
        from prefect.settings import PREFECT_RUNNER_POLL_FREQUENCY, temporary_settings

        if poll_seconds:  # how often the runner asks for due runs (Prefect's default: 10 s)
            stack.enter_context(temporary_settings({PREFECT_RUNNER_POLL_FREQUENCY: max(1, int(poll_seconds))}))

        deployments = build_deployments(zoo, cron=cron, watch_every=watch_every, catalog=catalog, runner=runner,
                                        device=device, trigger=trigger)
        if not deployments:
            raise ValueError("nothing to serve: no cron schedule, no watcher and no event trigger")
        names = ", ".join(f"{d.flow_name}/{d.name}" for d in deployments)
        ui = url[:-4] if url.endswith("/api") else url
        announce(f"lipzoo serve: {names} on {url} (UI {ui}); Ctrl-C stops")
        serve(*deployments, limit=limit, print_starting_message=False)
