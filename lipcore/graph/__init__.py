"""The graph engine: models traced by torch.export into an operator graph (`trace`, the closed-world op
table), bounded per spatial frequency (`engine`), with certified operator norms (`norms`), the variants
(`bounds`) and the proxy-tuned multipliers (`tune`). Imports nothing from `lipcore.mlp`."""

from .trace import GraphModel, build_graph

__all__ = ["GraphModel", "build_graph"]
