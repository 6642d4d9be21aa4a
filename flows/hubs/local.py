"""The local hub: a folder (or a single file) of checkpoints; a model's revision is its content digest.

repo_id is ``<folder name>/<path inside the folder>``, so two folders with a file of the same name stay
distinct models; the revision (first 16 hex digits of the sha256) changes exactly when the bytes do.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ..refs import Loaded, ModelRef, Settings, Unresolved
from . import (
    BOOL,
    NONEMPTY_STR,
    STR_LIST,
    WEIGHT_EXTS,
    EntryError,
    Hub,
    HubError,
    as_list,
    file_digest,
    load_weight_file,
)

REV_LEN = 16


def _patterns(entry: Any) -> list[str]:
    pat = entry.params.get("pattern")
    if pat is None:
        return ["*"]
    return [pat] if isinstance(pat, str) else list(pat)


def discover(entry: Any) -> list[ModelRef | Unresolved]:
    root = Path(entry.params["path"])
    if not root.exists():
        return [Unresolved("local", root.name, f"folder {root} not found")]
    if root.is_file():
        files, root = [root], root.parent
    else:
        walk = root.rglob("*") if entry.params.get("recursive", True) else root.glob("*")
        files = sorted(p for p in walk if p.is_file() and p.suffix.lower() in WEIGHT_EXTS)
    pats = _patterns(entry)
    out: list[ModelRef | Unresolved] = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        if not any(fnmatchcase(rel, p) or fnmatchcase(f.name, p) for p in pats):
            continue
        out.append(ModelRef("local", f"{root.name}/{rel}", file_digest(f)[:REV_LEN], None, str(f.resolve())))
    return out


def fetch(ref: ModelRef, settings: Settings) -> Loaded:
    path = Path(ref.location or "")
    if not path.is_file():
        raise HubError(f"{ref.model_id}: file {path} no longer exists")
    digest = file_digest(path)
    if digest[:REV_LEN] != ref.revision:
        raise HubError(f"{ref.model_id}: file changed since discovery (revision {digest[:REV_LEN]}, "
                       f"expected {ref.revision}); the next audit picks up the new revision")
    return load_weight_file(path, ref.model_id, settings, digest)


# -- what the zoo and the flows ask of this hub ---------------------------------------------------------
def _validate(params: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    """The path made absolute against the manifest's folder; every pattern must match a weight file."""
    if "path" not in params:
        raise EntryError('needs path = "folder of checkpoints"')
    p = Path(params["path"]).expanduser()
    params = {**params, "path": str(p if p.is_absolute() or base_dir is None else (base_dir / p).resolve())}
    _check_patterns(params)
    return params


def _check_patterns(params: dict[str, Any]) -> None:
    """Every pattern a local entry names must match at least one weight file (a typo would audit nothing and
    exit 0). No pattern (= every weight file) may match none: a watched folder can start empty. A folder that does
    not exist is left to discovery (a failed row naming it)."""
    root = Path(params["path"])
    if not root.is_dir() or params.get("pattern") is None:
        return
    walk = root.rglob("*") if params.get("recursive", True) else root.glob("*")
    rels = [(p.relative_to(root).as_posix(), p.name) for p in walk
            if p.is_file() and p.suffix.lower() in WEIGHT_EXTS]
    for pat in as_list(params.get("pattern")):
        if not any(fnmatchcase(rel, pat) or fnmatchcase(name, pat) for rel, name in rels):
            raise EntryError(f"pattern {pat!r} matches no weight file under {root} ({len(rels)} weight file(s) there)")


def _lists(params: dict[str, Any], repo_id: str) -> bool:
    root = Path(params["path"])
    rel = repo_id.split("/", 1)[1] if repo_id.startswith(root.name + "/") else None
    pats = as_list(params.get("pattern")) or ["*"]
    return rel is not None and any(fnmatchcase(rel, pat) or fnmatchcase(Path(rel).name, pat) for pat in pats)


def _cli(values: list[str]) -> list[tuple[dict[str, Any], str]]:
    """`--local DIR` (or a single file): one entry per folder, its path made absolute now."""
    for d in values:
        if not Path(d).expanduser().exists():
            raise EntryError(f"{d}: no such file or directory")
    return [({"path": str(Path(d).expanduser().resolve())}, f"local:{Path(d).name}") for d in values]


def _adhoc(repo_id: str) -> dict[str, Any]:
    raise EntryError("pass the zoo that lists its folder")  # a local model is a file in a folder a zoo names


HUB = Hub(
    name="local", discover=discover, fetch=fetch, keys={"path": NONEMPTY_STR, "pattern": STR_LIST, "recursive": BOOL},
    validate=_validate, lists=_lists,
    narrow=lambda params, repo_id, revision: {**params,
                                              "pattern": [repo_id.split("/", 1)[1] if "/" in repo_id else repo_id]},
    named=lambda params: [Path(str(params["path"])).name] if params.get("path") else [],
    adhoc=_adhoc,
    cli=_cli, flag_help="folder (or file) of checkpoints (.safetensors .pt .npz .mat); repeatable", flag_metavar="DIR",
)
