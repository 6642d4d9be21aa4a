"""The feedforward network the bound family works on: weights W_1..W_L and one activation per hidden layer.

Why a plain numpy container: every upper bound is computed in float64 from the weight matrices alone
(biases never enter a global bound), and the same object can rebuild a torch forward pass for the lower
bounds, on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..activations import Activation
from ..errors import InputError

SYMMETRIC_WIDEN = 1e-6


@dataclass
class MLP:
    """x_k = act_k(W_k x_{k-1} + b_k) for k < L, f(x) = W_L x_{L-1} + b_L.  W_k has shape (n_k, n_{k-1})."""

    weights: list[np.ndarray]
    activations: list[Activation]
    biases: list[np.ndarray | None] = field(default_factory=list)
    name: str = "model"
    assumptions: list[str] = field(default_factory=list)  # facts the bound rests on that the source did not give

    def __post_init__(self) -> None:
        self.weights = [np.asarray(w, dtype=np.float64) for w in self.weights]
        if not self.biases:
            self.biases = [None] * len(self.weights)
        self.validate()

    # -- shape -----------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.weights)

    @property
    def widths(self) -> list[int]:
        return [self.weights[0].shape[1]] + [w.shape[0] for w in self.weights]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.weights[0].shape[1],)

    @property
    def n_params(self) -> int:
        return int(sum(w.size for w in self.weights) + sum(b.size for b in self.biases if b is not None))

    def validate(self) -> None:
        """Raise InputError (one line, names the model) for anything the bounds cannot use."""
        if not self.weights:
            raise InputError(self.name, "no weight matrices")
        if len(self.activations) != len(self.weights) - 1:
            raise InputError(self.name, f"{len(self.weights)} layers need {len(self.weights) - 1} activations, "
                                        f"got {len(self.activations)}")
        if len(self.biases) != len(self.weights):
            raise InputError(self.name, f"{len(self.weights)} layers but {len(self.biases)} biases")
        for k, w in enumerate(self.weights, start=1):
            if w.ndim != 2 or 0 in w.shape:
                raise InputError(self.name, f"layer {k} weight must be a non-empty 2-D matrix, got shape {w.shape}")
            if not np.isfinite(w).all():
                bad = "NaN" if np.isnan(w).any() else "Inf"
                raise InputError(self.name, f"layer {k} weight contains {bad} values")
            if k > 1 and w.shape[1] != self.weights[k - 2].shape[0]:
                raise InputError(self.name, f"shape mismatch: layer {k - 1} outputs {self.weights[k - 2].shape[0]} "
                                            f"features but layer {k} expects {w.shape[1]}")
        for k, b in enumerate(self.biases, start=1):
            if b is None:
                continue
            b = np.asarray(b, dtype=np.float64).reshape(-1)
            if b.shape[0] != self.weights[k - 1].shape[0]:
                raise InputError(self.name, f"layer {k} bias has {b.shape[0]} entries, expected "
                                            f"{self.weights[k - 1].shape[0]}")
            if not np.isfinite(b).all():
                raise InputError(self.name, f"layer {k} bias contains NaN/Inf values")
            self.biases[k - 1] = b

    def summary(self) -> dict:
        acts = sorted({a.name for a in self.activations})
        return {
            "kind": "mlp",
            "layers": self.depth,
            "widths": self.widths,
            "activations": acts,
            "slopes": sorted({(a.alpha, a.beta) for a in self.activations}),
            "params": self.n_params,
            "input_space": "raw input (the first Linear layer's input)",
            **({"assumptions": list(self.assumptions)} if self.assumptions else {}),
        }

    # -- torch forward for the lower bounds ------------------------------------------------------------
    def torch_callable(self, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float64) -> Callable[[torch.Tensor], torch.Tensor]:
        """f as a torch function of a batch (B, n_0) -> (B, n_L), for Jacobian lower bounds.

        The converted weights are kept per (device, dtype): the lower bounds ask for float32 and float64 forms
        again and again, and converting a 20000-wide layer costs seconds each time."""
        key = (str(torch.device(device)), dtype, tuple(map(id, self.weights)), tuple(map(id, self.biases)))
        cache = self.__dict__.setdefault("_torch_weights", {})
        if key not in cache:
            cache[key] = ([torch.as_tensor(w, dtype=dtype, device=device) for w in self.weights],
                          [None if b is None else torch.as_tensor(b, dtype=dtype, device=device)
                           for b in self.biases])
        Ws, bs = cache[key]
        fns = [a.torch_fn() for a in self.activations]

        def f(x: torch.Tensor) -> torch.Tensor:
            for k, (w, b) in enumerate(zip(Ws, bs, strict=True)):
                x = x @ w.T
                if b is not None:
                    x = x + b
                if k < len(fns):
                    x = fns[k](x)
            return x

        return f

    def normalised(self) -> MLP:
        """The same function in the form every recursion variant can run on (exactly, or on a superset class):

        * an activation with alpha == beta is linear (phi(x) = alpha x + const): its two layers are multiplied
          out (a constant activation, alpha = beta = 0, makes the network constant);
        * a symmetric sector alpha = -beta < 0 has m = 0, where the recursion's Gram matrix vanishes: beta is
          widened by `SYMMETRIC_WIDEN` (relative); every activation of the narrower class is in the wider one.
        """
        Ws, bs, acts = [self.weights[0]], [self.biases[0]], []
        for k, act in enumerate(self.activations, start=1):
            W, b = self.weights[k], self.biases[k]
            if act.linear:  # W phi(W' x + b') + b = a W W' x + W (a b' + phi(0)) + b
                c0 = float(act.torch_fn()(torch.zeros(1, dtype=torch.float64))[0])
                shift = act.alpha * (bs[-1] if bs[-1] is not None else 0.0) + c0
                bs[-1] = W @ (shift * np.ones(W.shape[1]) if np.isscalar(shift) else shift) + (0.0 if b is None else b)
                Ws[-1] = act.alpha * (W @ Ws[-1])
                continue
            if act.alpha < 0 and act.alpha + act.beta == 0:
                act = Activation(act.name, act.alpha, act.beta * (1 + SYMMETRIC_WIDEN), act.fn)
            Ws.append(W)
            bs.append(b)
            acts.append(act)
        if len(Ws) == len(self.weights) and acts == list(self.activations):
            return self
        return MLP(Ws, acts, bs, self.name, list(self.assumptions))

    @classmethod
    def from_arrays(cls, weights: Sequence[np.ndarray], activation: Activation | Sequence[Activation],
                    biases: Sequence[np.ndarray | None] | None = None, name: str = "model") -> MLP:
        acts = list(activation) if isinstance(activation, list | tuple) else [activation] * (len(weights) - 1)
        return cls(list(weights), acts, list(biases) if biases is not None else [], name)
