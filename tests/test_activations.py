"""Slope intervals: every sampled difference quotient of the real function lies inside [alpha, beta]."""

from __future__ import annotations

import pytest
import torch

from lipcore.activations import SUPPORTED, from_module, from_slope, get_activation

REFERENCE = {  # known extrema of phi' (alpha, beta)
    "relu": (0.0, 1.0), "tanh": (0.0, 1.0), "sigmoid": (0.0, 0.25), "softplus": (0.0, 1.0),
    "silu": (-0.0998, 1.0998), "gelu": (-0.1289, 1.1289), "mish": (-0.1125, 1.0885),
    "hardswish": (-0.5, 1.5), "relu6": (0.0, 1.0), "leaky_relu:0.1": (0.1, 1.0), "elu": (0.0, 1.0),
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_interval_matches_reference_and_is_outward(name: str) -> None:
    act = get_activation(name)
    a, b = REFERENCE[name]
    assert act.alpha == pytest.approx(a, abs=2e-4) and act.beta == pytest.approx(b, abs=2e-4)
    x = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    y = act.fn(x)
    q = (y[1:] - y[:-1]) / (x[1:] - x[:-1])
    assert q.min().item() >= act.alpha - 1e-9
    assert q.max().item() <= act.beta + 1e-9


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_supported_name_parses(name: str) -> None:
    act = get_activation(name)
    assert act.alpha <= act.beta


def test_unknown_and_bad_slopes() -> None:
    with pytest.raises(ValueError, match="unknown activation"):
        get_activation("swoosh")
    with pytest.raises(ValueError):
        from_slope(1.0, 0.0)
    s = from_slope(-0.5, 2.0)
    assert (s.m, s.p, s.gain) == (0.75, -1.0, 2.0)


def test_from_module() -> None:
    assert from_module(torch.nn.LeakyReLU(0.2)).alpha == 0.2
    assert from_module(torch.nn.GELU()).name == "gelu"
    assert from_module(torch.nn.Linear(2, 2)) is None
