"""flows.runners: spec parsing, and real bound tasks on a local Dask cluster started by this test.

The cluster is two `dask worker` processes on 127.0.0.1 that each advertise one GPU slot (`--resources
GPU=1`, exactly the documented GPU-host command); the tasks compute real lipcore bounds on the ECLipsE
benchmark nets and must give the same numbers as the threads runner, and GPU-annotated tasks on one
worker must never overlap.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.runners import GPU_TAG, RunnerSpecError, gpu_resources, make_task_runner, runner_kind

NETS = [(2, 20), (5, 20), (10, 40), (3, 60)]  # (layers, width) of the ECLipsE benchmark
VARIANTS = ["naive", "eclipse-fast"]


def _has(mod: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


_DASK_REASON = "needs prefect-dask and distributed (both in the dev extra: pip install -e '.[sdp,dev]')"
needs_dask = pytest.mark.skipif(not (_has("prefect_dask") and _has("distributed")), reason=_DASK_REASON)


# ----------------------------------------------------------------------------- spec parsing (fast, no cluster)

@pytest.mark.parametrize(("spec", "kind"), [
    (None, "threads"), ("threads", "threads"), ("threads:3", "threads"), ("processes:2", "processes"),
    ("dask", "dask"), ("dask:2", "dask"), ("dask://10.0.0.5:8786", "dask"), ("tcp://h:8786", "dask"),
    ("ray", "ray"), ("ray://head:10001", "ray"),
])
def test_runner_kind(spec, kind):
    assert runner_kind(spec) == kind


@pytest.mark.parametrize("spec", ["spark://x", "threads:0", "threads:x", "dask://", "k8s"])
def test_bad_spec_is_one_line_error(spec):
    with pytest.raises(RunnerSpecError) as e:
        make_task_runner(spec)
    assert "\n" not in str(e.value) and "runner" in str(e.value)


def test_threads_runner_and_dask_address():
    from prefect.task_runners import ThreadPoolTaskRunner

    DaskTaskRunner = pytest.importorskip("prefect_dask", reason=_DASK_REASON).DaskTaskRunner

    r = make_task_runner("threads:3")
    assert isinstance(r, ThreadPoolTaskRunner) and r._max_workers == 3
    d = make_task_runner("dask://127.0.0.1:8786")
    assert isinstance(d, DaskTaskRunner) and d.address == "tcp://127.0.0.1:8786"
    local = make_task_runner("dask:2")
    assert local.address is None and local.cluster_kwargs["n_workers"] == 2


def test_ray_missing_extra_says_what_to_install():
    try:
        import prefect_ray  # noqa: F401
    except ImportError:
        with pytest.raises(RunnerSpecError, match=r"pip install 'lipzoo\[ray\]'"):
            make_task_runner("ray://head:10001")
    else:  # the extra is installed: the runner carries the address
        assert make_task_runner("ray://head:10001").address == "ray://head:10001"


def test_gpu_resources_is_a_no_op_outside_distributed_runners():
    with gpu_resources("cuda") as kind:
        assert kind == "none"


# ----------------------------------------------------------------------------- real tasks on a Dask cluster

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bound_net(weights: list) -> dict[str, float]:
    """A real bound task body: lipcore on an ECLipsE benchmark net's weights (runs inside a Dask worker)."""
    import lipcore

    rep = lipcore.analyze(weights, variants=VARIANTS, device="cpu", activation="relu")
    out = {}
    for vid, r in rep.results.items():
        assert r.status == "ok", f"{vid}: {r.status} {r.reason}"
        out[vid] = r.value
    return out


def _timed_gpu_job(i: int) -> tuple[int, float, float, int]:
    """Holds 'the GPU' for 0.4 s; returns when it held it and in which process."""
    t0 = time.time()
    time.sleep(0.4)
    return i, t0, time.time(), os.getpid()


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory, prefect_harness):
    """`dask scheduler` + 2 × `dask worker --nthreads 2 --resources GPU=1` on 127.0.0.1, torn down after.

    The workers get the test's Prefect API URL, as documented for real workers (without it each worker
    process would start a temporary Prefect server of its own)."""
    pytest.importorskip("distributed", reason=_DASK_REASON)
    pytest.importorskip("prefect_dask", reason=_DASK_REASON)
    from prefect.settings import PREFECT_API_URL

    port = _free_port()
    tmp = tmp_path_factory.mktemp("dask")
    env = {**os.environ, "DASK_LOGGING__DISTRIBUTED": "error", "DASK_TEMPORARY_DIRECTORY": str(tmp),
           "PREFECT_API_URL": PREFECT_API_URL.value() or "",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    bindir = Path(sys.executable).parent
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    addr = f"tcp://127.0.0.1:{port}"
    for _ in range(2):
        procs.append(subprocess.Popen(
            [str(bindir / "dask"), "worker", addr, "--nthreads", "2", "--resources", "GPU=1", "--no-dashboard",
             "--local-directory", str(tmp)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        from distributed import Client

        with Client(addr, timeout=60) as c:
            c.wait_for_workers(2, timeout=90)
        yield f"dask://127.0.0.1:{port}"
    finally:
        try:  # a scheduler-driven shutdown stops the workers in well under a second; SIGTERM takes ~8 s
            from distributed import Client

            with Client(addr, timeout=5) as c:
                c.shutdown()
        except Exception:
            pass
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _bounds_flow():
    """A flow submitting real bound tasks and GPU-holding jobs; annotates the jobs per its argument."""
    import cloudpickle
    from prefect import flow, task

    from lipcore.mlp.benchnets import eclipse_weights

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # dask workers cannot import this test module
    bound = task(_bound_net, name="bound-net")
    gpu_job = task(_timed_gpu_job, name="gpu-job")

    @flow(name="runners-test")
    def bounds_flow(annotate: str, jobs: int = 6) -> tuple[list[dict[str, float]], list[tuple], str]:
        # weights are drawn here, not in the tasks: benchnets seeds numpy's *global* RNG, which is not
        # thread-safe (two threads drawing at once get mixed streams)
        futs = [bound.submit(eclipse_weights(L, n)) for L, n in NETS]
        with gpu_resources(annotate) as kind:
            held = [gpu_job.submit(i) for i in range(jobs)]
        return [f.result() for f in futs], [j.result() for j in held], kind

    return bounds_flow


def _overlaps(jobs: list[tuple[int, float, float, int]]) -> int:
    """Pairs of jobs that ran at the same time in the same worker process."""
    n = 0
    for i, (_, s1, e1, p1) in enumerate(jobs):
        for _, s2, e2, p2 in jobs[i + 1:]:
            n += p1 == p2 and s1 < e2 - 1e-3 and s2 < e1 - 1e-3
    return n


def _assert_same_bounds(local: list[dict[str, float]], remote: list[dict[str, float]]) -> None:
    for (L, n), a, b in zip(NETS, local, remote, strict=True):
        assert set(a) == set(b) == set(VARIANTS)
        for v in VARIANTS:
            assert b[v] == pytest.approx(a[v], rel=1e-12), (L, n, v)
        assert 0 < a["eclipse-fast"] <= a["naive"] * (1 + 1e-9)


@pytest.fixture(scope="module")
def local_reference(prefect_harness):
    """The same bounds through the default threads runner: what every distributed run must reproduce."""
    local, _, kind = _bounds_flow().with_options(task_runner=make_task_runner("threads:2"))("cuda", jobs=0)
    assert kind == "none"
    return local


@needs_dask
def test_local_dask_cluster_matches_threads_and_serialises_gpu_tasks(local_reference, tmp_path):
    """make_task_runner("dask") with an in-process LocalCluster: 1 worker, 2 threads, one GPU slot."""
    runner = make_task_runner("dask:1")
    runner.cluster_kwargs.update(processes=False, threads_per_worker=2, resources={"GPU": 1},
                                 local_directory=str(tmp_path))
    remote, jobs, kind = _bounds_flow().with_options(task_runner=runner)("cuda", jobs=4)
    assert kind == "dask"
    _assert_same_bounds(local_reference, remote)
    assert len(jobs) == 4 and _overlaps(jobs) == 0, f"GPU-annotated tasks overlapped: {jobs}"


@needs_dask
def test_tasks_tagged_for_the_gpu_get_a_slot_without_being_asked(prefect_harness, tmp_path):
    """flows.audit submits GPU bound tasks tagged `lipzoo-gpu` straight to the runner (no gpu_resources
    block): the runner annotates them itself, and leaves untagged tasks alone."""
    import cloudpickle
    from prefect import flow, task

    try:
        from flows.tasks import GPU_TAG as FLOWS_GPU_TAG
    except ImportError:  # flows/tasks.py not in this checkout
        FLOWS_GPU_TAG = GPU_TAG
    assert FLOWS_GPU_TAG == GPU_TAG
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    job = task(_timed_gpu_job, name="gpu-job")

    @flow(name="runners-tagged")
    def f(tmp: str) -> tuple[list, list]:
        # made here, not captured: the flow (pickled by value with this module) must not hold a live client
        runner = make_task_runner("dask:1")
        runner.cluster_kwargs.update(processes=False, threads_per_worker=2, resources={"GPU": 1},
                                     local_directory=tmp)
        with runner:  # as flows.audit uses it: entered and submitted to directly
            tagged = [runner.submit(job.with_options(tags=[GPU_TAG]), {"i": i}) for i in range(4)]
            tagged = [x.result() for x in tagged]
            plain = [runner.submit(job, {"i": i}) for i in range(4)]
            plain = [x.result() for x in plain]
        return tagged, plain

    tagged, plain = f(str(tmp_path))
    assert _overlaps(tagged) == 0, f"tagged GPU tasks overlapped: {tagged}"
    assert _overlaps(plain) > 0, f"untagged tasks never overlapped: {plain}"


@pytest.mark.slow
def test_dask_worker_processes_run_real_bounds_and_gpu_tasks_never_overlap(dask_cluster, local_reference):
    """The documented GPU-host commands (`dask scheduler`, `dask worker --resources GPU=1`) as subprocesses."""
    flow_ = _bounds_flow()
    remote, jobs, kind = flow_.with_options(task_runner=make_task_runner(dask_cluster))("cuda")
    _, free_jobs, kind_free = flow_.with_options(task_runner=make_task_runner(dask_cluster))("cpu", jobs=6)
    assert (kind, kind_free) == ("dask", "none")
    _assert_same_bounds(local_reference, remote)
    # every GPU job held its worker's single GPU slot alone, although each worker has 2 threads ...
    assert len(jobs) == 6 and os.getpid() not in {pid for *_, pid in jobs}
    assert _overlaps(jobs) == 0, f"GPU-annotated tasks overlapped on one worker: {jobs}"
    # ... while the same jobs without the annotation do share a worker (so the check above can see overlap)
    assert _overlaps(free_jobs) > 0, f"unannotated jobs never overlapped: {free_jobs}"


@needs_dask
def test_cuda_on_a_cluster_without_gpu_slots_is_a_clear_error(prefect_harness, tmp_path):
    """A local cluster with no GPU resource: device cuda must fail fast, not wait forever for a slot."""
    from prefect import flow, task

    from flows import runners

    if runners._local_gpu_count():
        pytest.skip("this host has CUDA GPUs: the local cluster advertises them")
    job = task(_timed_gpu_job, name="gpu-job")

    @flow(name="runners-no-gpu")
    def f() -> str:
        with gpu_resources("auto") as kind_auto:
            job.submit(0).result()
        with pytest.raises(RunnerSpecError, match="--resources GPU=1"), gpu_resources("cuda"):
            pass
        return kind_auto

    runner = make_task_runner("dask:1")
    runner.cluster_kwargs.update(processes=False, local_directory=str(tmp_path))  # in-process: fast
    assert f.with_options(task_runner=runner)() == "none"
