"""Progress of an audit (models done/total, current model) for the CLI's bar; a no-op unless installed.

Why a module-level hook and not a flow parameter: flow parameters must be serialisable for Prefect's API
and deployments; the bar is a property of the terminal that started the run (the CLI installs it, the
tasks and the flow in the same process report to it; remote workers simply have none).
"""

from __future__ import annotations

import threading
from typing import Any, Protocol


class Reporter(Protocol):
    def begin(self, total: int, label: str) -> None: ...
    def started(self, model_id: str) -> None: ...
    def finished(self, model_id: str, status: str) -> None: ...
    def end(self) -> None: ...


_reporter: Reporter | None = None
_lock = threading.Lock()


def install(reporter: Reporter | None) -> None:
    global _reporter
    _reporter = reporter


def _call(name: str, *a: Any) -> None:
    r = _reporter
    if r is None:
        return
    try:
        with _lock:
            getattr(r, name)(*a)
    except Exception:  # a progress bar must never break an audit
        pass


def begin(total: int, label: str) -> None:
    _call("begin", total, label)


def started(model_id: str) -> None:
    _call("started", model_id)


def finished(model_id: str, status: str) -> None:
    _call("finished", model_id, status)


def end() -> None:
    _call("end")


class RichBar:
    """A rich progress bar on stderr: `audit demo ━━━━━━ 12/30 0:00:41 bench:eclipse/lyr10n80`."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("{task.fields[current]}"),
                                  console=Console(stderr=True), transient=False)
        self._task: Any = None
        self._running: list[str] = []
        self._failed = 0

    def begin(self, total: int, label: str) -> None:
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task(label, total=total, current="")
        else:
            self._progress.update(self._task, description=label, total=total, completed=0)

    def started(self, model_id: str) -> None:
        self._running.append(model_id)
        self._progress.update(self._task, current=model_id)

    def finished(self, model_id: str, status: str) -> None:
        if model_id in self._running:
            self._running.remove(model_id)
        if status == "failed":
            self._failed += 1
        cur = self._running[-1] if self._running else ""
        if self._failed:
            cur = f"[red]{self._failed} failed[/] {cur}"
        self._progress.update(self._task, advance=1, current=cur)

    def end(self) -> None:
        if self._task is not None:
            self._progress.update(self._task, current=f"[red]{self._failed} failed[/]" if self._failed else "")
            self._progress.stop()
            self._task = None
