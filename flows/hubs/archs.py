"""Small architectures described by data: a JSON layer list stored in a checkpoint's metadata.

Why: a safetensors file holds tensors, not code. A CNN trained by `deploy/zoos/make_demo.py` (or anyone's
small nn.Sequential) records its layer list under the metadata key ``lipzoo.arch``; the hubs rebuild the
module from it and load the state dict strictly, so no pickled code is ever executed. Plain MLP state
dicts need none of this: they go through lipcore's loaders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

ARCH_KEY = "lipzoo.arch"
INPUT_SHAPE_KEY = "lipzoo.input_shape"
TIMM_ARCH_KEY = "timm.arch"

# layer name -> torch.nn class name; kwargs go to the constructor as given. Activations (relu, leaky_relu, gelu,
# softplus, ...) come from lipcore's activation table, so every activation lipzoo bounds can be described.
_LAYERS = {
    "linear": "Linear", "conv1d": "Conv1d", "conv2d": "Conv2d", "flatten": "Flatten", "maxpool2d": "MaxPool2d",
    "avgpool2d": "AvgPool2d", "batchnorm1d": "BatchNorm1d", "batchnorm2d": "BatchNorm2d", "dropout": "Dropout",
    "identity": "Identity",
}


def _layer_class(name: str) -> Any:
    from torch import nn

    from lipcore.activations import module_class

    if name in _LAYERS:
        return getattr(nn, _LAYERS[name])
    return module_class(name)


class ArchError(ValueError):
    """The architecture description cannot be turned into a module."""


def spec_json(layers: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Serialise a layer list, e.g. [("conv2d", {"in_channels": 1, ...}), ("relu", {})]."""
    return json.dumps({"kind": "sequential", "layers": [[name, dict(kw)] for name, kw in layers]})


def build(spec: str | Mapping[str, Any]) -> Any:
    """Rebuild the torch.nn.Sequential a spec describes (weights are loaded by the caller)."""
    from torch import nn

    d = json.loads(spec) if isinstance(spec, str) else dict(spec)
    if d.get("kind") != "sequential":
        raise ArchError(f"unsupported architecture kind {d.get('kind')!r} (only 'sequential')")
    mods = []
    for item in d.get("layers", []):
        name, kw = item[0], (item[1] if len(item) > 1 else {})
        cls = _layer_class(str(name))
        if cls is None:
            raise ArchError(f"unsupported layer {name!r} in the architecture description")
        mods.append(cls(**kw))
    if not mods:
        raise ArchError("empty architecture description")
    return nn.Sequential(*mods)


def module_from_state(metadata: Mapping[str, str], state: Mapping[str, Any], source: str) -> Any:
    """Build the module a checkpoint's metadata names (lipzoo.arch or timm.arch) and load `state` strictly."""
    if ARCH_KEY in metadata:
        model = build(metadata[ARCH_KEY])
    elif TIMM_ARCH_KEY in metadata:
        import timm

        kw = json.loads(metadata.get("timm.model_args", "{}"))
        model = timm.create_model(metadata[TIMM_ARCH_KEY], pretrained=False, **kw)
    else:
        raise ArchError(f"{source}: no architecture in the checkpoint metadata")
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as e:
        raise ArchError(f"{source}: weights do not match the architecture: {str(e).splitlines()[0]}") from None
    return model.eval()


def input_shape_from(metadata: Mapping[str, str]) -> tuple[int, ...] | None:
    raw = metadata.get(INPUT_SHAPE_KEY)
    return tuple(int(v) for v in json.loads(raw)) if raw else None
