"""Hub adapters: a zoo entry becomes `ModelRef`s (discover), a `ModelRef` becomes weights (fetch).

Each hub module (hf, timm_hub, local, bench) declares one `HUB = Hub(...)`: its manifest keys and
    discover(entry) -> list[ModelRef | Unresolved]     resolve the *current* revision of every model
    fetch(ref, settings) -> Loaded                      fetch exactly that revision, build what lipcore takes
plus what the zoo and the flows ask of a hub (validate an entry, does it list a model, narrow it to one model,
pin a revision, an entry for a model no zoo lists, entries from the CLI's flags). zoo.py and audit.py branch on
no hub name: adding a hub is one module with a `HUB` and one line in `HUB_MODULES` (or `register_hub`).
Transient hub/network errors propagate as exceptions (`is_transient` says which; the flow retries only
those); everything else about a model becomes a failed/refused catalog row.
"""

from __future__ import annotations

import hashlib
import importlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..refs import Loaded, ModelRef, Settings, Unresolved

# timm scripts some norm-act layers while building models (EfficientNet-style), and torch >= 2.14 warns that
# torch.jit.script is deprecated: timm's business, not the auditor's, and it cluttered every audit's output
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

# the registry: hub name -> the module that declares its `HUB` (imported on first use). A new hub is one line here,
# or `register_hub(name, module)` from outside the package.
HUB_MODULES = {"hf": "flows.hubs.hf", "timm": "flows.hubs.timm_hub", "local": "flows.hubs.local",
               "bench": "flows.hubs.bench"}

WEIGHT_EXTS = (".safetensors", ".pt", ".pth", ".bin", ".npz", ".mat")


class HubError(Exception):
    """A model cannot be fetched for a permanent reason (changed file, missing weights); one line."""


class Unsupported(HubError):
    """The checkpoint's architecture is not something lipzoo can bound (becomes a `refused` row)."""


class EntryError(ValueError):
    """A zoo entry its hub cannot use (a required key missing, a pattern matching nothing); one line, without
    the entry's place in the manifest (the zoo adds it)."""


@dataclass(frozen=True)
class Key:
    """One manifest key of a hub's entries: the check its value must pass, and what it must be (for the error)."""

    check: Callable[[Any], bool]
    must_be: str


def is_str_list(v: Any) -> bool:
    return isinstance(v, str) or (isinstance(v, list | tuple) and all(isinstance(x, str) for x in v))


# the key types hub modules share
STR = Key(lambda v: isinstance(v, str), "a string")
NONEMPTY_STR = Key(lambda v: isinstance(v, str) and v != "", "a non-empty string")
STR_LIST = Key(is_str_list, "a string or a list of strings")
BOOL = Key(lambda v: isinstance(v, bool), "true or false")
INT = Key(lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")
POS_INT = Key(lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer")
TABLE = Key(lambda v: isinstance(v, dict), "a table")


def as_list(v: Any) -> list[str]:
    """A manifest value that may be one string or a list of them, as a list."""
    if v is None:
        return []
    return [v] if isinstance(v, str) else [str(x) for x in v]


def pin_current(ref: ModelRef, revision: str) -> ModelRef:
    """For hubs whose revision is a content digest (it cannot be fetched at will): the requested revision must
    be the one there now (a prefix of it is enough)."""
    if ref.revision != revision and not ref.revision.startswith(revision):
        raise ValueError(f"{ref.model_id}: requested revision {revision} but the file is now at {ref.revision}")
    return ref


def _as_given(params: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    return params


def _no_adhoc(repo_id: str) -> dict[str, Any]:
    raise EntryError("pass the zoo that lists it (this hub declares no entry for a single model: Hub.adhoc/lists)")


def _no_cli(values: list[str]) -> list[tuple[dict[str, Any], str]]:
    raise EntryError("has no command-line flag; list the hub's models in a zoo manifest")


@dataclass(frozen=True)
class Hub:
    """Everything lipzoo knows about one hub, declared by the hub's module as `HUB = Hub(...)`.

    keys: the manifest keys of its entries (besides the shared settings), each with its type check.
    validate(params, base_dir) -> params: check an entry as a whole (raise EntryError), make paths absolute.
    lists(params, repo_id): whether an entry with these params lists that model (settings for a re-audit).
    narrow(params, repo_id, revision) -> params: the entry narrowed so discovery resolves only that model.
    named(params) -> ids: the model ids an entry names, for failure rows when its discovery fails as a whole.
    pin(ref, revision) -> ref: apply an explicitly requested revision after discovery.
    adhoc(repo_id) -> params: an entry for a model no zoo lists (raise EntryError saying what to do instead).
    cli(values) -> [(params, name part)]: the entries `lipzoo audit --<name> VALUE ...` describes; the flag
        exists for hubs with a `flag_help` (its help line; `flag_metavar` names a value).
    empty_note() -> str: said after "matched no model" (why a listing may be empty here).
    """

    name: str
    discover: Callable[[Any], list[ModelRef | Unresolved]]
    fetch: Callable[[ModelRef, Settings], Loaded]
    keys: Mapping[str, Key] = field(default_factory=dict)
    validate: Callable[[dict[str, Any], Path | None], dict[str, Any]] = _as_given
    lists: Callable[[dict[str, Any], str], bool] = lambda params, repo_id: False
    narrow: Callable[[dict[str, Any], str, str | None], dict[str, Any]] = lambda params, repo_id, revision: params
    named: Callable[[dict[str, Any]], list[str]] = lambda params: []
    pin: Callable[[ModelRef, str], ModelRef] = pin_current
    adhoc: Callable[[str], dict[str, Any]] = _no_adhoc
    cli: Callable[[list[str]], list[tuple[dict[str, Any], str]]] = _no_cli
    empty_note: Callable[[], str] = lambda: ""
    flag_help: str = ""
    flag_metavar: str = "VALUE"


def register_hub(name: str, module: str) -> None:
    """Add a hub from outside this package: `module` (importable) declares `HUB = Hub(name=name, ...)`."""
    HUB_MODULES[name] = module


def flagged_hubs() -> list[Hub]:
    """The hubs with a command-line flag (`lipzoo audit --hf ORG`), in the registry's order."""
    return [h for h in map(get_hub, list(HUB_MODULES)) if h.flag_help]


def get_hub(name: str) -> Hub:
    """The registered hub's declaration (its module is imported on first use, then cached by Python)."""
    if name not in HUB_MODULES:
        raise HubError(f"unknown hub {name!r}; known: {', '.join(HUB_MODULES)}")
    hub = getattr(importlib.import_module(HUB_MODULES[name]), "HUB", None)
    if not isinstance(hub, Hub) or hub.name != name:
        raise HubError(f"hub module {HUB_MODULES[name]} declares no HUB = Hub(name={name!r}, ...)")
    return hub


def discover(entry: Any) -> list[ModelRef | Unresolved]:
    return get_hub(entry.hub).discover(entry)


def fetch(ref: ModelRef, settings: Settings) -> Loaded:
    """The hub's fetch, plus a note when the weights are degenerate (identically-zero weight tensors, found from
    the weights whatever the hub: flows.inits), so no audit or `lipzoo bound` reports it silently."""
    from .. import inits

    loaded = get_hub(ref.hub).fetch(ref, settings)
    zero = inits.zero_weights(loaded.target)
    if zero:
        loaded.info["notes"] = [*loaded.info.get("notes", []), inits.degenerate_note(zero)]
        loaded.info["zero_weights"] = zero
    return loaded


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
