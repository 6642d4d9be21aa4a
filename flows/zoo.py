"""Zoo manifests: which models to audit, from which hubs, with which bound variants, on which device.

A manifest is TOML (deploy/zoos/*.toml) or the same structure as a dict:

    name = "my-zoo"
    device = "auto"                   # auto | cpu | cuda (the CLI's --device overrides)
    budget_s = 120                    # per-model time budget, enforced inside lipcore plus a hard stop
    variants = ["naive", "eclipse-fast", "sh-combined", "lower-sampled", "lower-ascent"]

    [[models]]
    hub = "hf"                        # the Hugging Face Hub
    author = "my-org"                 # every model of an author/organisation ...
    repos = ["my-org/mlp-a"]          # ... and/or explicit repos; revision = "main" (or a sha) pins one
    activation = "relu"               # for plain MLP state dicts without an 'activation' metadata key

    [[models]]
    hub = "timm"
    models = ["test_resnet", "resnet1*"]   # names or timm.list_models wildcards
    pretrained = "auto"               # true | false | "auto" (hub weights when reachable, else seeded init)
    seed = 0
    input_shape = [3, 64, 64]

    [[models]]
    hub = "local"
    path = "checkpoints"              # relative to the manifest file
    pattern = ["*.safetensors", "*.npz"]

    [[models]]
    hub = "bench"                     # the ECLipsE benchmark MLPs, generated (lipcore.mlp.benchnets)
    nets = ["lyr2n20", "lyr10n80"]

Every entry may override variants, device, budget_s, input_shape, activation, slope and options
(per-variant lipcore options, e.g. options = { optimized = { steps = 200 } }).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .hubs import HUB_MODULES, EntryError, get_hub
from .refs import Settings

DEMO_MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "zoos" / "demo.toml"

# what an audit computes when neither the manifest nor the CLI names variants: every closed-form upper
# bound worth having plus both lower bounds; the SDP and the optimizer are opt-in (cost).
DEFAULT_AUDIT_VARIANTS: tuple[str, ...] = ("naive", "eclipse-fast", "sh-combined", "lower-sampled", "lower-ascent")

# each hub's own manifest keys are declared by the hub (`flows.hubs.Hub.keys`), with their types
# certificate keys (issue 14, flows/certify.py): eval = "builtin:digits" | "x.npz" | "folder/" (labels.csv),
# preprocess = {mean, std} applied before the model, eps = [...], certify_variants = [...] (per-variant certificates)
CERTIFY_KEYS = {"eval", "preprocess", "eps", "certify_variants"}
SETTING_KEYS = {"variants", "device", "budget_s", "input_shape", "activation", "slope", "options"} | CERTIFY_KEYS
TOP_KEYS = {"name", "description", "device", "budget_s", "variants", "options", "models"} | CERTIFY_KEYS
DEVICES = ("auto", "cpu", "cuda")


class ZooError(ValueError):
    """A manifest that cannot be used; the message is one line and names the entry."""


# the type every shared key must have (checked before any work): a name -> (predicate, what it must be)
def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


KEY_TYPES: dict[str, tuple[Any, str]] = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "label": (lambda v: isinstance(v, str), "a string"),
    "hub": (lambda v: isinstance(v, str), "a string"),
    "activation": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "slope": (lambda v: isinstance(v, list | tuple) and len(v) == 2 and all(_is_num(x) for x in v),
              "[alpha, beta] (two numbers)"),
    "budget_s": (lambda v: _is_num(v) and v > 0, "a positive number of seconds"),
    "device": (lambda v: v in DEVICES, "one of " + ", ".join(DEVICES)),
    "options": (lambda v: isinstance(v, dict), "a table of per-variant tables"),
}


def _check_types(raw: dict[str, Any], where: str, hub_keys: dict[str, Any] | None = None) -> None:
    """Every key's type: the shared keys' from KEY_TYPES, an entry's hub keys' from its hub's declaration."""
    for k, v in raw.items():
        key = (hub_keys or {}).get(k)
        rule = (key.check, key.must_be) if key is not None else KEY_TYPES.get(k)
        if rule is not None and not rule[0](v):
            raise ZooError(f"{where}: {k} must be {rule[1]}, got {v!r}")


def _close(word: str, known: Any) -> str:
    from difflib import get_close_matches

    m = get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {m[0]!r}?)" if m else ""


def variant_option_keys(variant: str) -> frozenset[str]:
    """The option keys `options.<variant>` may set: the ones the variant declares in lipcore's registry."""
    from lipcore import VARIANTS

    spec = VARIANTS.get(variant)
    return frozenset(spec.options) if spec is not None else frozenset()


def _check_options(opts: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    from lipcore.variants import option_errors

    errs = option_errors(opts)
    if errs:
        raise ZooError(f"{where}: {errs[0]}")
    return {vid: dict(table) for vid, table in opts.items()}


@dataclass
class Entry:
    hub: str
    params: dict[str, Any]
    settings: Settings
    label: str

    def hub_param(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)


@dataclass
class Zoo:
    name: str
    entries: list[Entry] = field(default_factory=list)
    source: str | None = None
    description: str = ""


def demo_path() -> Path:
    return DEMO_MANIFEST


def _check_variants(vs: Any, where: str) -> tuple[str, ...]:
    from lipcore import VARIANTS

    if isinstance(vs, str):
        vs = [vs]
    if not isinstance(vs, list | tuple) or not vs:
        raise ZooError(f"{where}: variants must be a non-empty list of variant ids")
    unknown = [v for v in vs if v not in VARIANTS]
    if unknown:
        raise ZooError(f"{where}: unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    return tuple(dict.fromkeys(vs))


def _check_device(d: Any, where: str) -> str:
    if d not in DEVICES:
        raise ZooError(f"{where}: device must be one of {', '.join(DEVICES)}, got {d!r}")
    return str(d)


def _settings(raw: dict[str, Any], base: Settings, where: str) -> Settings:
    s = replace(base, options=dict(base.options), hub_options={})
    if "variants" in raw:
        s.variants = _check_variants(raw["variants"], where)
    if "device" in raw:
        s.device = _check_device(raw["device"], where)
    if "budget_s" in raw:
        b = raw["budget_s"]
        if not isinstance(b, int | float) or b <= 0:
            raise ZooError(f"{where}: budget_s must be a positive number of seconds")
        s.budget_s = float(b)
    if "input_shape" in raw:
        shp = raw["input_shape"]
        if not isinstance(shp, list | tuple) or not all(isinstance(v, int) and v > 0 for v in shp):
            raise ZooError(f"{where}: input_shape must be a list of positive integers (without the batch dim)")
        s.input_shape = tuple(shp)
    if "activation" in raw:
        s.activation = str(raw["activation"])
    if "slope" in raw:
        sl = raw["slope"]
        if not isinstance(sl, list | tuple) or len(sl) != 2:
            raise ZooError(f"{where}: slope must be [alpha, beta]")
        s.slope = (float(sl[0]), float(sl[1]))
    if CERTIFY_KEYS & set(raw):
        s.certify = {**base.certify, **_certify_settings(raw, where)}
    if "options" in raw:
        if not isinstance(raw["options"], dict):
            raise ZooError(f"{where}: options must be a table of per-variant tables")
        s.options.update(_check_options(raw["options"], where))
    return s


def _certify_settings(raw: dict[str, Any], where: str) -> dict[str, Any]:
    from .certify import EvalError, check_eps, preprocess_spec

    out: dict[str, Any] = {}
    try:
        if "eval" in raw:
            if not isinstance(raw["eval"], str) or not raw["eval"]:
                raise EvalError('eval must be "builtin:NAME", a .npz path or a folder with labels.csv')
            out["eval"] = raw["eval"]
        if "preprocess" in raw:
            out["preprocess"] = preprocess_spec(raw["preprocess"])
        if "eps" in raw:
            out["eps"] = check_eps(raw["eps"])
        if "certify_variants" in raw:
            out["certify_variants"] = _check_variants(raw["certify_variants"], where)
    except EvalError as e:
        raise ZooError(f"{where}: {e}") from None
    return out


def parse_zoo(data: dict[str, Any], source: str | None = None, base_dir: Path | None = None) -> Zoo:
    """Validate a manifest dict into a Zoo; local paths are made absolute against `base_dir`."""
    name = str(data.get("name") or (Path(source).stem if source else "zoo"))
    where0 = f"zoo {name!r}"
    extra = set(data) - TOP_KEYS
    if extra:
        k = sorted(extra)[0]
        raise ZooError(f"{where0}: unknown key(s) {', '.join(sorted(extra))}{_close(k, TOP_KEYS)}")
    _check_types({k: v for k, v in data.items() if k != "models"}, where0)
    base = Settings(variants=DEFAULT_AUDIT_VARIANTS)
    base = _settings({k: data[k] for k in SETTING_KEYS & set(data)}, base, where0)
    models = data.get("models") or []
    if not isinstance(models, list) or not models:
        raise ZooError(f"{where0}: needs at least one [[models]] entry")
    entries = []
    for i, raw in enumerate(models, start=1):
        if not isinstance(raw, dict):
            raise ZooError(f"{where0}: models entry {i} must be a table")
        hub = raw.get("hub")
        where = f"{where0}, models entry {i} (hub {hub!r})"
        params = _hub_params(raw, where, base_dir)
        label = str(raw.get("label") or f"{hub}#{i}")
        entries.append(Entry(hub, params, _settings(raw, base, where), label))
    return Zoo(name=name, entries=entries, source=source, description=str(data.get("description", "")))


def _hub_params(raw: dict[str, Any], where: str, base_dir: Path | None) -> dict[str, Any]:
    """An entry's hub keys, checked by its hub: only the keys it declares (plus the shared settings), each of
    the declared type, then the entry as a whole (required keys, paths made absolute against `base_dir`)."""
    hub_name = raw.get("hub")
    if not isinstance(hub_name, str) or hub_name not in HUB_MODULES:
        raise ZooError(f"{where}: hub must be one of {', '.join(HUB_MODULES)}")
    hub = get_hub(hub_name)
    allowed = set(hub.keys) | SETTING_KEYS | {"hub", "label"}
    unknown = set(raw) - allowed
    if unknown:
        k = sorted(unknown)[0]
        raise ZooError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}{_close(k, allowed)}")
    _check_types(raw, where, dict(hub.keys))
    try:
        return hub.validate({k: raw[k] for k in hub.keys if k in raw}, base_dir)
    except EntryError as e:
        raise ZooError(f"{where}: {e}") from None


def load_zoo(zoo: str | Path | dict[str, Any] | Zoo | None = None) -> Zoo:
    """A Zoo from a manifest path, a dict, a Zoo, or None (the embedded demo zoo)."""
    if isinstance(zoo, Zoo):
        return zoo
    if isinstance(zoo, dict):
        return parse_zoo(zoo, source=None, base_dir=Path.cwd())
    path = Path(zoo) if zoo is not None else DEMO_MANIFEST
    if not path.is_file():
        raise ZooError(f"zoo manifest {path} not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ZooError(f"zoo manifest {path}: invalid TOML: {e}") from None
    return parse_zoo(data, source=str(path), base_dir=path.resolve().parent)


def override(zoo: Zoo, *, variants: Any = None, device: str | None = None, budget_s: float | None = None) -> Zoo:
    """Apply the CLI's/caller's overrides to every entry (a new Zoo; the input is not changed)."""
    if variants is None and device in (None, "") and budget_s is None:
        return zoo
    raw: dict[str, Any] = {}
    if variants is not None:
        raw["variants"] = list(variants) if not isinstance(variants, str) else [variants]
    if device not in (None, ""):
        raw["device"] = device
    if budget_s is not None:
        raw["budget_s"] = budget_s
    entries = [Entry(e.hub, e.params, _settings(raw, e.settings, f"zoo {zoo.name!r}"), e.label) for e in zoo.entries]
    return Zoo(zoo.name, entries, zoo.source, zoo.description)


def adhoc_zoo(*, activation: str | None = None, input_shape: list[int] | None = None,
              **given: Any) -> dict[str, Any]:
    """The manifest the CLI's per-hub flags describe: `adhoc_zoo(hf=["org"], timm=["resnet1*"], local=[dir])`.

    A keyword naming a registered hub gives that hub's flag values (the hub turns them into entries); any other
    keyword is a manifest key of some hub (endpoint = ..., pretrained = ...) set on every entry of the hubs
    that declare it (None = not given)."""
    sources = {k: list(v) for k, v in given.items() if k in HUB_MODULES and v}
    opts = {k: v for k, v in given.items() if k not in HUB_MODULES and v is not None}
    hubs = [get_hub(name) for name in HUB_MODULES]
    unread = set(opts) - {k for h in hubs for k in h.keys}
    if unread:
        raise TypeError(f"adhoc_zoo: {', '.join(sorted(unread))} is neither a hub nor a hub's manifest key")
    extra: dict[str, Any] = {}
    if activation:
        extra["activation"] = activation
    if input_shape:
        extra["input_shape"] = list(input_shape)
    models: list[dict[str, Any]] = []
    parts: list[str] = []
    for hub in hubs:  # the registry's order
        if hub.name not in sources:
            continue
        try:
            made = hub.cli(sources[hub.name])
        except EntryError as e:
            raise ZooError(f"--{hub.name} {e}") from None
        for params, part in made:
            models.append({"hub": hub.name, **params, **{k: v for k, v in opts.items() if k in hub.keys}, **extra})
            parts.append(part)
    return {"name": " ".join(parts) or "adhoc", "models": models}


def entry_for(zoo: Zoo, hub: str, repo_id: str) -> Entry | None:
    """The entry of `zoo` a model belongs to (for settings when one model is re-audited), or None."""
    for e in zoo.entries:
        if e.hub == hub and get_hub(hub).lists(e.params, repo_id):
            return e
    return None
