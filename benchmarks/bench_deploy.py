"""Event -> finished re-audit through a served deployment, measured end to end (target: under 60 s).

What it does, all on 127.0.0.1 in a scratch directory:
  1. writes a zoo manifest with a local hub folder of two small MLP checkpoints (a.npz, b.npz);
  2. starts `lipzoo serve zoo.toml` with no PREFECT_API_URL, so lipzoo starts its own Prefect server;
  3. emits `lipzoo.checkpoint.new` for a.npz (first audit), then overwrites a.npz with new weights and emits
     again (the re-audit of a new checkpoint); each time it waits for the triggered audit-model run;
  4. optionally (--watcher) overwrites b.npz and runs the watch deployment, which finds the new revision and
     emits the event itself: watcher -> event -> triggered re-audit;
  5. stops the service (SIGINT) and prints one JSON object with the timings.

event_to_done_s is measured from just before the event is emitted to the flow run's end time as the server
recorded it. Run: `.venv/bin/python benchmarks/bench_deploy.py [--watcher] [--json out.json]`.
Numbers on a shared 2-core machine are noisy; tests/test_deploy_served.py runs this and asserts the target.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

EVENT = "lipzoo.checkpoint.new"
ZOO = """\
name = "bench-deploy"
device = "cpu"
variants = ["naive", "eclipse-fast", "sh-combined", "lower-sampled"]

[[models]]
label = "ckpts"
hub = "local"
path = "ckpts"
activation = "relu"
"""


def write_checkpoint(path: Path, seed: int) -> str:
    """A 3-layer ReLU MLP (8 -> 16 -> 16 -> 1) as .npz; returns the local hub's revision (digest prefix)."""
    from flows.hubs import file_digest
    from flows.hubs.local import REV_LEN

    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, W1=rng.standard_normal((16, 8)) / 3, W2=rng.standard_normal((16, 16)) / 4,
             W3=rng.standard_normal((1, 16)) / 4)
    tmp.replace(path)
    return file_digest(path)[:REV_LEN]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lipzoo_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "lipzoo"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from lipzoo.cli import main; sys.exit(main())"]


def emit(repo_id: str, revision: str) -> float:
    """Emit the event from this process (as a CI job or webhook endpoint would); returns the time before it."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    t0 = time.time()
    emit_event(event=EVENT,
               resource={"prefect.resource.id": f"lipzoo.model.local:{repo_id}", "lipzoo.hub": "local",
                         "lipzoo.repo_id": repo_id, "lipzoo.model_id": f"local:{repo_id}"},
               payload={"revision": revision, "previous_revision": None, "zoo": "bench-deploy"})
    EventsWorker.drain_all(timeout=30)
    return t0


def wait_for_run(deployment: str, repo_id: str, revision: str, since: float, timeout: float) -> dict[str, Any]:
    """Poll the API for the run of `deployment` carrying (repo_id, revision) until it is final."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    flow_name, _, dep_name = deployment.partition("/")
    created = None
    deadline = time.time() + timeout
    with get_client(sync_client=True) as client:
        while time.time() < deadline:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[dep_name])))
            for fr in runs:
                p = fr.parameters or {}
                if p.get("repo_id") != repo_id or p.get("revision") != revision:
                    continue
                created = created or fr.created.timestamp()
                if fr.state and fr.state.is_final():
                    end = (fr.end_time or fr.state.timestamp).timestamp()
                    return {"flow_run_id": str(fr.id), "state": fr.state.name, "parameters": p,
                            "event_to_created_s": round(created - since, 2),
                            "event_to_start_s": round(fr.start_time.timestamp() - since, 2) if fr.start_time else None,
                            "event_to_done_s": round(end - since, 2),
                            "run_seconds": round(fr.total_run_time.total_seconds(), 2)}
            time.sleep(0.5)
    raise TimeoutError(f"no final {deployment} run for {repo_id}@{revision} within {timeout:.0f} s "
                       f"(run created: {created is not None})")


def wait_ready(api: str, serve: subprocess.Popen[Any], timeout: float) -> None:
    """Until the three deployments and the trigger's automation exist (the service announces itself)."""
    from prefect import get_client

    from deploy.serve import healthy

    deadline = time.time() + timeout
    while time.time() < deadline:
        if serve.poll() is not None:
            raise RuntimeError(f"lipzoo serve exited with code {serve.returncode}")
        if healthy(api):
            with get_client(sync_client=True) as client:
                names = {d.name for d in client.read_deployments()}
                autos = client.read_automations()
            if {"audit-nightly", "watch", "on-checkpoint"} <= names and any(
                    a.name == "lipzoo-checkpoint-new" for a in autos):
                return
        time.sleep(0.5)
    raise TimeoutError(f"lipzoo serve was not ready within {timeout:.0f} s")


def run(workdir: Path, watcher: bool = False, timeout: float = 240.0, api: str | None = None,
        poll: float | None = None) -> dict[str, Any]:
    """`api`: serve against this existing server (e.g. one backed by Postgres) instead of lipzoo's own;
    `poll`: `lipzoo serve --poll` (None: its default, 5 s)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ckpts").mkdir(exist_ok=True)
    (workdir / "zoo.toml").write_text(ZOO)
    rev_a = write_checkpoint(workdir / "ckpts" / "a.npz", 1)
    rev_b = write_checkpoint(workdir / "ckpts" / "b.npz", 2)
    catalog = workdir / "lipzoo.duckdb"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if api:
        env["PREFECT_API_URL"] = api
    api = api or f"http://127.0.0.1:{port}/api"
    env.update(PREFECT_HOME=str(workdir / "prefect"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
    log = open(workdir / "serve.log", "wb")  # noqa: SIM115
    t_start = time.time()
    # all three deployments are served, but the schedules stay out of the measured window: the nightly audit at
    # New Year's midnight only, the watcher a day from now (this script runs the watcher itself)
    cmd = [*lipzoo_cmd(), "serve", "zoo.toml", "--catalog", str(catalog), "--port", str(port), "--watch-every", "1440",
           "--cron", "0 0 1 1 *"]
    if poll:
        cmd += ["--poll", str(poll)]
    serve = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    out: dict[str, Any] = {"workdir": str(workdir), "api": api, "poll_s": poll or 5.0,
                           "measured_at": datetime.now(UTC).isoformat()}
    os.environ["PREFECT_API_URL"] = api
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings({PREFECT_API_URL: api}):
            wait_ready(api, serve, timeout)
            out["serve_ready_s"] = round(time.time() - t_start, 2)
            t0 = emit("ckpts/a.npz", rev_a)
            out["first_audit"] = wait_for_run("audit-model/on-checkpoint", "ckpts/a.npz", rev_a, t0, timeout)
            out["first_audit"]["revision"] = rev_a
            rev_a2 = write_checkpoint(workdir / "ckpts" / "a.npz", 11)  # a new checkpoint of the same model
            t0 = emit("ckpts/a.npz", rev_a2)
            out["reaudit"] = wait_for_run("audit-model/on-checkpoint", "ckpts/a.npz", rev_a2, t0, timeout)
            out["reaudit"]["revision"] = rev_a2
            out["untouched"] = {"repo_id": "ckpts/b.npz", "revision": rev_b}
            if watcher:
                from prefect.deployments import run_deployment

                rev_b2 = write_checkpoint(workdir / "ckpts" / "b.npz", 12)
                t0 = time.time()
                run_deployment("watch-zoo/watch", timeout=0)
                out["watcher"] = wait_for_run("audit-model/on-checkpoint", "ckpts/b.npz", rev_b2, t0, timeout)
                out["watcher"]["revision"] = rev_b2
    finally:
        out["serve_exit"] = stop(serve)
        log.close()
    out["catalog"] = str(catalog)
    return out


def stop(proc: subprocess.Popen[Any]) -> int | None:
    """Ctrl-C the service (it stops its server too), escalating if it lingers."""
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a new temporary one)")
    ap.add_argument("--watcher", action="store_true", help="also measure watcher -> event -> re-audit")
    ap.add_argument("--timeout", type=float, default=240.0)
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--api", help="serve against this Prefect API URL (default: lipzoo serve starts a server)")
    ap.add_argument("--poll", type=float, help="lipzoo serve --poll SECONDS (default: its own, 5)")
    a = ap.parse_args(argv)
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="lipzoo-bench-deploy-"))
    res = run(workdir, watcher=a.watcher, timeout=a.timeout, api=a.api, poll=a.poll)
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    sys.exit(main())
