"""The ECLipsE benchmark MLPs (DESIGN §5) as a hub: generated on the fly, revision = weight digest.

Why generated and not committed: the nets are defined by their generator (lipcore.mlp.benchnets) in float64;
generating them is exact and takes milliseconds, and the digest still changes if the generator ever does.
"""

from __future__ import annotations

import hashlib
import re
import threading
from pathlib import Path
from typing import Any

from ..refs import Loaded, ModelRef, Settings, Unresolved
from . import BOOL, STR_LIST, EntryError, Hub, HubError, as_list

_NET = re.compile(r"^lyr(\d+)n(\d+)$")
_LOCK = threading.Lock()  # the upstream generator seeds numpy's *global* RNG: one generation at a time


def _weights(layers: int, width: int, legacy: bool) -> tuple[list[Any], str]:
    from lipcore.mlp.benchnets import eclipse_weights

    with _LOCK:
        ws = eclipse_weights(layers, width, legacy=legacy)
    h = hashlib.sha256()
    for w in ws:
        h.update(w.tobytes())
    return ws, h.hexdigest()


def _repo(name: str, legacy: bool, activation: str) -> str:
    act = "" if activation == "relu" else f"-{activation.replace(':', '')}"
    return f"eclipse{'-legacy' if legacy else ''}/{name}{act}"


def discover(entry: Any) -> list[ModelRef | Unresolved]:
    legacy = bool(entry.params.get("legacy", False))
    activation = entry.settings.activation or "relu"
    nets = entry.params["nets"]
    out: list[ModelRef | Unresolved] = []
    for name in [nets] if isinstance(nets, str) else nets:
        m = _NET.match(str(name))
        if not m:
            out.append(Unresolved("bench", str(name), "benchmark nets are named lyr<layers>n<width>, e.g. lyr10n80"))
            continue
        _, digest = _weights(int(m[1]), int(m[2]), legacy)
        out.append(ModelRef("bench", _repo(str(name), legacy, activation), digest[:16], "mlp",
                            f"{name}|{int(legacy)}|{activation}"))
    return out


def fetch(ref: ModelRef, settings: Settings) -> Loaded:
    from lipcore import MLP, get_activation

    name, legacy, activation = (ref.location or "").split("|")
    m = _NET.match(name)
    if not m:
        raise HubError(f"{ref.model_id}: not a benchmark net reference")
    ws, digest = _weights(int(m[1]), int(m[2]), legacy == "1")
    if digest[:16] != ref.revision:
        raise HubError(f"{ref.model_id}: generator output changed (revision {digest[:16]}, expected {ref.revision})")
    net = MLP.from_arrays(ws, get_activation(activation), name=ref.model_id)
    return Loaded(net, input_shape=(ws[0].shape[1],), activation=activation, architecture="mlp", weights_digest=digest)


# -- what the zoo and the flows ask of this hub ---------------------------------------------------------
def _validate(params: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    if not params.get("nets"):
        raise EntryError('needs nets = ["lyr2n20", ...]')
    return params


def _net_name(repo_id: str) -> str:
    """eclipse[-legacy]/lyr2n20[-act] -> lyr2n20."""
    return repo_id.split("/")[-1].split("-")[0]


HUB = Hub(
    name="bench", discover=discover, fetch=fetch, keys={"nets": STR_LIST, "legacy": BOOL},
    validate=_validate, lists=lambda params, repo_id: repo_id.split("/")[-1] in as_list(params.get("nets")),
    narrow=lambda params, repo_id, revision: {**params, "nets": [_net_name(repo_id)],
                                              "legacy": repo_id.startswith("eclipse-legacy/")},
    named=lambda params: as_list(params.get("nets")), adhoc=lambda repo_id: {"nets": [_net_name(repo_id)]},
)
