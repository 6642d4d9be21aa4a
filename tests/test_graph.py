"""Graph extraction: operator classification, BatchNorm folding, refusals, LayerNorm vacuity, summary."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipcore
from lipcore.errors import InputError, Refused
from lipcore.graph import bounds as gb
from lipcore.graph import build_graph
from lipcore.graph.norms import maxpool_lipschitz
from lipcore.variants import Context


class SE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c(x))
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(4, 4)
        self.k = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(self.q(x)[:, None], self.k(x)[:, None], x[:, None])[:, 0]


class Tokens(nn.Module):
    """A Mixer-like residual MLP on (tokens, channels) with a LayerNorm-free affine and token mixing."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.rand(6) + 0.5)
        self.tok = nn.Linear(5, 5)
        self.f1 = nn.Linear(6, 12)
        self.f2 = nn.Linear(12, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.tok((self.alpha * x).transpose(1, 2)).transpose(1, 2)
        x = x + self.f2(F.gelu(self.f1(x)))
        return self.head(x.mean(1))


def test_bn_folded_and_counts() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(3, 2),
                      nn.Flatten(), nn.Linear(4 * 3 * 3, 2)).eval()
    m[1].running_var.fill_(4.0)
    g = build_graph(m, (3, 7, 7), name="seq")
    s = g.summary()
    assert s["nodes"] == {"act": 1, "conv": 1, "linear": 1, "maxpool": 1, "reshape": 1}
    conv = next(n for n in g.nodes if n.op == "conv")
    expect = m[0].weight.double() * (m[1].weight.double() / torch.sqrt(torch.tensor(4.0 + 1e-5)))[:, None, None, None]
    assert torch.allclose(conv.attrs["weight"], expect)
    assert json.loads(json.dumps(s))["input_space"].startswith("after")
    assert maxpool_lipschitz(next(n for n in g.nodes if n.op == "maxpool")) == pytest.approx(2.0)
    v, _ = gb.naive(g, Context())
    assert v > 0


def test_refusals_name_operator_and_node() -> None:
    g = build_graph(SE(), (3, 6, 6))
    assert [u.op for u in g.unsupported] == ["mul"]
    with pytest.raises(Refused, match=r"unsupported operator mul at node .*squeeze-excite"):
        gb.eclipse_fast(g, Context())
    ga = build_graph(Attn(), (4,))
    with pytest.raises(Refused, match="dot-product attention is not globally Lipschitz"):
        gb.naive(ga, Context())
    rep = lipcore.analyze(SE(), ["naive", "eclipse-fast", "lower-sampled"], input_shape=(3, 6, 6),
                          options={"lower-sampled": {"samples": 4}})
    assert rep.results["naive"].status == "refused" and rep.results["lower-sampled"].status == "ok"


def test_layernorm_vacuous() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8, eps=1e-6), nn.Linear(8, 2)).eval()
    with torch.no_grad():
        m[1].weight.fill_(0.5)
    g = build_graph(m, (4,))
    v, p = gb.naive(g, Context())
    assert p["vacuous"] is True
    lip_ln = 0.5 / math.sqrt(1e-6)
    assert v == pytest.approx(lip_ln * gb.cn.spectral_norm_matrix(m[0].weight.double())
                              * gb.cn.spectral_norm_matrix(m[2].weight.double()), rel=1e-5)
    rep = lipcore.analyze(m, ["naive", "eclipse-fast"], input_shape=(4,))
    assert rep.results["eclipse-fast"].vacuous


def test_input_shape_required() -> None:
    with pytest.raises(InputError, match="input-shape"):
        build_graph(SE())


def test_token_model_recursion_sound() -> None:
    torch.manual_seed(2)
    m = Tokens().eval()
    g = build_graph(m, (5, 6))
    ctx = Context()
    nv, _ = gb.naive(g, ctx)
    ef, p = gb.eclipse_fast(g, ctx)
    assert ef <= nv
    best = 0.0
    for _ in range(200):
        x = torch.randn(1, 5, 6)
        J = torch.autograd.functional.jacobian(lambda z: m(z.reshape(1, 5, 6)).reshape(-1), x.reshape(-1))
        best = max(best, float(torch.linalg.matrix_norm(J, 2)))
    assert best <= ef


def test_token_mixing_onto_an_unrelated_axis_length() -> None:
    """A Mixer block whose token MLP maps 9 tokens to 16 hidden units: the hidden axis has no grid relation to
    the token axis (9 does not divide 16). This used to fail with 'incompatible grids' (mixer_s16_224: 196 -> 256);
    independent tensors are now never paired by grid."""
    from timm.models.mlp_mixer import MlpMixer

    torch.manual_seed(0)
    m = MlpMixer(num_classes=3, img_size=48, patch_size=16, num_blocks=2, embed_dim=32, mlp_ratio=(0.5, 2.0)).eval()
    with torch.no_grad():
        m.head.weight.normal_(0, 0.1)  # timm zero-initialises the head
    rep = lipcore.analyze(m, ["naive", "eclipse-fast", "lower-sampled", "lower-ascent"], input_shape=(3, 48, 48),
                          options={"lower-sampled": {"samples": 16, "power_iters": 10},
                                   "lower-ascent": {"starts": 2, "steps": 20, "jv_steps": 10}})
    res = rep.results
    assert {r.status for r in res.values()} == {"ok"}, {k: r.reason for k, r in res.items()}
    assert res["eclipse-fast"].vacuous  # LayerNorm
    assert res["eclipse-fast"].value <= res["naive"].value
    assert res["eclipse-fast"].value >= max(res["lower-sampled"].value, res["lower-ascent"].value)
