"""Task runners from a one-word spec, and GPU slots for bound tasks.

Why a spec string: `lipzoo audit --runner dask://gpu-head:8786` must pick an engine that already exists
(prefect-dask, prefect-ray) instead of a home-made scheduler, and the flows must not know which one. The
spec grammar:

    None | "threads" | "threads:N"   ThreadPoolTaskRunner (N workers)          -- one host, the default
    "processes[:N]"                  ProcessPoolTaskRunner                      -- one host, one process per task
    "dask"  | "dask:N"               prefect_dask.DaskTaskRunner on a LocalCluster of N worker processes
    "dask://HOST:PORT"               prefect_dask.DaskTaskRunner(address="tcp://HOST:PORT")   (also tcp://, tls://)
    "ray"                            prefect_ray.RayTaskRunner() starting a local Ray
    "ray://HOST:PORT"                prefect_ray.RayTaskRunner(address="ray://HOST:PORT")

One GPU per bound task: the Dask runners made here give every task tagged `lipzoo-gpu` (flows.tasks tags
its GPU bound tasks so) `resources={"GPU": 1}` when the cluster advertises GPU slots, so workers started
with `--resources GPU=1` run one such task at a time. Explicitly, for any task: wrap its `.submit()` /
`.map()` in `with gpu_resources(device):` -- Dask annotation, Ray `remote_options(num_gpus=1)`, nothing
under threads (a single host shares its GPU).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from typing import Any

# flows.tasks tags the bound tasks that run on a GPU with this (and holds its Prefect concurrency limit)
GPU_TAG = "lipzoo-gpu"

_SPEC_HELP = ("threads[:N], processes[:N], dask, dask:N, dask://HOST:PORT, tcp://HOST:PORT, ray or "
              "ray://HOST:PORT")


class RunnerSpecError(ValueError):
    """A --runner value that cannot be turned into a task runner (one line, names the spec)."""


def _missing_extra(extra: str, err: ImportError) -> RunnerSpecError:
    return RunnerSpecError(f"--runner {extra} needs the {extra} extra ({err.name or err} is not installed): "
                           f"pip install 'lipzoo[{extra}]'")


def _count(spec: str, text: str | None) -> int | None:
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise RunnerSpecError(f"--runner {spec!r}: the worker count must be a positive integer")
    return int(text)


def runner_kind(spec: str | None) -> str:
    """'threads' | 'processes' | 'dask' | 'ray' for a spec (validates the grammar, imports nothing)."""
    s = (spec or "threads").strip()
    if re.fullmatch(r"threads(:\d+)?", s):
        return "threads"
    if re.fullmatch(r"processes(:\d+)?", s):
        return "processes"
    if re.fullmatch(r"dask(:\d+)?", s) or re.fullmatch(r"(dask|tcp|tls)://[^/\s]+", s):
        return "dask"
    if s == "ray" or re.fullmatch(r"ray://[^/\s]+", s):
        return "ray"
    raise RunnerSpecError(f"unknown --runner {spec!r}; expected one of {_SPEC_HELP}")


def make_task_runner(spec: str | None) -> Any:
    """A Prefect TaskRunner for `spec` (see the module docstring); a one-line error when an extra is missing."""
    s = (spec or "threads").strip()
    kind = runner_kind(s)
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=_count(s, s.partition(":")[2]))
    if kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=_count(s, s.partition(":")[2]))
    if kind == "dask":
        try:
            runner_cls = _gpu_aware_dask_runner()
        except ImportError as e:
            raise _missing_extra("dask", e) from None
        if "://" in s:
            scheme, _, hostport = s.partition("://")
            return runner_cls(address=f"{'tcp' if scheme == 'dask' else scheme}://{hostport}")
        n = _count(s, s.partition(":")[2])
        kwargs: dict[str, Any] = {"processes": True, "threads_per_worker": 1, "dashboard_address": ":0"}
        if n:
            kwargs["n_workers"] = n
        gpus = _local_gpu_count()
        if gpus:
            kwargs["resources"] = {"GPU": 1}  # each local worker process owns one GPU slot
            kwargs["n_workers"] = min(n or gpus, gpus)
        return runner_cls(cluster_kwargs=kwargs)
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as e:
        raise _missing_extra("ray", e) from None
    if s == "ray":
        return RayTaskRunner(init_kwargs={"include_dashboard": False})
    return RayTaskRunner(address=s)


@functools.cache
def _gpu_aware_dask_runner() -> type:
    """DaskTaskRunner that gives each task tagged GPU_TAG one GPU slot (when the cluster has GPU slots)."""
    import dask
    from prefect_dask import DaskTaskRunner

    class LipzooDaskTaskRunner(DaskTaskRunner):
        _lipzoo_gpu_slots: float | None = None

        def submit(self, task: Any, parameters: dict[str, Any], wait_for: Any = None,
                   dependencies: Any = None) -> Any:
            wants_gpu = GPU_TAG in (getattr(task, "tags", None) or ()) and "resources" not in dask.get_annotations()
            if wants_gpu:
                if self._lipzoo_gpu_slots is None:
                    self._lipzoo_gpu_slots = _dask_gpu_slots(self)
                if self._lipzoo_gpu_slots >= 1:
                    with dask.annotate(resources={"GPU": 1}):
                        return super().submit(task, parameters, wait_for, dependencies)
            return super().submit(task, parameters, wait_for, dependencies)

    LipzooDaskTaskRunner.__qualname__ = LipzooDaskTaskRunner.__name__
    return LipzooDaskTaskRunner


def _is(runner: Any, class_name: str) -> bool:
    return any(c.__name__ == class_name for c in type(runner).__mro__)


def _local_gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # no torch/CUDA: no GPU slots
        return 0


def _current_task_runner() -> Any:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return None if ctx is None else ctx.task_runner


def _dask_gpu_slots(runner: Any) -> float:
    """Total GPU resource advertised by the Dask workers this runner talks to."""
    try:
        info = runner.client.scheduler_info(n_workers=-1)  # newer distributed caps the worker list by default
    except TypeError:
        info = runner.client.scheduler_info()
    return float(sum((w.get("resources") or {}).get("GPU", 0) for w in info.get("workers", {}).values()))


@contextlib.contextmanager
def gpu_resources(device: str | None = "auto", gpus: int = 1, runner: Any = None) -> Iterator[str]:
    """Make every task submitted inside this block hold `gpus` GPU(s) on a distributed runner.

    `device`: "cpu" annotates nothing; "cuda" requires GPU slots on the cluster (one-line error otherwise,
    instead of tasks waiting forever for a resource no worker has); "auto" annotates when the cluster
    advertises GPUs. `runner` defaults to the current flow run's task runner. Yields the kind of
    annotation applied: "dask", "ray" or "none".
    """
    dev = (device or "auto").split(":")[0]
    runner = runner if runner is not None else _current_task_runner()
    is_dask, is_ray = _is(runner, "DaskTaskRunner"), _is(runner, "RayTaskRunner")
    if dev == "cpu" or not (is_dask or is_ray):
        yield "none"
        return
    if is_dask:
        import dask

        slots = _dask_gpu_slots(runner)
        if slots < gpus:
            if dev == "cuda":
                raise RunnerSpecError(
                    f"device cuda needs {gpus} GPU slot(s) but the Dask workers advertise {slots:g}; start them "
                    "with `dask worker tcp://SCHEDULER:8786 --nthreads 1 --resources GPU=1` (one per GPU)")
            yield "none"
            return
        with dask.annotate(resources={"GPU": gpus}):
            yield "dask"
        return
    try:
        import ray
        from prefect_ray.context import remote_options
    except ImportError as e:
        raise _missing_extra("ray", e) from None
    if dev == "auto" and ray.is_initialized() and ray.cluster_resources().get("GPU", 0) < gpus:
        yield "none"
        return
    with remote_options(num_gpus=gpus):
        yield "ray"
