"""timm architectures by name or wildcard: pretrained weights through the HF Hub when available, otherwise a
seeded random initialisation, recorded as such in the revision.

Revisions: ``<hf_hub_id>@<sha>`` for pretrained weights (the commit of timm's weight repo), or
``random-init:seed=<n>[:reinit-zero]:timm=<version>`` (the init depends on timm's code, so its version is part
of it; `reinit_zero = true` re-draws the tensors timm zero-initialises, flows.inits, and the revision says so).
`pretrained = "auto"` (default) falls back to the random init when the hub cannot be reached or the
architecture has no weights; `true` makes that a failure instead; `false` never asks the hub.
"""

from __future__ import annotations

import re
import threading
from dataclasses import replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from .. import inits
from ..refs import Loaded, ModelRef, Settings, Unresolved
from . import BOOL, INT, STR_LIST, TABLE, EntryError, Hub, HubError, Key, Unsupported, as_list

_RANDOM = re.compile(r"^random-init:seed=(-?\d+)(:reinit-zero)?(?::timm=.*)?$")
_INIT_LOCK = threading.Lock()  # seeded init uses torch's global RNG: one model at a time


def _pretrained_flag(v: Any) -> str:
    if isinstance(v, str):
        v = v.lower()
    if v in (True, "true", "yes", 1):
        return "true"
    if v in (False, "false", "no", 0):
        return "false"
    if v in (None, "auto"):
        return "auto"
    raise HubError(f"pretrained must be true, false or \"auto\", got {v!r}")


def _timm_version() -> str:
    """timm's version without importing timm (importing it registers ~1400 architectures: seconds)."""
    from importlib.metadata import version

    return version("timm")


def random_revision(seed: int, reinit_zero: bool = False) -> str:
    """The revision of a seeded init; `reinit_zero`: its identically-zero weight tensors re-drawn (flows.inits)."""
    return f"random-init:seed={int(seed)}{':reinit-zero' if reinit_zero else ''}:timm={_timm_version()}"


def pretrained_source(name: str) -> str | None:
    """The HF repo holding `name`'s default pretrained weights, or None when timm knows of none."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:
        cfg = None
    if cfg is None:
        return None
    hub_id = getattr(cfg, "hf_hub_id", None)
    return str(hub_id) if hub_id else None


def expand(patterns: list[str], exclude: list[str] | None = None,
           check: bool = True) -> tuple[list[str], list[Unresolved]]:
    """Names matching the patterns; explicit names are checked against timm's registry only when `check`
    (otherwise an unknown name is refused when its task fetches it, and discovery need not import timm)."""
    names: list[str] = []
    bad: list[Unresolved] = []
    for pat in patterns:
        if not check and not any(ch in pat for ch in "*?["):
            names.append(pat)
            continue
        import timm

        if any(ch in pat for ch in "*?["):
            found = timm.list_models(pat, exclude_filters=exclude or ())
            if not found:
                bad.append(Unresolved("timm", pat, "no timm architecture matches this pattern"))
            names += found
        elif timm.is_model(pat):
            names.append(pat)
        else:
            bad.append(Unresolved("timm", pat, f"unknown timm architecture (timm {timm.__version__})"))
    return list(dict.fromkeys(names)), bad


def discover(entry: Any) -> list[ModelRef | Unresolved]:
    from . import hf

    p = entry.params
    pats = p["models"]
    mode = _pretrained_flag(p.get("pretrained", "auto"))
    names, out = expand([pats] if isinstance(pats, str) else list(pats), p.get("exclude"), check=mode != "false")
    seed = int(p.get("seed", 0))
    refs: list[ModelRef | Unresolved] = list(out)
    for name in names:
        rev = None
        if mode != "false":
            src = pretrained_source(name)
            why = "no pretrained weights known to timm"
            if src:
                try:
                    rev = f"{src}@{hf.resolve_revision(src)}"
                except Exception as e:  # offline, unreachable or missing: fall back (auto) or fail (true)
                    why = f"pretrained weights unavailable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            if rev is None and mode == "true":
                refs.append(Unresolved("timm", name, why))
                continue
        refs.append(ModelRef("timm", name, rev or random_revision(seed, bool(p.get("reinit_zero"))), name))
    return refs


def fetch(ref: ModelRef, settings: Settings) -> Loaded:
    import timm
    import torch

    if not timm.is_model(ref.repo_id):
        raise Unsupported(f"{ref.model_id}: unknown timm architecture (timm {timm.__version__})")
    m = _RANDOM.match(ref.revision)
    kwargs = dict(settings.hub_options.get("model_args") or {})
    if m:
        with _INIT_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(m[1]))
            model = timm.create_model(ref.repo_id, pretrained=False, **kwargs)
            redrawn = inits.reinit_zero(model) if m[2] else []  # same RNG stream: the revision names the weights
        info: dict[str, Any] = {"init": "random", "seed": int(m[1])}
        if redrawn:
            info["reinit_zero"] = redrawn
    else:
        src, _, sha = ref.revision.rpartition("@")
        if not src:
            raise HubError(f"{ref.model_id}: unrecognised revision {ref.revision!r}")
        from . import hf

        hf.download(ModelRef("hf", src, sha))  # pinned snapshot into the cache (no-op when cached)
        model = timm.create_model(f"hf_hub:{src}@{sha}", pretrained=True, **kwargs)
        info = {"init": "pretrained", "hf_hub_id": src}
        if settings.hub_options.get("reinit_zero"):
            info["notes"] = ["reinit_zero re-draws random inits only: these pretrained weights are bounded as they are"]
    model.eval()
    shape = settings.input_shape or tuple(model.pretrained_cfg.get("input_size") or ()) or None
    return Loaded(model, input_shape=shape, architecture=ref.repo_id, info=info)


# -- what the zoo and the flows ask of this hub ---------------------------------------------------------
def _validate(params: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    if not params.get("models"):
        raise EntryError('needs models = ["name-or-wildcard", ...]')
    return params


def _narrow(params: dict[str, Any], repo_id: str, revision: str | None) -> dict[str, Any]:
    p = {**params, "models": [repo_id]}
    if revision:
        p["pretrained"] = False  # the pinned revision is applied after discovery; don't ask the hub
    return p


HUB = Hub(
    name="timm", discover=discover, fetch=fetch,
    keys={"models": Key(lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                        "a list of timm names or wildcards"),
          "exclude": STR_LIST, "pretrained": Key(lambda v: isinstance(v, bool) or v == "auto", 'true, false or "auto"'),
          "seed": INT, "model_args": TABLE, "reinit_zero": BOOL},
    validate=_validate,
    lists=lambda params, repo_id: any(fnmatchcase(repo_id, pat) for pat in as_list(params.get("models"))),
    narrow=_narrow, named=lambda params: as_list(params.get("models")),
    pin=lambda ref, revision: replace(ref, revision=revision),  # a timm revision names its weights: fetchable
    adhoc=lambda repo_id: {"models": [repo_id], "pretrained": "auto"},
    cli=lambda values: [({"models": list(values)}, " ".join(f"timm:{v}" for v in values))],
    flag_help="timm architecture or wildcard; repeatable", flag_metavar="PATTERN",
)
