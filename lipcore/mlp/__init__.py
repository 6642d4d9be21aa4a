"""The MLP engine: Linear/activation chains as weight lists (`MLP`), their loaders, the closed-form recursion
family, the SDP-free optimiser and the LipSDP/ECLipsE SDP baselines. Imports nothing from `lipcore.graph`."""

from .network import MLP

__all__ = ["MLP"]
