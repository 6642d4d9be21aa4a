"""Resource guard: a model whose dense linear algebra would not fit in memory (or, for upper bounds, in the
budget) is refused from its shapes at once, with the estimate, before anything large is allocated."""

from __future__ import annotations

import time

import numpy as np

import lipcore


def test_a_layer_too_big_for_the_memory_cap_is_refused_at_once_with_its_estimate(monkeypatch):
    monkeypatch.setenv("LIPZOO_MAX_MEMORY_GB", "0.05")
    w = [np.ones((3000, 3000), dtype=np.float32), np.ones((1, 3000), dtype=np.float32)]
    t0 = time.perf_counter()
    r = lipcore.analyze(w, variants=["naive", "eclipse-fast", "sh-combined"], activation="relu")
    assert time.perf_counter() - t0 < 1.0
    for res in r.results.values():
        assert res.status == "refused" and "GiB" in res.reason and "3000 wide" in res.reason, res.reason


def test_an_npz_is_guarded_from_its_headers_and_small_nets_are_untouched(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPZOO_MAX_MEMORY_GB", "0.05")
    p = tmp_path / "big.npz"
    np.savez(p, W1=np.ones((3000, 3000), dtype=np.float32), W2=np.ones((1, 3000), dtype=np.float32))
    r = lipcore.analyze(str(p), variants=["eclipse-fast"], activation="relu")
    assert r.results["eclipse-fast"].status == "refused" and "needs ~0.47 GiB" in r.results["eclipse-fast"].reason
    assert r.summary == {"layer_shapes": [[3000, 3000], [1, 3000]]}  # refused from the headers: nothing was loaded
    monkeypatch.setenv("LIPZOO_MAX_MEMORY_GB", "0.3")  # the upper bounds' dense work does not fit, the weights do
    seen: list[tuple[str, str]] = []
    r = lipcore.analyze(str(p), variants=["eclipse-fast", "naive", "lower-sampled"], activation="relu",
                        options={"lower-sampled": {"samples": 4}}, progress=lambda v, res: seen.append((v, res.status)))
    # the shape-refused ones are reported first, before the file loads for the lower bound
    assert seen == [("naive", "refused"), ("eclipse-fast", "refused"), ("lower-sampled", "ok")]
    assert list(r.results) == ["naive", "eclipse-fast", "lower-sampled"] and r.summary["layers"] == 2
    small = lipcore.analyze([np.eye(4), np.ones((1, 4))], variants=["eclipse-fast", "lower-sampled"],
                            activation="relu")
    assert all(x.status == "ok" for x in small.results.values())


def test_an_upper_bound_estimated_past_the_budget_is_refused():
    w = [np.ones((2500, 2500)), np.ones((1, 2500))]
    r = lipcore.analyze(w, variants=["eclipse-fast"], activation="relu", budget_s=0.5)
    res = r.results["eclipse-fast"]
    assert res.status == "refused" and "exceeds the" in res.reason and "left of the budget" in res.reason


def test_an_mlp_safetensors_is_guarded_from_its_header(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import save_file

    monkeypatch.setenv("LIPZOO_MAX_MEMORY_GB", "0.05")
    p = tmp_path / "big.safetensors"
    save_file({"0.weight": torch.ones(3000, 3000), "0.bias": torch.ones(3000), "2.weight": torch.ones(1, 3000)},
              str(p), metadata={"activation": "relu"})
    r = lipcore.analyze(str(p), variants=["naive", "eclipse-fast"])
    assert all(x.status == "refused" and "3000 wide" in x.reason for x in r.results.values())
    assert r.summary == {"layer_shapes": [[3000, 3000], [1, 3000]]}
    conv = tmp_path / "conv.safetensors"  # not an MLP state dict: the loader decides (here: what it refuses)
    save_file({"w": torch.ones(3, 2, 3, 3)}, str(conv))
    assert lipcore.api.weight_shapes(str(conv)) is None


def test_lower_bounds_stop_at_the_deadline_and_later_variants_say_the_budget_was_spent():
    rng = np.random.default_rng(0)
    w = [rng.standard_normal((1500, 1500)) / 40 for _ in range(4)] + [rng.standard_normal((1, 1500)) / 40]
    # one output: full Jacobians, first batch 4096 samples (~10 s here); the deadline cuts it between chunks
    r = lipcore.analyze(w, variants=["lower-sampled", "lower-ascent"], activation="relu", budget_s=1.0)
    low = r.results["lower-sampled"]
    assert low.status == "ok" and 0 < low.params["samples"] < 4096 and low.value > 0, low
    asc = r.results["lower-ascent"]
    assert asc.status == "refused" and "budget was spent by the variants before it" in asc.reason


def test_the_mlp_guard_rate_is_measured_once_and_cached(tmp_path, monkeypatch):
    import json

    import torch

    from lipcore import api, calibrate

    monkeypatch.setenv("LIPZOO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(calibrate, "_MEMORY", {})
    cpu = torch.device("cpu")
    r = api.mlp_rate(cpu)
    assert r > 1e6  # a real measurement, in cost-model flops per second
    disk = json.loads((tmp_path / "calibration.json").read_text())[calibrate.device_key(cpu)]
    assert disk["dense"] == r
    calls: list[int] = []
    monkeypatch.setattr(api, "_time_recursion", lambda dev: calls.append(1) or 1.0)
    assert api.mlp_rate(cpu) == r and not calls  # cached: not measured again
    # a machine measured at 1 kFLOP/s: a budget the estimate does not fit is refused at once, naming the rate
    monkeypatch.setattr(calibrate, "_MEMORY", {})
    (tmp_path / "calibration.json").write_text(json.dumps({calibrate.device_key(cpu): {"dense": 1e3}}))
    w = [np.eye(30), np.ones((1, 30))]
    res = lipcore.analyze(w, variants=["eclipse-fast"], activation="relu", budget_s=60).results["eclipse-fast"]
    assert res.status == "refused" and res.reason.startswith("over budget") and "measured 0 GFLOP/s" in res.reason
