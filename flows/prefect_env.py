"""Prefect's environment for lipzoo, set before prefect is imported (its settings are read at import).

Why: with no server configured, Prefect 3 starts a temporary local server per process. Without these
defaults it writes its database to ~/.prefect, logs a telemetry error on every start (no internet) and
prints an INFO line per task. Everything here is a *default*: a variable the user set wins.
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path


def cache_dir() -> Path:
    """The user's cache directory for lipzoo ($XDG_CACHE_HOME/lipzoo, default ~/.cache/lipzoo)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lipzoo"


DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "ERROR",
    "PREFECT_LOGGING_LOG_PRINTS": "false",
    # the temporary server must outlive slow first starts (migrations) on a loaded 2-core box
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def configure() -> None:
    """Apply the defaults (idempotent). Call before the first `import prefect` in the process."""
    os.environ.setdefault("PREFECT_HOME", str(cache_dir() / "prefect"))
    for k, v in DEFAULTS.items():
        os.environ.setdefault(k, v)
    try:
        Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    except OSError:
        pass


configure()


class TemporaryServer:
    """Prefect's temporary API server, started by lipzoo's CLI itself at the very start of the command.

    Why not let Prefect start it: Prefect starts it on the first flow call, after torch/timm/prefect are
    imported, and imports the whole server application into the client process first (~3 s). Started here
    as a subprocess before those imports, its start-up (~5-10 s) overlaps with them on the other core. The
    process runs exactly what Prefect itself runs (uvicorn + prefect.server.api.server:create_app, UI off),
    dies with its parent (PR_SET_PDEATHSIG on Linux) and is stopped at exit.
    """

    def __init__(self) -> None:
        import importlib.util
        import socket
        import subprocess

        spec = importlib.util.find_spec("prefect")
        if spec is None or spec.origin is None:
            raise RuntimeError("prefect is not installed")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        atexit.register(self.stop)

    def wait_ready(self, timeout: float = 120.0) -> None:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the temporary Prefect server exited with status {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the temporary Prefect server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except Exception:
                self.proc.kill()
                self.proc.wait()


def _die_with_parent() -> None:
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def start_temporary_server() -> TemporaryServer | None:
    """For the CLI: when no PREFECT_API_URL is configured and prefect is not imported yet, start the server
    now and point this process's Prefect at it (call `wait_ready()` before the first flow)."""
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return None
    if os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED", "").lower() in ("0", "false"):
        return None
    try:
        server = TemporaryServer()
    except Exception:
        return None  # Prefect starts its own on the first flow
    os.environ["PREFECT_API_URL"] = server.api_url
    return server
