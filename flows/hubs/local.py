"""The local hub: a folder (or a single file) of checkpoints; a model's revision is its content digest.

repo_id is ``<folder name>/<path inside the folder>``, so two folders with a file of the same name stay
distinct models; the revision (first 16 hex digits of the sha256) changes exactly when the bytes do.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ..refs import Loaded, ModelRef, Settings, Unresolved
from . import WEIGHT_EXTS, HubError, file_digest, load_weight_file

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
