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

ATTENTION, GATING = "dot-product attention", "multiplicative gating"
# model -> expected upper status, fragment the refusal reason must contain, recursion beats naive, input shape
# (None: the model's own; these four only trace at their 160 px default)
EXPECT: dict[str, tuple[str, str | None, bool, tuple[int, ...] | None]] = {
    "test_resnet": ("ok", None, True, (3, 32, 32)),
    "test_convnext": ("vacuous", None, False, (3, 32, 32)),  # LayerNorm: max|gamma|/sqrt(eps)
    "test_convnext2": ("vacuous", None, False, (3, 32, 32)),
    "test_convnext3": ("vacuous", None, False, (3, 32, 32)),
    "test_vit": ("refused", ATTENTION, False, (3, 32, 32)),
    "test_vit2": ("refused", ATTENTION, False, (3, 32, 32)),
    "test_vit3": ("refused", ATTENTION, False, None),
    "test_vit4": ("refused", ATTENTION, False, (3, 32, 32)),
    "test_vit_relpos": ("refused", ATTENTION, False, None),
    "test_efficientnet": ("refused", GATING, False, (3, 32, 32)),  # squeeze-excite
    "test_efficientnet_evos": ("refused", GATING, False, (3, 32, 32)),
    "test_efficientnet_gn": ("refused", GATING, False, (3, 32, 32)),
    "test_efficientnet_ln": ("refused", GATING, False, (3, 32, 32)),
    "test_byobnet": ("refused", GATING, False, (3, 32, 32)),
    "test_nfnet": ("refused", GATING, False, (3, 32, 32)),
    "test_mambaout": ("refused", GATING, False, (3, 32, 32)),  # gated CNN block
    "test_coatnet": ("refused", GATING, False, None),  # MBConv squeeze-excite comes before the attention
    "test_maxvit": ("refused", GATING, False, None),
}
# every tiny model this timm ships: one it added later must still end ok, vacuous or refused (never failed)
CASES = [(m, *EXPECT.get(m, (None, None, False, None))) for m in timm.list_models("test_*")]


def test_every_expectation_names_a_model_this_timm_has() -> None:
    assert set(EXPECT) <= {m for m, *_ in CASES}


@pytest.mark.parametrize(("model", "expect", "why", "tighter", "shape"), CASES)
def test_tiny_timm_coverage(model: str, expect: str | None, why: str | None, tighter: bool,
                            shape: tuple[int, ...] | None) -> None:
    torch.manual_seed(0)
    m = timm.create_model(model, pretrained=False)
    rep = lipcore.analyze(m, VARIANTS, input_shape=shape, name=model, options=OPTS, budget_s=120)
    res = rep.results
    assert rep.summary["kind"] == "graph"
    assert all(r.status != "failed" for r in res.values()), {k: r.reason for k, r in res.items()}
    lows = [r.value for r in res.values() if r.kind == "lower"]
    assert all(r.status == "ok" for r in res.values() if r.kind == "lower")
    lb = max(lows)
    ups = {k: r for k, r in res.items() if r.kind == "upper"}
    if expect is None:  # a tiny model newer than this table: any honest outcome, consistently across variants
        expect = "refused" if ups["naive"].status == "refused" else "vacuous" if ups["naive"].vacuous else "ok"
        why = why or ""
    if expect == "refused":
        for r in ups.values():
            assert r.status == "refused" and why in r.reason and "at node" in r.reason
        assert rep.summary["unsupported"]
        return
    for r in ups.values():
        assert r.status == "ok"
        assert r.value >= lb
        assert r.vacuous == (expect == "vacuous")
    assert res["optimized"].value <= res["sh-combined"].value <= res["eclipse-fast"].value <= res["naive"].value
    if tighter:
        assert res["eclipse-fast"].value < 0.8 * res["naive"].value


def test_untraceable_input_shape_is_one_line_naming_the_model_and_its_own_shape(capfd) -> None:  # noqa: ANN001
    m = timm.create_model("test_coatnet", pretrained=False)
    with pytest.raises(lipcore.InputError) as err:
        lipcore.analyze(m, ["naive"], input_shape=(3, 32, 32), name="test_coatnet")
    msg = str(err.value)
    assert msg.startswith("test_coatnet: cannot trace the model") and "\n" not in msg
    assert "own input shape is 3,160,160, this trace used 3,32,32" in msg
    assert "Traceback" not in capfd.readouterr().err  # torch's tracer log is silenced, the error says it all
