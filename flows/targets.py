"""Targets: one string naming one model, resolved and fetched by the same hub code an audit runs.

    weights.npz | model.safetensors | net.pt    a weight file (the local hub: revision = content digest)
    timm:NAME[@REV]                             a timm architecture (pretrained when reachable, else seeded init)
    hf:ORG/REPO[@REV]                           a Hugging Face Hub repo at a branch, tag or commit
    package.module:function                     a Python factory returning a torch.nn.Module

Why one module: `lipzoo bound TARGET` must bound exactly what an audit of a zoo entry for the same model bounds.
A hub target becomes that zoo entry (the hub's own ad-hoc entry, validated by `parse_zoo`), is narrowed and
pinned by the hub's declaration, discovered and fetched through `flows.hubs`, like `audit_model` does. A factory
is imported only because the user named it; it is not a hub (nothing to discover, no revision but its weights).
"""

from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .refs import Loaded, ModelRef, Settings

_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
PREFIXES = {"timm": "timm", "hf": "hf"}


class TargetError(ValueError):
    """A target that cannot be resolved: one line naming the target and the problem."""


@dataclass(frozen=True)
class Target:
    """A parsed target string. kind: file | timm | hf | factory; name: path, timm name, repo id or mod:fn."""

    kind: str
    name: str
    revision: str | None = None
    text: str = ""


@dataclass
class Resolved:
    """What a target became: the hub's reference, the fetched weights, and what the user must be told."""

    target: Target
    ref: ModelRef
    loaded: Loaded
    notes: list[str] = field(default_factory=list)  # user-visible (fallback to random init, degenerate weights)

    @property
    def label(self) -> str:
        return Path(self.target.name).name if self.target.kind == "file" else self.target.text


def parse_target(text: str) -> Target:
    """Read a target string (see the module doc); a path that exists is always a file."""
    raw = text.strip()
    prefix, colon, rest = raw.partition(":")
    if colon and prefix in PREFIXES and not Path(raw).exists():
        name, _, rev = rest.partition("@")
        if not name:
            raise TargetError(f"{raw}: expected {prefix}:NAME[@REVISION]")
        if prefix == "hf" and name.count("/") != 1:
            raise TargetError(f"{raw}: expected hf:ORG/REPO[@REVISION]")
        return Target(prefix, name, rev or None, raw)
    if Path(raw).expanduser().exists():
        return Target("file", str(Path(raw).expanduser()), None, raw)
    if _FACTORY.match(raw):
        return Target("factory", raw, None, raw)
    if Path(raw).suffix:
        raise TargetError(f"{raw}: file not found")
    raise TargetError(f"{raw}: no such file, and not timm:NAME[@REV], hf:ORG/REPO[@REV] or package.module:function")


def _entry(t: Target, hub: str, params: dict[str, Any], settings: dict[str, Any]) -> Any:
    """The zoo entry for one model, validated by the manifest code (same keys, same checks as a zoo file)."""
    from .zoo import ZooError, parse_zoo

    try:
        return parse_zoo({"name": "bound", "models": [{"hub": hub, **params, **settings}]},
                         base_dir=Path.cwd()).entries[0]
    except ZooError as e:
        raise TargetError(f"{t.text}: {re.sub(r'^zoo .bound., models entry 1 [(][^)]*[)]: ', '', str(e))}") from None


def _manifest_settings(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if settings.input_shape:
        out["input_shape"] = list(settings.input_shape)
    if settings.activation:
        out["activation"] = settings.activation
    return out


def hub_params(t: Target, *, seed: int = 0, reinit_zero: bool = False, pretrained: Any = "auto",
               endpoint: str | None = None) -> dict[str, Any]:
    """The zoo entry's hub keys for a target: the hub's ad-hoc entry, plus what the options ask for."""
    from .hubs import get_hub

    if t.kind == "file":
        return {"path": str(Path(t.name).resolve())}
    params = dict(get_hub(t.kind).adhoc(t.name))
    if t.kind == "timm":
        params.update({"pretrained": pretrained, "seed": int(seed)})
        if reinit_zero:
            params["reinit_zero"] = True
    if t.kind == "hf" and endpoint:
        params["endpoint"] = endpoint
    return params


def resolve(t: Target, settings: Settings, **options: Any) -> Resolved:
    """Discover and fetch one target with the hubs' code (an audit's entry, narrowed and pinned the same way).

    Raises TargetError for a target that cannot be resolved, the hubs' HubError/Unsupported when fetching fails."""
    if t.kind == "factory":
        return _factory(t, settings, seed=int(options.get("seed", 0)),
                        reinit=bool(options.get("reinit_zero", False)))
    from . import hubs
    from .refs import Unresolved

    hub = "local" if t.kind == "file" else t.kind
    entry = _entry(t, hub, hub_params(t, **options), _manifest_settings(settings))
    the_hub = hubs.get_hub(hub)
    params = dict(entry.params)
    if t.kind != "file":
        params = the_hub.narrow(params, t.name, t.revision)
    found = hubs.discover(replace(entry, params=params))
    refs = [r for r in found if isinstance(r, ModelRef) and (t.kind == "file" or r.repo_id == t.name)]
    if not refs:
        why = next((r.reason for r in found if isinstance(r, Unresolved)), f"not found by the {hub} hub")
        raise TargetError(f"{t.text}: {why}")
    ref = refs[0]
    if t.revision is not None:
        rev = t.revision
        if options.get("reinit_zero") and rev.startswith("random-init:") and ":reinit-zero" not in rev:
            rev = re.sub(r"^(random-init:seed=-?\d+)", r"\1:reinit-zero", rev)  # the option, on a pinned init
        ref = the_hub.pin(ref, rev)
    s = replace(entry.settings, device=settings.device, hub_options=dict(params))  # as the audit builds its job
    try:
        loaded = hubs.fetch(ref, s)
    except hubs.HubError as e:
        if t.kind != "file":
            raise
        raise type(e)(str(e).replace(ref.model_id, t.text)) from None  # name the file as the user gave it
    notes = [n for n in (_fallback_note(t, ref, params),) if n]
    return Resolved(t, ref, loaded, notes + list(loaded.info.get("notes") or []))


def _fallback_note(t: Target, ref: ModelRef, params: dict[str, Any]) -> str | None:
    """One line when a timm model falls back to timm's seeded random init (the revision records it too)."""
    if t.kind != "timm" or not ref.revision.startswith("random-init"):
        return None
    if str(params.get("pretrained")).lower() == "false" or t.revision:
        return f"{t.text}: timm random init as asked ({ref.revision}), not pretrained weights"
    from .hubs import timm_hub

    src = timm_hub.pretrained_source(t.name)
    why = (f"pretrained weights {src} unavailable (offline or unreachable hub)" if src
           else "timm knows no pretrained weights for it")
    return f"{t.text}: {why}; bounding timm's seeded random init ({ref.revision})"


def _factory(t: Target, settings: Settings, seed: int, reinit: bool) -> Resolved:
    """Import `package.module`, call `function()` under a seeded RNG; it must return a torch.nn.Module."""
    import torch
    from torch import nn

    from . import inits

    mod_name, _, fn_name = t.name.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's factory's problem, in one line
        raise TargetError(f"{t.text}: cannot import {mod_name} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise TargetError(f"{t.text}: {mod_name} has no function {fn_name!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = fn()
        except Exception as e:  # noqa: BLE001
            raise TargetError(f"{t.text}: the factory raised {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
        if not isinstance(model, nn.Module):
            raise TargetError(f"{t.text}: returned {type(model).__name__}, not a torch.nn.Module")
        redrawn = inits.reinit_zero(model) if reinit else []
    model.eval()
    digest = _state_digest(model)
    info: dict[str, Any] = {"init": "factory", "seed": seed}
    if redrawn:
        info["reinit_zero"] = redrawn
    note = inits.degenerate_note(inits.zero_weights(model))
    if note:
        info["notes"] = [note]
    shape = settings.input_shape or _module_input_shape(model)
    loaded = Loaded(model, input_shape=shape, architecture=type(model).__name__, weights_digest=digest, info=info)
    ref = ModelRef("factory", t.name, digest[:16] + (":reinit-zero" if redrawn else ""), type(model).__name__)
    return Resolved(t, ref, loaded, list(info.get("notes") or []))


def _state_digest(model: Any) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _module_input_shape(model: Any) -> tuple[int, ...] | None:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return tuple(int(s) for s in cfg["input_size"])
    return None
