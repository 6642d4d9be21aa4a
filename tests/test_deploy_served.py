"""The deployment path for real, on loopback (slow: each test starts its own Prefect server).

1. `lipzoo serve zoo.toml` (which starts its own Prefect server): an emitted lipzoo.checkpoint.new event
   re-audits exactly that model at that revision, event -> finished under 60 s; a new checkpoint file found
   by the served watcher is re-audited through the same event. Driven by benchmarks/bench_deploy.py.
2. deploy/README.md's work-pool walk-through: `prefect server start`, `prefect work-pool create --type
   process`, `prefect deploy --all --prefect-file deploy/prefect.yaml`, deploy/workers/prefect-gpu-worker.sh,
   `prefect event emit ...` and `prefect deployment run ...`, each run as the command line it documents.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("flows.audit") is None,
                                 reason="flows/audit.py (the audit flows) is not in this checkout")]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_deploy", ROOT / "benchmarks" / "bench_deploy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _results(catalog: Path) -> dict[tuple[str, str], set[str]]:
    from catalogs import Catalog

    with Catalog(catalog, read_only=True).connect() as con:
        rows = con.execute("SELECT model_id, revision, variant, status FROM results").fetchall()
    out: dict[tuple[str, str], set[str]] = {}
    for m, r, v, s in rows:
        assert s == "ok", (m, r, v, s)
        out.setdefault((m, r), set()).add(v)
    return out


VARIANTS = {"naive", "eclipse-fast", "sh-combined", "lower-sampled"}


def test_served_deployment_reaudits_the_model_an_event_names(tmp_path):
    """Runs the benchmark in a subprocess (its own Prefect settings) and checks what it left behind."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_deploy.py"), "--workdir",
                           str(tmp_path / "w"), "--watcher", "--json", str(out)], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    log = (tmp_path / "w" / "serve.log")
    assert proc.returncode == 0, proc.stderr[-3000:] + (log.read_text()[-3000:] if log.exists() else "")
    res = json.loads(out.read_text())
    print(json.dumps({k: v for k, v in res.items() if isinstance(v, dict)}, indent=1))  # the numbers, with -s
    for phase in ("first_audit", "reaudit", "watcher"):
        r = res[phase]
        assert r["state"] == "Completed", (phase, r)
        assert r["parameters"]["hub"] == "local" and r["parameters"]["revision"] == r["revision"]
    # the target: emitted event -> finished re-audit of that one model
    assert res["reaudit"]["event_to_done_s"] < 60, res["reaudit"]
    assert res["first_audit"]["event_to_done_s"] < 60, res["first_audit"]
    got = _results(Path(res["catalog"]))
    a1, a2 = ("local:ckpts/a.npz", res["first_audit"]["revision"]), ("local:ckpts/a.npz", res["reaudit"]["revision"])
    b2 = ("local:ckpts/b.npz", res["watcher"]["revision"])
    # exactly the announced (model, revision) pairs were audited: b's first revision never was (no event for it)
    assert got == {a1: VARIANTS, a2: VARIANTS, b2: VARIANTS}
    assert res["serve_exit"] in (0, -signal.SIGINT, 130), "lipzoo serve did not stop cleanly on Ctrl-C"


def _cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 180) -> str:
    p = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(args)} -> {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p.stdout


def test_work_pool_walkthrough_from_the_readme(tmp_path):
    from deploy.serve import local_server

    bench = _bench()
    site = tmp_path / "site"  # the working directory of every run (zoo.toml + catalog), as in the README
    (site / "ckpts").mkdir(parents=True)
    (site / "zoo.toml").write_text(bench.ZOO)
    rev_a = bench.write_checkpoint(site / "ckpts" / "a.npz", 1)
    rev_b = bench.write_checkpoint(site / "ckpts" / "b.npz", 2)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_WORKER_QUERY_SECONDS="2", OMP_NUM_THREADS="1",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    port = bench.free_port()
    old_home = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = env["PREFECT_HOME"]  # the server's database lives here
    try:
        with local_server(port, log_path=tmp_path / "server.log") as api:
            env["PREFECT_API_URL"] = api
            prefect = str(BIN / "prefect")
            _cli([prefect, "work-pool", "create", "lipzoo-gpu", "--type", "process"], env, site)
            _cli([prefect, "deploy", "--all", "--prefect-file", str(ROOT / "deploy" / "prefect.yaml")], env, site,
                 timeout=300)
            listing = _cli([prefect, "deployment", "ls"], env, site)
            for name in ("audit-zoo/audit-nightly", "watch-zoo/watch", "audit-model/on-checkpoint"):
                assert name in listing.replace("\n", ""), listing
            worker = subprocess.Popen(["bash", str(ROOT / "deploy" / "workers" / "prefect-gpu-worker.sh"), "--cpu"],
                                      env=env, cwd=tmp_path, stdout=open(tmp_path / "worker.log", "wb"),
                                      stderr=subprocess.STDOUT)
            try:
                t0 = time.time()
                _cli([prefect, "event", "emit", "lipzoo.checkpoint.new",
                      "--resource-id", "lipzoo.model.local:ckpts/a.npz",
                      "--resource", json.dumps({"lipzoo.hub": "local", "lipzoo.repo_id": "ckpts/a.npz"}),
                      "--payload", json.dumps({"revision": rev_a})], env, site)
                os.environ["PREFECT_API_URL"] = api
                from prefect.settings import PREFECT_API_URL, temporary_settings

                with temporary_settings({PREFECT_API_URL: api}):
                    by_event = bench.wait_for_run("audit-model/on-checkpoint", "ckpts/a.npz", rev_a, t0, 300)
                    _cli([prefect, "deployment", "run", "audit-model/on-checkpoint", "--param", "hub=local",
                          "--param", "repo_id=ckpts/b.npz", "--param", f"revision={rev_b}"], env, site)
                    by_hand = bench.wait_for_run("audit-model/on-checkpoint", "ckpts/b.npz", rev_b, t0, 300)
            finally:
                worker.send_signal(signal.SIGINT)  # the script forwards Ctrl-C to its workers
                try:
                    worker.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    worker.kill()
                os.environ.pop("PREFECT_API_URL", None)
    finally:
        if old_home is None:
            os.environ.pop("PREFECT_HOME", None)
        else:
            os.environ["PREFECT_HOME"] = old_home
    print(json.dumps({"event": by_event, "deployment_run": by_hand}, indent=1))
    assert by_event["state"] == "Completed" and by_hand["state"] == "Completed", (by_event, by_hand)
    assert worker.returncode is not None
    got = _results(site / "lipzoo.duckdb")
    assert got == {("local:ckpts/a.npz", rev_a): VARIANTS, ("local:ckpts/b.npz", rev_b): VARIANTS}
