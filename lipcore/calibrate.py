"""The engines' speed on the machine they run on, for the cost guards (issue 13 item 3).

Why measured: a constant rate is wrong by an order of magnitude between a loaded laptop and a quiet server,
so the guard either refuses models this machine bounds in minutes or starts runs that take hours. The rate
(the engine's cost model ``8 sum F c^3`` flops per second of engine time) comes from, in order:

1. the engine runs this device has already done (``record_run``, from `run_recursion`'s counters: the median
   of the last few runs big enough to time, kept per device and thread count);
2. otherwise a short calibration (~0.3 s) of the engine's hot kernels - a batched complex128 Cholesky, a
   triangular solve and a GEMM on blocks of a typical size - times ``ENGINE_SHARE``, the share of that kernel
   rate the engine reaches end to end (measured on resnet18; the first real run replaces it).

Both are cached in memory and on disk (``$LIPZOO_CACHE_DIR``, else ``$XDG_CACHE_HOME/lipzoo``, else
``~/.cache/lipzoo``; ``calibration.json``), keyed by device, its name, torch's thread count and torch version.
A GPU estimate for a CPU run uses ``GPU_ASSUMED_RATE``, an assumption the refusal message names as such.
The MLP resource guard's rate (`dense_rate`) is measured the same way, by whoever knows how to time its engine
(`lipcore.api` times one ECLipsE-Fast recursion), and cached beside it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

GPU_ASSUMED_RATE = 2e11  # engine model-flop/s assumed for a datacentre GPU (not measured here)
ENGINE_SHARE = 0.25  # engine rate / calibrated kernel rate before any run was measured (resnet18, 2-core CPU)
MIN_RECORD_FLOPS = 1e10  # runs below this are dominated by overheads: not recorded
KEEP_RUNS = 7
CALIBRATE_S = 0.3

_MEMORY: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True)
class Rate:
    """Expected engine speed here (model flops per second) and where the number comes from."""

    flops_per_s: float
    source: str


def device_key(device: torch.device) -> str:
    """What the rate depends on: device kind and name, torch's threads, torch's version."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    return f"{device.type}|{name}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def cache_file() -> Path:
    base = os.environ.get("LIPZOO_CACHE_DIR")
    if base:
        return Path(base) / "calibration.json"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lipzoo" / "calibration.json"


def _load() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _entry(key: str) -> dict[str, Any]:
    if key not in _MEMORY:
        disk = _load().get(key)
        _MEMORY[key] = dict(disk) if isinstance(disk, dict) else {}
    return _MEMORY[key]


def _save(key: str) -> None:
    """Merge this key into the disk cache atomically; a read-only or missing home keeps it in memory only."""
    path = cache_file()
    try:
        data = _load()
        data[key] = _MEMORY[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".calibration.")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


def measure_kernels(device: torch.device, seconds: float = CALIBRATE_S, c: int = 128, batch: int = 24) -> float:
    """Real flop/s of the engine's per-frequency kernels (Cholesky, triangular solve, GEMM on complex128
    c x c blocks), timed for about `seconds`."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(batch, c, c, generator=gen, dtype=torch.complex128).to(device)
    m = a @ a.mH + c * torch.eye(c, dtype=torch.complex128, device=device)
    flops_per = batch * 8.0 * (c ** 3 / 3 + c ** 3 + c ** 3)  # potrf + trsm (c columns) + gemm, complex = 8 real

    def once() -> None:
        L = torch.linalg.cholesky_ex(m)[0]
        z = torch.linalg.solve_triangular(L, a, upper=False)
        _ = z @ z.mH
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    once()  # warm-up (allocations, library init)
    n, t0 = 0, time.perf_counter()
    while True:
        once()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds or n >= 200:
            return n * flops_per / dt


def engine_rate(device: torch.device) -> Rate:
    """The rate the guard divides the cost model by: measured engine runs here, else calibrated kernels."""
    key = device_key(device)
    e = _entry(key)
    runs = [float(r) for r in e.get("runs", []) if float(r) > 0]
    if runs:
        return Rate(statistics.median(runs), f"measured by {len(runs)} engine run(s) on this {device.type}")
    if "kernel" not in e:
        e["kernel"] = measure_kernels(device)
        e["kernel_at"] = time.time()
        _save(key)
    k = float(e["kernel"])
    return Rate(k * ENGINE_SHARE, f"calibrated: kernels at {k / 1e9:.1f} GFLOP/s here x engine share {ENGINE_SHARE}")


def record_run(device: torch.device, model_flops: float, seconds: float) -> None:
    """Remember the rate a real engine run reached (runs too small to time are ignored)."""
    if not (model_flops >= MIN_RECORD_FLOPS and seconds > 0):
        return
    key = device_key(device)
    e = _entry(key)
    e["runs"] = ([*e.get("runs", []), model_flops / seconds])[-KEEP_RUNS:]
    _save(key)


def estimate(flops: float, device: torch.device) -> tuple[float, float, Rate]:
    """(seconds here, seconds on a GPU, the rate used here) for `flops` model flops. On a GPU both are the
    measured GPU estimate; on a CPU the GPU figure uses GPU_ASSUMED_RATE."""
    r = engine_rate(device)
    here = flops / r.flops_per_s
    gpu = here if device.type == "cuda" else flops / GPU_ASSUMED_RATE
    return here, gpu, r


def dense_rate(device: torch.device, measure: Callable[[torch.device], float]) -> Rate:
    """The MLP resource guard's rate on this device: `measure(device)` (flops of the guard's cost model per
    second of a real recursion), run once and cached like the engine rate."""
    key = device_key(device)
    e = _entry(key)
    if "dense" not in e:
        e["dense"] = float(measure(device))
        e["dense_at"] = time.time()
        _save(key)
    return Rate(float(e["dense"]), f"calibrated: an MLP recursion at {float(e['dense']) / 1e9:.1f} GFLOP/s here")
