"""Coverage over tiny timm models: every model ends ok, ok+vacuous or refused naming the operator, never failed,
and every certified upper bound is >= the measured lower bounds (the lower bounds always run)."""

from __future__ import annotations

import pytest
import timm
import torch

import lipcore

# small lower-bound budgets: the test checks statuses and soundness, not tightness
OPTS = {
    "lower-sampled": {"samples": 8, "power_iters": 5, "batch": 8},
    "lower-ascent": {"starts": 2, "steps": 10, "jv_steps": 5, "power_iters": 5},
    "sh-gershgorin": {"c_grid": [1.7]},
}
VARIANTS = ["naive", "eclipse-fast", "sh-combined", "optimized", "lower-sampled", "lower-ascent"]

CASES = [
    # model, expected upper status, fragment the refusal/vacuous reason must contain, recursion beats naive
    ("test_resnet", "ok", None, True),
    ("test_convnext", "vacuous", None, False),
    ("test_vit", "refused", "dot-product attention", False),
    ("test_efficientnet", "refused", "multiplicative gating", False),
]


@pytest.mark.parametrize(("model", "expect", "why", "tighter"), CASES)
def test_tiny_timm_coverage(model: str, expect: str, why: str | None, tighter: bool) -> None:
    torch.manual_seed(0)
    m = timm.create_model(model, pretrained=False)
    rep = lipcore.analyze(m, VARIANTS, input_shape=(3, 32, 32), name=model, options=OPTS, budget_s=120)
    res = rep.results
    assert rep.summary["kind"] == "graph"
    assert all(r.status != "failed" for r in res.values()), {k: r.reason for k, r in res.items()}
    lows = [r.value for r in res.values() if r.kind == "lower"]
    assert all(r.status == "ok" for r in res.values() if r.kind == "lower")
    lb = max(lows)
    ups = {k: r for k, r in res.items() if r.kind == "upper" and k != "optimized"}
    if expect == "refused":
        for r in ups.values():
            assert r.status == "refused" and why in r.reason and "at node" in r.reason
        assert rep.summary["unsupported"]
        return
    for r in ups.values():
        assert r.status == "ok"
        assert r.value >= lb
        assert r.vacuous == (expect == "vacuous")
    assert res["sh-combined"].value <= res["eclipse-fast"].value <= res["naive"].value
    if tighter:
        assert res["eclipse-fast"].value < 0.8 * res["naive"].value
    assert res["optimized"].status == "refused"
