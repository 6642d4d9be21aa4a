"""Every option a variant reads is declared in lipcore's registry, and only declared keys are accepted.

The property is checked by running every variant on small MLPs and a small CNN with a Context that records
each `opt` read: a read of an undeclared key raises (Context.opt refuses it), so a code path that grows a new
option without declaring it fails here, and manifests / `analyze(options=...)` reject typos by the same table.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lipcore
from lipcore.variants import VARIANTS, Context, option_errors

GRAPH_VARIANTS = [v for v, s in VARIANTS.items() if s.graph_fn]
MLP_VARIANTS = [v for v, s in VARIANTS.items() if s.mlp_fn and not s.needs_sdp]


def _mlp(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    dims = [4, 6, 5, 2]
    return [rng.standard_normal((dims[i + 1], dims[i])) / 2 for i in range(len(dims) - 1)]


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2, padding=1),
                         nn.Flatten(), nn.Linear(2 * 3 * 3, 2)).double()


SMALL = {"lower-sampled": {"samples": 16}, "lower-ascent": {"starts": 2, "steps": 5, "jv_steps": 5},
         "optimized": {"steps": 3}}


@pytest.mark.parametrize("seed", [0, 1])
def test_every_mlp_variant_reads_only_declared_options(seed):
    rep = lipcore.analyze(_mlp(seed), MLP_VARIANTS, activation="relu", options=SMALL)
    for vid, r in rep.results.items():
        assert "does not declare" not in (r.reason or ""), (vid, r.reason)
        assert r.status == "ok", (vid, r.reason)


def test_every_graph_variant_reads_only_declared_options():
    rep = lipcore.analyze(_cnn(), GRAPH_VARIANTS, input_shape=(2, 6, 6), options=SMALL)
    for vid, r in rep.results.items():
        assert r.status == "ok", (vid, r.reason)


def test_reading_an_undeclared_option_is_a_programming_error():
    ctx = Context(options={"naive": {}})
    with pytest.raises(KeyError, match="does not declare"):
        ctx.opt("eclipse-fast", "samples", 1)
    assert ctx.opt("lower-sampled", "samples", 7) == 7


@pytest.mark.parametrize("vid", list(VARIANTS))
def test_every_declared_key_is_accepted_and_a_near_typo_names_it(vid):
    spec = VARIANTS[vid]
    assert option_errors({vid: dict.fromkeys(spec.options, 1)}) == []
    for key in spec.options:
        typo = key[:-1] + ("x" if key[-1] != "x" else "y")
        errs = option_errors({vid: {typo: 1}})
        assert len(errs) == 1 and f"options.{vid}.{typo}: unknown option" in errs[0]
    assert all(isinstance(doc, str) and doc for doc in spec.options.values())


def test_analyze_rejects_unknown_options_before_any_work():
    with pytest.raises(ValueError, match=r"options\.lower-sampled\.smaples: unknown option \(did you mean 'samples'"):
        lipcore.analyze(_mlp(0), ["naive"], activation="relu", options={"lower-sampled": {"smaples": 3}})
    with pytest.raises(ValueError, match=r"unknown variant \(did you mean 'eclipse-fast'"):
        lipcore.analyze(_mlp(0), ["naive"], activation="relu", options={"eclipse-fats": {}})
