"""The Hugging Face Hub through huggingface_hub: list an author's models, resolve commit shas, download pinned.

Honours the standard environment: HF_ENDPOINT (or an entry's `endpoint`), HF_HUB_OFFLINE (revisions are then
resolved from the local cache's refs, and only cached snapshots load), HF_HOME/HF_HUB_CACHE, and tokens
from the standard places (HF_TOKEN, the stored login) because every call passes token=None.

A repo whose config.json has an "architecture" key is a timm model and loads through timm's
``hf_hub:<repo>@<sha>`` path (the snapshot is already cached by sha, so timm's own download is a cache hit);
one whose config.json has a "model_type" is in the `transformers` format: it loads through transformers (the
optional extra `lipzoo[transformers]`; never `trust_remote_code`), bounded on its input embeddings, or is refused
with that reason when transformers is not installed; any other repo must hold a weight file, which loads like a
local checkpoint (plain MLP state dicts through lipcore's loaders, small nn.Sequential CNNs through their
``lipzoo.arch`` metadata).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from ..refs import Loaded, ModelRef, Settings, Unresolved
from . import (
    NONEMPTY_STR,
    POS_INT,
    STR,
    WEIGHT_EXTS,
    EntryError,
    Hub,
    HubError,
    Key,
    Unsupported,
    as_list,
    file_digest,
    is_str_list,
    load_weight_file,
)

_SHA = re.compile(r"^[0-9a-f]{40}$")
WEIGHT_PREFERENCE = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth", "weights.npz")
ALLOW = ["*.json", *(f"*{e}" for e in WEIGHT_EXTS)]


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _api(endpoint: str | None) -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint)


def _cache_repo_dir(repo_id: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"


def _cached_sha(repo_id: str, revision: str) -> str | None:
    ref = _cache_repo_dir(repo_id) / "refs" / revision
    return ref.read_text().strip() if ref.is_file() else None


def resolve_revision(repo_id: str, revision: str = "main", endpoint: str | None = None) -> str:
    """The commit sha `revision` (branch, tag or sha) points to now. Offline: what the cache's refs say."""
    if _SHA.match(revision):
        return revision
    if offline():
        sha = _cached_sha(repo_id, revision)
        if sha is None:
            raise LookupError(f"hf:{repo_id}: revision {revision!r} is not in the local cache "
                              "and HF_HUB_OFFLINE is set")
        return sha
    info = _api(endpoint).model_info(repo_id, revision=revision)
    if not info.sha:
        raise HubError(f"hf:{repo_id}: the hub returned no commit sha for {revision!r}")
    return str(info.sha)


def list_author(author: str, endpoint: str | None = None, search: str | None = None,
                limit: int | None = None) -> list[tuple[str, str | None]]:
    """(repo_id, sha of main) for every model of an author; offline, every cached repo of that author."""
    if offline():
        from huggingface_hub import constants

        prefix = f"models--{author}--"
        root = Path(constants.HF_HUB_CACHE)
        names = sorted(p.name[len("models--"):].replace("--", "/") for p in root.glob(prefix + "*")) \
            if root.is_dir() else []
        return [(n, _cached_sha(n, "main")) for n in names if not search or search in n][:limit]
    models = _api(endpoint).list_models(author=author, search=search, limit=limit, expand=["sha"])
    return [(m.id, m.sha) for m in models]


def _unresolved_reason(e: Exception) -> str | None:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(e, GatedRepoError):
        return "gated repository (log in with a token that has access)"
    if isinstance(e, RepositoryNotFoundError):
        return "repository not found (or private without a valid token)"
    if isinstance(e, RevisionNotFoundError):
        return "revision not found"
    if isinstance(e, LookupError):
        return str(e).split(": ", 1)[-1]
    return None


def discover(entry: Any) -> list[ModelRef | Unresolved]:
    p = entry.params
    endpoint = p.get("endpoint")
    revision = str(p.get("revision", "main"))
    out: list[ModelRef | Unresolved] = []
    seen: set[str] = set()
    if p.get("author"):
        for repo_id, sha in list_author(p["author"], endpoint, p.get("search"), p.get("limit")):
            seen.add(repo_id)
            if revision == "main" and sha:
                out.append(ModelRef("hf", repo_id, sha, None, endpoint))
            else:
                out.append(_resolve_one(repo_id, revision, endpoint))
    repos = p.get("repos") or []
    for repo_id in [repos] if isinstance(repos, str) else repos:
        if repo_id not in seen:
            seen.add(repo_id)
            out.append(_resolve_one(repo_id, revision, endpoint))
    return out


def _resolve_one(repo_id: str, revision: str, endpoint: str | None) -> ModelRef | Unresolved:
    try:
        return ModelRef("hf", repo_id, resolve_revision(repo_id, revision, endpoint), None, endpoint)
    except Exception as e:
        reason = _unresolved_reason(e)
        if reason is None:
            raise  # network trouble: the discovery task retries
        return Unresolved("hf", repo_id, reason)


def download(ref: ModelRef) -> Path:
    """The snapshot of exactly ref.revision (only weight/config files), from the cache when it is there."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

    if not are_progress_bars_disabled():
        disable_progress_bars()  # an audit has its own progress bar
    kw: dict[str, Any] = {"revision": ref.revision, "allow_patterns": ALLOW}
    if ref.location:
        kw["endpoint"] = ref.location
    try:
        return Path(snapshot_download(ref.repo_id, **kw))
    except Exception as e:
        reason = _unresolved_reason(e)
        if reason is not None:
            raise HubError(f"{ref.model_id}@{ref.revision[:12]}: {reason}") from None
        raise


def fetch(ref: ModelRef, settings: Settings) -> Loaded:
    folder = download(ref)
    cfg: dict[str, Any] = {}
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise HubError(f"{ref.model_id}: config.json is not valid JSON ({e})") from None
    if isinstance(cfg, dict) and "architecture" in cfg:
        return _fetch_timm(ref, settings, cfg)
    if isinstance(cfg, dict) and "model_type" in cfg:  # a transformers repo: never read as a bare state dict
        return _fetch_transformers(ref, settings, cfg, folder)
    weights = _weight_file(folder)
    if weights is None:
        raise HubError(f"{ref.model_id}@{ref.revision[:12]}: no weight file ({', '.join(WEIGHT_EXTS)}) in the repo")
    act = settings.activation or (cfg.get("activation") if isinstance(cfg, dict) else None)
    s = Settings(**{**settings.__dict__, "activation": act})
    loaded = load_weight_file(weights, ref.model_id, s, file_digest(weights))
    loaded.info["file"] = weights.name
    return loaded


def _weight_file(folder: Path) -> Path | None:
    for name in WEIGHT_PREFERENCE:
        if (folder / name).is_file():
            return folder / name
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in WEIGHT_EXTS)
    return files[0] if files else None


def _fetch_timm(ref: ModelRef, settings: Settings, cfg: dict[str, Any]) -> Loaded:
    import timm

    arch = str(cfg["architecture"])
    if not timm.is_model(arch):
        raise Unsupported(f"{ref.model_id}: timm architecture {arch!r} is not known to timm {timm.__version__}")
    # timm downloads through huggingface_hub's global endpoint; the sha-pinned snapshot is already cached, so
    # its hf_hub_download returns the cached file without a request (whatever HF_ENDPOINT says).
    model = timm.create_model(f"hf_hub:{ref.repo_id}@{ref.revision}", pretrained=True).eval()
    shape = settings.input_shape or tuple(model.pretrained_cfg.get("input_size") or ()) or None
    return Loaded(model, input_shape=shape, architecture=arch, weights_digest=None, info={"timm": True})


def _fetch_transformers(ref: ModelRef, settings: Settings, cfg: dict[str, Any], folder: Path) -> Loaded:
    """A transformers-format repo through transformers (local files of the pinned snapshot only, no remote code),
    as a module of its input embeddings: token ids are not a metric space, so the bound refers to inputs_embeds
    (sequence x hidden size); its attention layers are then refused by name by the graph engine."""
    mt = str(cfg.get("model_type"))
    try:
        import transformers
    except ImportError:
        raise Unsupported(f"{ref.model_id}: transformers-format repo (model_type={mt}): "
                          "install lipzoo[transformers]") from None
    try:
        model = transformers.AutoModel.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - an architecture transformers cannot build without remote code, ...
        raise Unsupported(f"{ref.model_id}: transformers-format repo (model_type={mt}) does not load without "
                          f"remote code: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    hidden = int(cfg.get("hidden_size") or cfg.get("d_model") or 0)
    shape = settings.input_shape or ((8, hidden) if hidden else None)
    return Loaded(_embeds(model.eval()), input_shape=shape, architecture=f"transformers:{mt}",
                  info={"transformers": True, "input_space": "input embeddings (inputs_embeds), lookup excluded"})


def _embeds(model: Any) -> Any:
    """model(inputs_embeds=x) -> last hidden state, as a module of x (torch imported here, on use only)."""
    from torch import nn

    class Embeds(nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.model = inner

        def forward(self, x: Any) -> Any:
            out = self.model(inputs_embeds=x)
            return out[0] if isinstance(out, tuple) else out.last_hidden_state

    return Embeds(model)


# -- what the zoo and the flows ask of this hub ---------------------------------------------------------
def _validate(params: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    if not (params.get("author") or params.get("repos")):
        raise EntryError('needs author = "org" or repos = ["org/name", ...]')
    return params


def _lists(params: dict[str, Any], repo_id: str) -> bool:
    author = params.get("author")
    return repo_id in as_list(params.get("repos")) or bool(author and repo_id.startswith(f"{author}/"))


def _narrow(params: dict[str, Any], repo_id: str, revision: str | None) -> dict[str, Any]:
    p = {k: v for k, v in params.items() if k != "author"}
    p["repos"] = [repo_id]
    if revision:
        p["revision"] = revision  # discovery resolves it to a commit sha
    return p


def _named(params: dict[str, Any]) -> list[str]:
    return ([str(params["author"])] if params.get("author") else []) + as_list(params.get("repos"))


def _cli(values: list[str]) -> list[tuple[dict[str, Any], str]]:
    """`--hf ORG` lists an author's models, `--hf ORG/NAME` one repo."""
    return [({"repos": [a]} if "/" in a else {"author": a}, f"hf:{a}") for a in values]


def _empty_note() -> str:
    return " (HF_HUB_OFFLINE: only repos in the local cache are listed)" if os.environ.get("HF_HUB_OFFLINE") else ""


HUB = Hub(
    name="hf", discover=discover, fetch=fetch,
    keys={"author": NONEMPTY_STR, "repos": Key(is_str_list, 'a list of "org/name" strings'),
          "revision": NONEMPTY_STR, "endpoint": Key(STR.check, "a URL string"), "search": STR, "limit": POS_INT},
    validate=_validate, lists=_lists, narrow=_narrow, named=_named,
    pin=lambda ref, revision: ref,  # discovery already resolved the requested revision to its sha
    adhoc=lambda repo_id: {"repos": [repo_id]}, cli=_cli, empty_note=_empty_note,
    flag_help="Hugging Face author/organisation (every model) or repo id org/name; repeatable",
    flag_metavar="AUTHOR|REPO",
)
