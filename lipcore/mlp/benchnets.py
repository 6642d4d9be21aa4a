"""The ECLipsE random-network benchmark (docs/theory.md §8), rebuilt bit-for-bit from its published generator.

Why here: tests, benchmarks and the SDP baselines all need the same reference nets, and the eclipse-nn package
does not ship its benchmark generator (its `generate_random_weights` is a torch demo with other seeds). Two
generators exist upstream and they give very different nets:

* current (github YuezhuXu/ECLipsE `ECLipsE_paper/generate_random_weights.py`): numpy seed
  ``width*7 + layers*13``; per layer the target spectral norm ``U[0.4, 1.8]`` is drawn *before* the matrix,
  ``W = randn(out, in)`` rescaled to it; no bias draws.
* legacy (the NeurIPS-2024 data behind the ECLipsE figure): seed ``rd*77 + width*7 + layers*13``,
  ``W = rand(out, in)`` (non-negative) rescaled the same way, then a bias ``rand(out)`` drawn after each W
  (it consumes the RNG stream, so it matters for the following layers even though biases never enter a bound).

Nets have input 4, output 1 and ``layers`` weight matrices (``layers - 1`` hidden layers of ``width``).
"""

from __future__ import annotations

import numpy as np

from ..activations import get_activation
from .network import MLP

INPUT_SIZE = 4
OUTPUT_SIZE = 1
NORM_RANGE = (0.4, 1.8)

STANDARD_LAYERS = [2, 5, 10, 20, 30, 50, 75, 100]
STANDARD_WIDTHS = [20, 40, 60, 80, 100]
DEEP_LAYERS, DEEP_WIDTHS = [100], [120, 140, 160]
WIDE_LAYERS, WIDE_WIDTHS = [50], [150, 200, 300, 400, 500, 1000]

# (layers, width) pairs, in the upstream order (layers outer, width inner)
STANDARD: list[tuple[int, int]] = [(lyr, n) for lyr in STANDARD_LAYERS for n in STANDARD_WIDTHS]
DEEP: list[tuple[int, int]] = [(lyr, n) for lyr in DEEP_LAYERS for n in DEEP_WIDTHS]
WIDE: list[tuple[int, int]] = [(lyr, n) for lyr in WIDE_LAYERS for n in WIDE_WIDTHS]
ALL: list[tuple[int, int]] = STANDARD + DEEP + WIDE


def _dims(layers: int, width: int) -> list[int]:
    if layers < 1 or width < 1:
        raise ValueError(f"need layers >= 1 and width >= 1, got layers={layers}, width={width}")
    return [INPUT_SIZE] + [width] * (layers - 1) + [OUTPUT_SIZE]


def eclipse_weights(layers: int, width: int, legacy: bool = False, rd: int = 0) -> list[np.ndarray]:
    """Weight matrices W_1..W_L (shape (out, in)) of the ECLipsE benchmark net `lyr{layers}n{width}`."""
    dims = _dims(layers, width)
    if legacy:
        return eclipse_weights_and_biases(layers, width, rd=rd)[0]
    if rd:
        raise ValueError("rd (repetition index) only exists for the legacy generator")
    np.random.seed(width * 7 + layers * 13)  # the upstream generator uses the global numpy RNG
    out = []
    for n_in, n_out in zip(dims[:-1], dims[1:], strict=True):
        target = np.random.uniform(*NORM_RANGE)
        w = np.random.randn(n_out, n_in)
        out.append(target * w / np.linalg.norm(w, 2))
    return out


def eclipse_weights_and_biases(layers: int, width: int, rd: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Legacy generator: non-negative weights and the biases drawn after each W (rd = repetition 0..9)."""
    dims = _dims(layers, width)
    np.random.seed(rd * 77 + width * 7 + layers * 13)
    ws, bs = [], []
    for n_in, n_out in zip(dims[:-1], dims[1:], strict=True):
        target = np.random.uniform(*NORM_RANGE)
        w = np.random.rand(n_out, n_in)
        ws.append(target * w / np.linalg.norm(w, 2))
        bs.append(np.random.rand(n_out))
    return ws, bs


def eclipse_net(layers: int, width: int, legacy: bool = False, rd: int = 0, activation: str = "relu") -> MLP:
    """The benchmark net as an MLP (zero biases for the current generator, the drawn ones for legacy)."""
    name = f"eclipse-{'legacy-' if legacy else ''}lyr{layers}n{width}" + (f"rd{rd}" if legacy and rd else "")
    act = get_activation(activation)
    if legacy:
        ws, bs = eclipse_weights_and_biases(layers, width, rd=rd)
        return MLP.from_arrays(ws, act, biases=bs, name=name)
    return MLP.from_arrays(eclipse_weights(layers, width), act, name=name)
