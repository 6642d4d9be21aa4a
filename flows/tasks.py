"""The Prefect tasks of an audit: discover an entry, bound one model, write a batch of rows.

Why the model work is a plain function (`run_job`) wrapped by a thin task: the task adds what Prefect is for
(retries on hub/network errors only, tags for GPU concurrency, state in the UI) while tests and benchmarks
can time the same code without a server.

Outcomes of one model:
* `ok`: lipcore returned a report (its variants may individually be ok/refused/failed); one row per variant.
* `refused`: the checkpoint is not something lipzoo can bound (unknown architecture, not an MLP and no
  graph engine for it); one `refused` row per requested variant, so the next audit does not retry it.
* failure: the task raises (corrupt file, missing repo, time budget, anything unexpected); the flow turns
  the exception into one `failed` row with variant "*" (failed rows are retried by the next audit).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import prefect_env  # noqa: F401  (environment before prefect is imported)
from .hubs import HubError, Unsupported, is_transient
from .refs import Job, Loaded, ModelRef, Settings, Unresolved

T = TypeVar("T")

GPU_LIMIT_NAME = "lipzoo-gpu"
GPU_TAG = "lipzoo-gpu"
HARD_STOP_GRACE_S = 5.0


class ModelFailed(Exception):
    """A whole-model failure with a one-line reason (the flow records it as a failed row)."""


class HardStopped(Exception):
    """The per-model budget ran out and the work was interrupted from outside."""


@dataclass
class Outcome:
    model_id: str
    status: str  # ok | refused | failed
    rows: list[Any] = field(default_factory=list)
    reason: str | None = None
    seconds: float = 0.0  # the task's own wall time (fetch + lipcore)
    lipcore_seconds: float = 0.0  # time inside lipcore.analyze
    fetch_seconds: float = 0.0
    device: str = "cpu"


def one_line(e: BaseException) -> str:
    from lipcore.errors import LipzooError

    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, LipzooError | HubError | ModelFailed | HardStopped):
        return msg or type(e).__name__
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# -- hard stop ------------------------------------------------------------------------------------------
class _HardStop(BaseException):
    """Raised asynchronously in a worker thread; BaseException so that `except Exception` cannot swallow it."""


def _async_raise(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc) if exc is not None else None)


def call_with_hard_stop(fn: Callable[[], T], seconds: float | None, what: str = "model") -> T:
    """Run fn() in this thread; if it is still running after `seconds`, interrupt it (HardStopped).

    Why: thread-pool tasks cannot be killed and Prefect's timeout_seconds does not interrupt them. lipcore
    checks its own deadline cooperatively; this is the backstop for code that does not (a fetch, a long
    Python loop). The exception is delivered at the next Python bytecode, so a single long C call (one huge
    eigendecomposition) still finishes first; it is re-sent every second until the thread gives up.
    """
    if seconds is None:
        return fn()
    tid = threading.get_ident()
    lock = threading.Lock()
    done = threading.Event()
    fired = threading.Event()

    def fire() -> None:
        while not done.wait(1.0 if fired.is_set() else 0):
            with lock:
                if done.is_set():
                    return
                _async_raise(tid, _HardStop)
                fired.set()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        try:
            return fn()
        finally:
            with lock:
                done.set()
                timer.cancel()
                if fired.is_set():
                    _async_raise(tid, None)  # clear a pending, undelivered interrupt
    except _HardStop:
        raise HardStopped(f"{what}: time budget of {seconds:.4g} s exceeded (hard stop)") from None


# -- rows -----------------------------------------------------------------------------------------------
def _versions() -> tuple[str, str]:
    import lipcore
    from catalogs import lipzoo_version

    return lipcore.ENGINE_VERSION, lipzoo_version()


def report_rows(ref: ModelRef, loaded: Loaded, report: Any, flow_run_id: str | None) -> list[Any]:
    from catalogs import ResultRow

    engine, lz = _versions()
    arch = loaded.architecture or report.summary.get("kind")
    rows = []
    for vid, r in report.results.items():
        params = dict(r.params or {})
        if loaded.info.get("notes"):  # what the model is (degenerate init, ...): on every row, never silent
            params["notes"] = list(loaded.info["notes"])
        rows.append(ResultRow(
            model_id=ref.model_id, hub=ref.hub, repo_id=ref.repo_id, revision=ref.revision, variant=vid,
            kind=r.kind, status=r.status, value=r.value if r.status == "ok" else None, reason=r.reason,
            seconds=float(r.seconds), vacuous=bool(r.vacuous), device=report.device, params=params,
            architecture=arch, weights_digest=loaded.weights_digest, engine_version=report.engine_version or engine,
            lipzoo_version=lz, flow_run_id=flow_run_id))
    return rows


def problem_rows(ref: ModelRef | Unresolved, status: str, reason: str, variants: Sequence[str],
                 device: str = "cpu", flow_run_id: str | None = None) -> list[Any]:
    """`refused`: one row per requested variant (settled for this revision); `failed`: one row, variant '*'."""
    from catalogs import ResultRow
    from lipcore import VARIANTS

    engine, lz = _versions()
    revision = ref.revision if isinstance(ref, ModelRef) else "unresolved"
    arch = ref.architecture if isinstance(ref, ModelRef) else None
    vs = list(variants) if status == "refused" else ["*"]
    return [ResultRow(model_id=ref.model_id, hub=ref.hub, repo_id=ref.repo_id, revision=revision, variant=v,
                      kind=VARIANTS[v].kind if v in VARIANTS else "upper", status=status,  # type: ignore[arg-type]
                      reason=reason, device=device, architecture=arch, engine_version=engine, lipzoo_version=lz,
                      flow_run_id=flow_run_id) for v in vs]


# -- the work of one model ------------------------------------------------------------------------------
def _refusal_types() -> tuple[type[BaseException], ...]:
    from lipcore.errors import Refused

    types: list[type[BaseException]] = [Unsupported, Refused]
    try:
        from lipcore.mlp.loaders import NotAnMLP

        types.append(NotAnMLP)
    except ImportError:
        pass
    return tuple(types)


def _device(settings: Settings) -> str:
    from lipcore import resolve_device

    return str(resolve_device(settings.device))


# torch.export/FX tracing keeps global dispatch-mode state: two threads tracing at once corrupt each other
# ("ProxyTorchDispatchMode slot already occupied"). Module targets (CNNs, timm) are analysed one at a time per
# process; MLPs (plain matrices) run concurrently.
_MODULE_LOCK = threading.Lock()


def run_job(job: Job, flow_run_id: str | None = None, gpu_limit: bool = False) -> Outcome:
    """Fetch the referenced weights and bound them; raises on a whole-model failure (see module doc)."""
    from torch import nn

    import lipcore

    from . import hubs, progress

    ref, s = job.ref, job.settings
    progress.started(ref.model_id)
    t0 = time.perf_counter()
    device = _device(s)
    budget = s.budget_s
    out = Outcome(ref.model_id, "ok", device=device)
    try:
        loaded = call_with_hard_stop(lambda: hubs.fetch(ref, s), _hard(budget), f"{ref.model_id} (fetch)")
    except _refusal_types() as e:
        return _refused(out, job, one_line(e), device, flow_run_id, t0)
    out.fetch_seconds = time.perf_counter() - t0
    left = None if budget is None else max(0.0, budget - out.fetch_seconds)
    kw: dict[str, Any] = {"device": device, "input_shape": loaded.input_shape, "name": ref.model_id,
                          "budget_s": left, "options": s.options or None}
    if loaded.activation:
        kw["activation"] = loaded.activation
    if s.slope:
        kw["slope"] = s.slope

    def analyze() -> Any:
        if gpu_limit and device.startswith("cuda"):
            from prefect.concurrency.sync import concurrency

            with concurrency(GPU_LIMIT_NAME, occupy=1, strict=False):
                return lipcore.analyze(loaded.target, list(s.variants), **kw)
        return lipcore.analyze(loaded.target, list(s.variants), **kw)

    lock = _MODULE_LOCK if isinstance(loaded.target, nn.Module) else None
    t1 = time.perf_counter()
    try:
        if lock is not None:
            lock.acquire()
        t1 = time.perf_counter()
        report = call_with_hard_stop(analyze, _hard(left), ref.model_id)
    except _refusal_types() as e:
        return _refused(out, job, one_line(e), device, flow_run_id, t0)
    finally:
        out.lipcore_seconds = time.perf_counter() - t1
        if lock is not None:
            lock.release()
    out.rows = report_rows(ref, loaded, report, flow_run_id)
    out.seconds = time.perf_counter() - t0
    return out


def _hard(budget: float | None) -> float | None:
    return None if budget is None else budget + max(HARD_STOP_GRACE_S, 0.25 * budget)


def _refused(out: Outcome, job: Job, reason: str, device: str, flow_run_id: str | None, t0: float) -> Outcome:
    out.status, out.reason = "refused", reason
    out.rows = problem_rows(job.ref, "refused", reason, job.settings.variants, device, flow_run_id)
    out.seconds = time.perf_counter() - t0
    return out


# -- Prefect tasks ----------------------------------------------------------------------------------------
def _retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only hub/network trouble; a corrupt file or a missing repo will not get better."""
    exc = getattr(state, "data", None)
    return isinstance(exc, BaseException) and is_transient(exc)


def _make_tasks() -> tuple[Any, Any, Any]:
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    common = {"cache_policy": NO_CACHE, "persist_result": False}

    @task(name="discover", retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=_retry_if_transient,
          task_run_name="discover-{entry.label}", **common)
    def discover_entry(entry: Any) -> list[ModelRef | Unresolved]:
        from . import hubs

        return hubs.discover(entry)

    @task(name="bound-model", retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=_retry_if_transient,
          task_run_name="bound-{job.ref.hub}-{job.ref.repo_id}", **common)
    def bound_model(job: Job, flow_run_id: str | None = None, gpu_limit: bool = False) -> Outcome:
        return run_job(job, flow_run_id, gpu_limit)

    @task(name="write-results", retries=0, **common)
    def write_results(catalog: Any, rows: list[Any], run_id: str) -> int:
        """The single writer: one transaction per batch, only ever called from the flow's own thread."""
        return catalog.write(rows, run_id) if rows else 0

    return discover_entry, bound_model, write_results


discover_entry, bound_model, write_results = _make_tasks()
