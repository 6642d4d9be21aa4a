"""The audit flows: audit_zoo, watch_zoo and audit_model (Prefect 3; with no server configured a temporary
local one is started, quietly, with PREFECT_HOME under ~/.cache/lipzoo/prefect unless set).

audit_zoo: discover (resolve every model's current revision) -> diff against the catalog by
(model, revision, variant, engine version) -> one `bound-model` task per model with missing variants (mapped
over the task runner; each task fetches its weights by reference) -> the single writer (batched catalog
transactions from the flow's thread) -> summary. A model that fails becomes a `failed` row with its reason
while the others complete; the flow then ends Failed with the summary (`AuditFailed`), never Completed.

watch_zoo: discover -> the models whose current revision differs from the catalog's latest (or that are new)
-> one Prefect event per new revision -> audit only those.

Event contract (consumed by deploy/'s trigger on audit_model):
    event    = "lipzoo.checkpoint.new"
    resource = {"prefect.resource.id": "lipzoo.model.<hub>:<repo_id>", "lipzoo.hub": <hub>,
                "lipzoo.repo_id": <repo_id>, "lipzoo.model_id": "<hub>:<repo_id>"}
    payload  = {"revision": <new revision>, "previous_revision": <catalog's latest or null>,
                "architecture": <str or null>, "zoo": <zoo name>, "zoo_source": <manifest path or null>}
    e.g. trigger parameters: hub="{{ event.resource['lipzoo.hub'] }}",
         repo_id="{{ event.resource['lipzoo.repo_id'] }}", revision="{{ event.payload.revision }}"

GPU work: tasks whose device is cuda carry the tag "lipzoo-gpu" and hold a slot of the global concurrency
limit "lipzoo-gpu" (created on first use with LIPZOO_GPU_SLOTS slots, default the number of GPUs) while
lipcore runs. Retries: hub/network errors only. Budget: per model, enforced inside lipcore (cooperative
deadline) and by a hard stop (`flows.tasks.call_with_hard_stop`).
"""

# ruff: noqa: I001  (prefect_env must be imported before prefect)
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import prefect_env  # noqa: F401  (must precede the prefect import)

from prefect import flow  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from prefect.exceptions import ExternalSignal  # noqa: E402

from .hubs import EntryError, get_hub  # noqa: E402
from .refs import Job, ModelRef, Unresolved  # noqa: E402
from .tasks import (  # noqa: E402
    GPU_LIMIT_NAME,
    GPU_TAG,
    Outcome,
    bound_model,
    discover_entry,
    one_line,
    problem_rows,
    write_results,
)
from .zoo import Entry, Zoo, entry_for, load_zoo, override  # noqa: E402
from . import spool  # noqa: E402
from catalogs.errors import CatalogLockedError  # noqa: E402

EVENT_NEW_CHECKPOINT = "lipzoo.checkpoint.new"
WRITE_BATCH_ROWS = 2000
WRITE_EVERY_S = 10.0

log = logging.getLogger("lipzoo.flows")
last_interrupted: dict[str, Any] | None = None  # the summary of the last audit a signal stopped (for the CLI)


class AuditFailed(Exception):
    """Something in the audit failed; the results that succeeded are in the catalog. `.summary` has it all."""

    def __init__(self, summary: dict[str, Any]) -> None:
        self.summary = summary
        super().__init__(summary_line(summary))


def summary_line(s: dict[str, Any]) -> str:
    parts = [f"{s.get('audited', 0)} audited", f"{s.get('up_to_date', 0)} up to date"]
    for k in ("ok", "refused", "failed"):
        parts.append(f"{s.get(k, 0)} {k}")
    if s.get("variants_failed"):
        parts.append(f"{s['variants_failed']} variant results failed")
    line = f"zoo {s.get('zoo')!r}: " + ", ".join(parts) + f" in {s.get('seconds', 0):.1f} s"
    fails = s.get("failures") or []
    if fails:
        f0 = fails[0]
        line += f"; first failure: {f0['model_id']}: {f0['reason']}"
    return line


def _default_workers() -> int:
    env = os.environ.get("LIPZOO_WORKERS")
    if env:
        return max(1, int(env))
    return max(2, min(4, os.cpu_count() or 2))


def _make_runner(spec: str | None) -> Any:
    """A task runner from a spec ("dask://host:port", "ray://...", ...) via flows.runners; None = the flow's."""
    if not spec:
        return None
    try:
        from .runners import make_task_runner  # type: ignore[import-not-found]
    except ImportError:
        raise ValueError(f"runner {spec!r} needs flows.runners, which is not available in this install") from None
    return make_task_runner(spec)


def _flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id) if flow_run.id else None
    except Exception:
        return None


def _open_catalog(catalog: str | os.PathLike[str] | None) -> Any:
    from catalogs import Catalog, resolve_catalog_path

    return Catalog(resolve_catalog_path(catalog))


def _gpu_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _ensure_gpu_limit() -> None:
    """Create the global concurrency limit for GPU tasks if it does not exist (once per server)."""
    try:
        import torch
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
        from prefect.exceptions import ObjectNotFound

        slots = int(os.environ.get("LIPZOO_GPU_SLOTS") or max(1, torch.cuda.device_count()))
        with get_client(sync_client=True) as client:
            try:
                client.read_global_concurrency_limit_by_name(GPU_LIMIT_NAME)
            except ObjectNotFound:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT_NAME, limit=slots))
    except Exception as e:  # without the limit, tasks still run (strict=False); say so
        log.warning("could not create the %s concurrency limit: %s", GPU_LIMIT_NAME, one_line(e))


# -- the shared machinery -------------------------------------------------------------------------------
def _discover(zoo: Zoo) -> tuple[list[tuple[ModelRef, Entry]], list[tuple[Unresolved, Entry]]]:
    """Resolve every entry concurrently (discovery tasks); a failed entry becomes one Unresolved."""
    futs = [(e, discover_entry.submit(e)) for e in zoo.entries]
    found: list[tuple[ModelRef, Entry]] = []
    bad: list[tuple[Unresolved, Entry]] = []
    seen: set[str] = set()
    for entry, fut in futs:
        fut.wait()
        state = fut.state
        if not state.is_completed():
            exc = state.result(raise_on_failure=False)
            for what in _entry_ids(entry):  # the real model ids (hf:ORG/REPO), never the entry's label
                if f"{entry.hub}:{what}" not in seen:
                    seen.add(f"{entry.hub}:{what}")
                    bad.append((Unresolved(entry.hub, what, f"discovery failed: {one_line(exc)}"), entry))
            continue
        items = fut.result()
        if not items:  # a pattern / author / folder that matches nothing is an error, not "0 audited"
            for what in _entry_ids(entry):
                why = "matched no model" + get_hub(entry.hub).empty_note()
                bad.append((Unresolved(entry.hub, what, why), entry))
        for item in items:
            if item.model_id in seen:
                continue  # listed by two entries: the first one's settings win
            seen.add(item.model_id)
            if isinstance(item, Unresolved):
                bad.append((item, entry))
            else:
                found.append((item, entry))
    return found, bad


def _entry_ids(entry: Entry) -> list[str]:
    """The repo ids a zoo entry names, for failure rows when its discovery failed as a whole: what its hub says
    the entry names (explicit repos / models / nets, the author, the folder), else its label."""
    return get_hub(entry.hub).named(entry.params) or [entry.label]


def _say(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def _lock_wait_s(interrupted: bool = False) -> float:
    """How long the final write waits for another process's catalog lock before spooling: LIPZOO_LOCK_WAIT
    (default 600 s); a stopped audit waits at most 2 s (it must exit within a few seconds)."""
    if interrupted:
        return 2.0
    try:
        return max(0.0, float(os.environ.get("LIPZOO_LOCK_WAIT", "600")))
    except ValueError:
        return 600.0


def _keep_finished(futures: dict[Any, Job], collected: set[int], pending_rows: list[Any],
                   summary: dict[str, Any]) -> None:
    """On interrupt: the rows of every task that finished but was not collected yet; the rest is cancelled."""
    for fut in futures:
        if id(fut) in collected:
            continue
        try:
            state = fut.state
            if state.is_completed():
                out: Outcome = fut.result()
                pending_rows.extend(out.rows)
                summary["audited"] += 1
                summary[out.status] += 1
            elif hasattr(fut, "cancel"):
                fut.cancel()
        except BaseException:  # a future that cannot be read any more is not finished work
            continue


def _plan(found: Iterable[tuple[ModelRef, Entry]], computed: set[tuple[str, str, str]],
          force: bool = False) -> tuple[list[Job], int]:
    jobs, up_to_date = [], 0
    for ref, entry in found:
        missing = tuple(v for v in entry.settings.variants
                        if force or (ref.model_id, ref.revision, v) not in computed)
        if not missing:
            up_to_date += 1
            continue
        jobs.append(Job(ref, replace(entry.settings, variants=missing, hub_options=dict(entry.params))))
    return jobs, up_to_date


def _run_audit(zoo: Zoo, catalog: Any, found: list[tuple[ModelRef, Entry]], bad: list[tuple[Unresolved, Entry]],
               *, runner: str | None, label: str, extra: dict[str, Any] | None = None,
               force: bool = False, discovered_s: float = 0.0, t_start: float | None = None) -> dict[str, Any]:
    """Diff, map bound-model over the missing work, write through the single writer, summarise."""
    import lipcore

    from . import progress

    t0 = t_start if t_start is not None else time.perf_counter()
    flow_run_id = _flow_run_id()
    devices = sorted({e.settings.device for e in zoo.entries})
    run_device = "cuda" if any(d == "cuda" for d in devices) or ("auto" in devices and _gpu_available()) else "cpu"
    params = {"zoo": zoo.source or zoo.name, "runner": runner, "label": label, **(extra or {})}
    run_id = catalog.begin_run(zoo.name, run_device, flow_run_id=flow_run_id, params=params)
    summary: dict[str, Any] = {
        "zoo": zoo.name, "zoo_source": zoo.source, "catalog": str(catalog.path), "run_id": run_id,
        "flow_run_id": flow_run_id, "device": run_device, "engine_version": lipcore.ENGINE_VERSION,
        "discovered": len(found) + len(bad), "up_to_date": 0, "audited": 0, "ok": 0, "refused": 0, "failed": 0,
        "variants_failed": 0, "unresolved": len(bad), "rows_written": 0, "lipcore_seconds": 0.0,
        "discover_seconds": round(discovered_s, 3), "failures": [], **(extra or {}),
    }
    status = "failed"
    try:
        try:  # first what an earlier audit computed but could not write (then it is not computed again)
            summary["rows_replayed"] = spool.replay(catalog)
        except CatalogLockedError:
            pass
        jobs, summary["up_to_date"] = _plan(found, catalog.computed_keys(lipcore.ENGINE_VERSION), force)
        pending_rows: list[Any] = []
        for u, entry in bad:
            reason = u.reason
            pending_rows += problem_rows(u, "failed", reason, entry.settings.variants, flow_run_id=flow_run_id)
            summary["failed"] += 1
            summary["failures"].append({"model_id": u.model_id, "revision": "unresolved", "reason": reason})
        last_write = time.perf_counter()
        # (model, revision) of every row handed to the writer: on interrupt, what "finished" counts is read from
        # the rows themselves, so a signal landing between a task's bookkeeping steps cannot count a model whose
        # rows were not kept (one list.extend adds a model's rows whole, or not at all)
        seen: set[tuple[str, str]] = set()

        def flush(force_write: bool = False) -> None:
            """Write what is pending. A write lock held by another process keeps the rows pending (said once,
            naming the holder) and the audit goes on; the final write waits longer, then spools."""
            nonlocal pending_rows, last_write
            if pending_rows and (force_write or len(pending_rows) >= WRITE_BATCH_ROWS
                                 or time.perf_counter() - last_write > WRITE_EVERY_S):
                seen.update((r.model_id, r.revision) for r in pending_rows)
                try:
                    summary["rows_written"] += write_results(catalog, pending_rows, run_id)
                except CatalogLockedError as e:
                    if not summary.get("lock_waits"):
                        _say(f"lipzoo: {e}; keeping {len(pending_rows)} computed rows and retrying")
                    summary["lock_waits"] = summary.get("lock_waits", 0) + 1
                    last_write = time.perf_counter()
                    if force_write:
                        raise
                    return
                pending_rows = []
                last_write = time.perf_counter()

        def final_write(wait_s: float) -> None:
            """Everything pending reaches the catalog, or (lock still held after `wait_s`) the durable spool."""
            nonlocal pending_rows
            deadline = time.monotonic() + wait_s
            while pending_rows:
                try:
                    flush(force_write=True)
                except CatalogLockedError as e:
                    if time.monotonic() < deadline:
                        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                        continue
                    f = spool.spool(catalog.path, run_id, pending_rows)
                    summary["rows_spooled"] = len(pending_rows)
                    _say(f"lipzoo: {e}; {len(pending_rows)} computed rows saved to {f}: the next audit or "
                         f"lipzoo command on this catalog writes them")
                    pending_rows = []

        progress.begin(len(jobs), label)
        gpu_jobs = [j for j in jobs
                    if j.settings.device == "cuda" or (j.settings.device == "auto" and _gpu_available())]
        if gpu_jobs:
            _ensure_gpu_limit()
        gpu_task = bound_model.with_options(tags=[GPU_TAG]) if gpu_jobs else bound_model
        gpu_ids = {id(j) for j in gpu_jobs}
        task_runner = _make_runner(runner)
        futures: dict[Any, Job] = {}
        from prefect.futures import as_completed

        def submit(job: Job) -> Any:
            t = gpu_task if id(job) in gpu_ids else bound_model
            p = {"job": job, "flow_run_id": flow_run_id, "gpu_limit": id(job) in gpu_ids}
            return task_runner.submit(t, parameters=p) if task_runner is not None else t.submit(**p)

        collected: set[int] = set()

        def collect() -> None:
            for fut in as_completed(list(futures)):
                job = futures[fut]
                collected.add(id(fut))
                fut.wait()  # sets the future's final state from the runner (fut.state alone may ask the API)
                state = fut.state
                summary["audited"] += 1
                if state.is_completed():
                    out: Outcome = fut.result()
                    summary[out.status] += 1
                    progress.finished(job.model_id, "failed" if any(r.status == "failed" for r in out.rows)
                                      else out.status)
                    summary["lipcore_seconds"] += out.lipcore_seconds
                    pending_rows.extend(out.rows)
                    notes = (out.rows[0].params or {}).get("notes") if out.rows else None
                    if notes:  # what the model is (degenerate weights, ...): said, not only stored
                        summary.setdefault("notes", []).append({"model_id": job.model_id,
                                                                "revision": job.ref.revision, "notes": notes})
                    bad_variants = [r for r in out.rows if r.status == "failed"]
                    summary["variants_failed"] += len(bad_variants)
                    for r in bad_variants[:3]:
                        summary["failures"].append({"model_id": r.model_id, "revision": r.revision,
                                                    "variant": r.variant, "reason": r.reason})
                else:
                    exc = state.result(raise_on_failure=False)
                    reason = one_line(exc) if isinstance(exc, BaseException) else (state.message or state.name)
                    summary["failed"] += 1
                    summary["failures"].append({"model_id": job.model_id, "revision": job.ref.revision,
                                                "reason": reason})
                    pending_rows.extend(problem_rows(job.ref, "failed", reason, job.settings.variants,
                                                     job.settings.device, flow_run_id))
                    progress.finished(job.model_id, "failed")
                flush()

        try:
            if task_runner is not None:
                with task_runner:
                    futures = {submit(j): j for j in jobs}
                    collect()
            else:
                futures = {submit(j): j for j in jobs}
                collect()
        except (KeyboardInterrupt, ExternalSignal):  # SIGINT / SIGTERM (Prefect's TerminationSignal while a flow
            # runs, else the CLI's KeyboardInterrupt): keep what finished, write it, stop
            status = "interrupted"
            summary["interrupted"] = True
            seen.update((r.model_id, r.revision) for r in pending_rows)
            _keep_finished(futures, collected | {id(f) for f, j in futures.items()
                                                 if (j.ref.model_id, j.ref.revision) in seen}, pending_rows, summary)
            seen.update((r.model_id, r.revision) for r in pending_rows)
            summary["audited"] = len(seen & {(j.ref.model_id, j.ref.revision) for j in jobs})
            final_write(_lock_wait_s(interrupted=True))
            global last_interrupted
            last_interrupted = summary
            raise
        final_write(_lock_wait_s())
        from .certify import certify_models  # issue 14: certificates from the bounds just written

        summary.update(certify_models(found, catalog, run_id, Path(zoo.source).parent if zoo.source else None, force))
        status = "failed" if summary["failed"] or summary["variants_failed"] else "completed"
    finally:
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        summary["lipcore_seconds"] = round(summary["lipcore_seconds"], 3)
        n = summary["audited"]
        summary["overhead_per_model_s"] = round((summary["seconds"] - summary["lipcore_seconds"]) / n, 4) if n else None
        summary["failures"] = summary["failures"][:50]
        progress.end()
        try:
            catalog.finish_run(run_id, status, summary)
        except Exception as e:  # the run stays 'running' and the next begin_run marks it aborted
            log.warning("could not close run %s: %s", run_id, one_line(e))
    return summary


def _finish(summary: dict[str, Any]) -> Any:
    """The summary, or a Failed state carrying AuditFailed(summary): calling the flow then raises AuditFailed,
    the run shows Failed with the one-line summary, and Prefect logs no traceback for an expected outcome."""
    if summary.get("failed") or summary.get("variants_failed"):
        from prefect.states import Failed

        return Failed(message=summary_line(summary), data=AuditFailed(summary))
    return summary


_FLOW_KW: dict[str, Any] = {"persist_result": False, "validate_parameters": False, "log_prints": False,
                            "task_runner": ThreadPoolTaskRunner(max_workers=_default_workers())}


def _zoo(zoo: Any, variants: Any, device: str | None, budget_s: float | None) -> Zoo:
    return override(load_zoo(zoo), variants=variants, device=device if device not in (None, "") else None,
                    budget_s=budget_s)


def _check_device(device: str | None, runner: str | None) -> None:
    if device == "cuda" and runner is None and not _gpu_available():
        raise ValueError("device 'cuda' requested but CUDA is not available here; use --device cpu or auto")


# -- the flows ------------------------------------------------------------------------------------------
@flow(name="audit-zoo", **_FLOW_KW)
def audit_zoo(zoo: str | Path | dict[str, Any] | None = None, *, variants: list[str] | None = None,
              device: str | None = None, catalog: str | None = None, runner: str | None = None,
              budget_s: float | None = None, force: bool = False) -> dict[str, Any]:
    """Audit a zoo (manifest path, dict, or None for the demo zoo) into the catalog; returns the summary.

    `device`/`variants`/`budget_s` override the manifest's; `runner` is a task-runner spec for
    flows.runners ("dask://host:8786", ...); `force` recomputes even what the catalog already has.
    Raises AuditFailed (flow state Failed) when any model or variant failed; the rest is written.
    """
    t0 = time.perf_counter()
    _check_device(device, runner)
    z = _zoo(zoo, variants, device, budget_s)
    found, bad = _discover(z)
    cat = _open_catalog(catalog)
    summary = _run_audit(z, cat, found, bad, runner=runner, label=f"audit {z.name}", force=force,
                         discovered_s=time.perf_counter() - t0, t_start=t0)
    return _finish(summary)


@flow(name="watch-zoo", **_FLOW_KW)
def watch_zoo(zoo: str | Path | dict[str, Any] | None = None, *, variants: list[str] | None = None,
              device: str | None = None, catalog: str | None = None, runner: str | None = None,
              budget_s: float | None = None, audit: bool = True, emit: bool = True) -> dict[str, Any]:
    """Find models whose current revision is not the catalog's latest, emit `lipzoo.checkpoint.new` for each,
    and (unless audit=False, e.g. when an event trigger audits them) audit only those."""
    t0 = time.perf_counter()
    _check_device(device, runner)
    z = _zoo(zoo, variants, device, budget_s)
    found, bad = _discover(z)
    cat = _open_catalog(catalog)
    new: list[tuple[ModelRef, Entry]] = []
    events = []
    for ref, entry in found:
        prev = cat.latest_revision(ref.model_id)
        if prev == ref.revision:
            continue
        new.append((ref, entry))
        events.append({"model_id": ref.model_id, "revision": ref.revision, "previous_revision": prev})
        if emit:
            _emit_new_checkpoint(ref, prev, z)
    extra = {"watched": len(found), "new_revisions": events}
    if not audit:
        return {"zoo": z.name, "discovered": len(found) + len(bad), "unresolved": len(bad), **extra,
                "seconds": round(time.perf_counter() - t0, 3)}
    summary = _run_audit(z, cat, new, bad, runner=runner, label=f"watch {z.name}", extra=extra,
                         discovered_s=time.perf_counter() - t0, t_start=t0)
    return _finish(summary)


def _emit_new_checkpoint(ref: ModelRef, previous: str | None, zoo: Zoo) -> None:
    from prefect.events import emit_event

    emit_event(
        event=EVENT_NEW_CHECKPOINT,
        resource={"prefect.resource.id": f"lipzoo.model.{ref.model_id}", "lipzoo.hub": ref.hub,
                  "lipzoo.repo_id": ref.repo_id, "lipzoo.model_id": ref.model_id},
        payload={"revision": ref.revision, "previous_revision": previous, "architecture": ref.architecture,
                 "zoo": zoo.name, "zoo_source": zoo.source},
    )


@flow(name="audit-model", **_FLOW_KW)
def audit_model(hub: str, repo_id: str, revision: str | None = None, *, zoo: str | dict[str, Any] | None = None,
                catalog: str | None = None, variants: list[str] | None = None, device: str | None = None,
                budget_s: float | None = None, runner: str | None = None, force: bool = False) -> dict[str, Any]:
    """Re-audit one model at one revision (default: its current one), with the settings of the zoo entry
    that lists it (the demo zoo when `zoo` is None; hub defaults when no entry lists it)."""
    t0 = time.perf_counter()
    _check_device(device, runner)
    z = _zoo(zoo, variants, device, budget_s)
    the_hub = get_hub(hub)
    entry = entry_for(z, hub, repo_id)
    if entry is None:  # no entry lists it: the hub's own entry for one model, with the zoo's first settings
        try:
            params = the_hub.adhoc(repo_id)
        except EntryError as e:
            raise ValueError(f"{hub}:{repo_id}: not listed by zoo {z.name!r}; {e}") from None
        base = z.entries[0].settings if z.entries else None
        from .refs import Settings
        from .zoo import DEFAULT_AUDIT_VARIANTS

        settings = replace(base) if base else Settings(variants=DEFAULT_AUDIT_VARIANTS)
        entry = Entry(hub, params, settings, f"{hub}:{repo_id}")
    one = Entry(entry.hub, the_hub.narrow(dict(entry.params), repo_id, revision), entry.settings, entry.label)
    sub = Zoo(z.name, [one], z.source, z.description)
    found, bad = _discover(sub)
    found = [(r, e) for r, e in found if r.repo_id == repo_id]
    if revision is not None:
        found = [(the_hub.pin(r, revision), e) for r, e in found]
    if not found and not bad:
        bad = [(Unresolved(hub, repo_id, f"not found by the {hub} hub"), one)]
    cat = _open_catalog(catalog)
    summary = _run_audit(sub, cat, found, bad, runner=runner, label=f"audit {hub}:{repo_id}", force=force,
                         extra={"model": f"{hub}:{repo_id}", "requested_revision": revision},
                         discovered_s=time.perf_counter() - t0, t_start=t0)
    return _finish(summary)

