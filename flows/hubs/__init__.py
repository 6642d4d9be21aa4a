"""Hub adapters: a zoo entry becomes `ModelRef`s (discover), a `ModelRef` becomes weights (fetch).

Each hub module (hf, timm_hub, local, bench) has
    discover(entry) -> list[ModelRef | Unresolved]     resolve the *current* revision of every model
    fetch(ref, settings) -> Loaded                      fetch exactly that revision, build what lipcore takes
Transient hub/network errors propagate as exceptions (`is_transient` says which; the flow retries only
those); everything else about a model becomes a failed/refused catalog row.
"""

from __future__ import annotations

import hashlib
import importlib
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from ..refs import Loaded, ModelRef, Settings, Unresolved

# timm scripts some norm-act layers while building models (EfficientNet-style), and torch >= 2.14 warns that
# torch.jit.script is deprecated: timm's business, not the auditor's, and it cluttered every audit's output
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

HUB_MODULES = {"hf": "flows.hubs.hf", "timm": "flows.hubs.timm_hub", "local": "flows.hubs.local",
               "bench": "flows.hubs.bench"}

WEIGHT_EXTS = (".safetensors", ".pt", ".pth", ".bin", ".npz", ".mat")


class HubError(Exception):
    """A model cannot be fetched for a permanent reason (changed file, missing weights); one line."""


class Unsupported(HubError):
    """The checkpoint's architecture is not something lipzoo can bound (becomes a `refused` row)."""


def get_hub(name: str) -> ModuleType:
    if name not in HUB_MODULES:
        raise HubError(f"unknown hub {name!r}; known: {', '.join(HUB_MODULES)}")
    return importlib.import_module(HUB_MODULES[name])


def discover(entry: Any) -> list[ModelRef | Unresolved]:
    return get_hub(entry.hub).discover(entry)


def fetch(ref: ModelRef, settings: Settings) -> Loaded:
    return get_hub(ref.hub).fetch(ref, settings)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weight_file(path: Path, source: str, settings: Settings, digest: str | None = None) -> Loaded:
    """A checkpoint file as lipcore's input: a rebuilt module when its metadata names an architecture
    (lipzoo.arch / timm.arch), otherwise the path itself for lipcore's MLP loaders."""
    from . import archs

    digest = digest or file_digest(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if archs.ARCH_KEY in meta or archs.TIMM_ARCH_KEY in meta:
                    state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
                else:
                    state = None
        except Exception as e:  # safetensors raises its own SafetensorError for truncated/corrupt headers
            raise HubError(f"{source}: corrupt or unreadable safetensors file ({str(e).splitlines()[0]})") from None
        shape = settings.input_shape or archs.input_shape_from(meta)
        if state is not None:
            try:
                module = archs.module_from_state(meta, state, source)
            except archs.ArchError as e:
                raise Unsupported(str(e)) from None
            arch = meta.get(archs.TIMM_ARCH_KEY) or "sequential"
            return Loaded(module, input_shape=shape, architecture=arch, weights_digest=digest)
        return Loaded(path, input_shape=shape, activation=settings.activation or meta.get("activation"),
                      architecture="mlp", weights_digest=digest)
    return Loaded(path, input_shape=settings.input_shape, activation=settings.activation, weights_digest=digest)


_TRANSIENT_NAMES = {
    "ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "TimeoutException",
    "RemoteProtocolError", "NetworkError", "ReadError", "WriteError", "ProxyError", "ConnectionError",
    "ChunkedEncodingError", "IncompleteRead",
}


def is_transient(exc: BaseException | None) -> bool:
    """Whether an error is worth a retry: network trouble or a hub 5xx/429, never a missing repo or bad file."""
    if isinstance(exc, HubError):
        return False
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, ConnectionError | TimeoutError):
            return True
        if any(c.__name__ in _TRANSIENT_NAMES for c in type(exc).__mro__):
            return True
        resp = getattr(exc, "response", None)
        code = getattr(resp, "status_code", None)
        if isinstance(code, int) and (code >= 500 or code == 429):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
