"""`lipzoo bound TARGET` for every kind of target: factories, timm names, HF repos (a local fake hub and a real
on-disk HF cache), weight files; degenerate inits; transformers-format repos; default variants fitted to a budget.

Each value is checked against the same model bounded directly by lipcore (or audited in a zoo): the target code
must bound exactly the model it names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import test_hubs
import torch
from fakehub import FakeHub
from safetensors.torch import save_file
from test_hubs import mlp_bytes
from test_loaders import random_weights, write_weights

import lipcore
from lipzoo.cli import main

V2 = "naive,eclipse-fast"
hub, online = test_hubs.hub, test_hubs.online  # fixtures: the fake hub on 127.0.0.1, a private HF cache online


def cli(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def bound_json(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[dict[str, Any], str]:
    rc, out, err = cli(capsys, "bound", *argv, "--json", "--device", "cpu")
    assert rc == 0, err
    return json.loads(out), err


def values(doc: dict[str, Any]) -> dict[str, float]:
    return {k: r["value"] for k, r in doc["results"].items()}


def one_error(capsys: pytest.CaptureFixture[str], *argv: Any) -> str:
    rc, out, err = cli(capsys, "bound", *argv)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("lipzoo: error: ")
    return err.strip()


# -- factories ------------------------------------------------------------------------------------------------
def _made(name: str, seed: int = 0) -> torch.nn.Module:
    import bound_factories

    torch.manual_seed(seed)
    return getattr(bound_factories, name)().eval()


@pytest.mark.parametrize("name,shape", [("small_cnn", [1, 5, 5]), ("small_mlp", None)])
def test_factory_bounds_the_module_it_returns(capsys, name, shape) -> None:
    argv = [f"bound_factories:{name}", "-v", V2] + (["--input-shape", ",".join(map(str, shape))] if shape else [])
    doc, _ = bound_json(capsys, *argv)
    direct = lipcore.analyze(_made(name), V2.split(","), input_shape=shape)
    for v in V2.split(","):
        assert doc["results"][v]["status"] == "ok"
        assert doc["results"][v]["value"] == pytest.approx(direct.results[v].value, rel=1e-12)
    assert doc["target"]["kind"] == "factory" and doc["target"]["model_id"] == f"factory:bound_factories:{name}"
    assert doc["notes"] == [] and doc["summary"]["kind"] == ("graph" if shape else "mlp")
    if shape is None:  # tanh MLP: naive is the product of the spectral norms
        m = _made(name)
        want = np.prod([torch.linalg.matrix_norm(m[i].weight.double(), 2).item() for i in (0, 2)])
        assert doc["results"]["naive"]["value"] == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("target,extra,needle", [
    ("no_such_pkg_xyz.models:make", [], "cannot import no_such_pkg_xyz.models (ModuleNotFoundError"),
    ("bound_factories:missing_fn", [], "bound_factories has no function 'missing_fn'"),
    ("bound_factories:not_a_module", [], "returned int, not a torch.nn.Module"),
    ("bound_factories:small_cnn", [], "pass --input-shape"),
    ("bound_factories:small_cnn", ["--input-shape", "1,x,5"], "bad --input-shape"),
    ("not a target", [], "no such file, and not timm:NAME"),
    ("hf:just-a-name", [], "expected hf:ORG/REPO"),
    ("weights.npz", [], "weights.npz: file not found"),
])
def test_bad_targets_are_one_line(capsys, target, extra, needle) -> None:
    assert needle in one_error(capsys, target, "-v", "naive", *extra)


def test_reinit_zero_is_for_random_inits_only(capsys, tmp_path) -> None:
    Ws, bs = random_weights(3, [3, 5, 2])
    path = write_weights(tmp_path, "npz", Ws, bs)
    assert "--reinit-zero re-draws random initialisations" in one_error(capsys, path, "-a", "relu", "--reinit-zero")


# -- degenerate inits --------------------------------------------------------------------------------------------
def test_zero_gamma_is_noted_and_reinit_zero_changes_the_bound(capsys) -> None:
    from torch import nn

    args = ["bound_factories:zero_gamma_resnet", "--input-shape", "2,6,6", "-v", V2]
    doc, err = bound_json(capsys, *args)
    (note,) = doc["notes"]
    assert note.startswith("degenerate weights: 2 weight tensor(s) identically zero (1.bn.weight, 2.bn.weight)")
    assert err.splitlines() == [f"lipzoo: note: {note}"]
    # the branch is exactly zero: the certified naive bound is the shortcut path's, conv0 then the head
    m = _made("zero_gamma_resnet")
    shortcut = lipcore.analyze(nn.Sequential(m[0], m[3], m[4]), ["naive"], input_shape=(2, 6, 6))
    assert doc["results"]["naive"]["value"] == pytest.approx(shortcut.results["naive"].value, rel=1e-9)
    again, err = bound_json(capsys, *args, "--reinit-zero")
    assert again["notes"] == [] and err == "" and again["target"]["revision"].endswith(":reinit-zero")
    assert again["target"]["info"]["reinit_zero"] == ["1.bn.weight", "2.bn.weight"]
    assert again["results"]["naive"]["value"] > doc["results"]["naive"]["value"] * (1 + 1e-6)
    rc, out, _ = cli(capsys, "bound", *args)
    assert rc == 0 and "note: degenerate weights: 2 weight tensor(s)" in out


def test_zero_weights_found_by_weights_not_names() -> None:
    from torch import nn

    from flows import inits

    torch.manual_seed(0)
    for k in range(1, 5):  # any layer whose weight/scale is identically zero, whatever it is called
        layers = [nn.Linear(3, 3) for _ in range(k)]
        nn.init.zeros_(layers[-1].weight)
        net = nn.Sequential(*layers, nn.LayerNorm(3))
        assert inits.zero_weights(net) == [f"{k - 1}.weight"]
        nn.init.zeros_(net[k].weight)
        assert inits.zero_weights(net) == [f"{k - 1}.weight", f"{k}.weight"]
        assert inits.reinit_zero(net) == [f"{k - 1}.weight", f"{k}.weight"] and inits.zero_weights(net) == []
        assert torch.equal(net[k].weight, torch.ones(3))
    assert inits.zero_weights(nn.Linear(2, 2, bias=True).requires_grad_(False)) == []  # zero bias: ordinary
    assert inits.degenerate_note([]) is None


# -- timm -------------------------------------------------------------------------------------------------------
TIMM_SHAPE = "3,16,16"


def test_timm_random_init_fallback_degenerate_and_reinit(capsys) -> None:
    pytest.importorskip("timm")
    doc, err = bound_json(capsys, "timm:test_resnet", "--input-shape", TIMM_SHAPE, "-v", V2)
    t = doc["target"]
    assert t["model_id"] == "timm:test_resnet" and t["revision"].startswith("random-init:seed=0:timm=")
    lines = err.splitlines()
    assert len(lines) == 2 and "pretrained weights timm/test_resnet" in lines[0] and "random init" in lines[0]
    assert lines[1].startswith("lipzoo: note: degenerate weights: 4 weight tensor(s) identically zero")
    assert doc["summary"]["input_shape"] == [3, 16, 16]
    redrawn, err = bound_json(capsys, "timm:test_resnet", "--input-shape", TIMM_SHAPE, "-v", V2, "--reinit-zero")
    assert redrawn["target"]["revision"].startswith("random-init:seed=0:reinit-zero:timm=")
    assert len(redrawn["notes"]) == 1 and "degenerate" not in err
    assert redrawn["results"]["naive"]["value"] > doc["results"]["naive"]["value"] * (1 + 1e-6)
    # the same model as bench_arch's: seed 0, create, re-draw the zero tensors
    import timm

    from flows.inits import reinit_zero

    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False)
    reinit_zero(m)
    direct = lipcore.analyze(m.eval(), V2.split(","), input_shape=(3, 16, 16))
    assert values(redrawn) == pytest.approx({v: direct.results[v].value for v in V2.split(",")}, rel=1e-12)


def test_safetensors_cnn_naming_its_timm_architecture(capsys, tmp_path) -> None:
    """A checkpoint file whose metadata names a timm architecture (and its input shape) is rebuilt and bounded as
    that module, like the local hub loads it; its zero-initialised gammas are noted."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    m = timm.create_model("test_resnet", num_classes=3).eval()
    path = tmp_path / "tr.safetensors"
    save_file(m.state_dict(), str(path), metadata={"timm.arch": "test_resnet", "timm.model_args": '{"num_classes": 3}',
                                                   "lipzoo.input_shape": "[3, 16, 16]"})
    doc, err = bound_json(capsys, path, "-v", "naive")
    direct = lipcore.analyze(m, ["naive"], input_shape=(3, 16, 16))
    assert doc["results"]["naive"]["value"] == pytest.approx(direct.results["naive"].value, rel=1e-12)
    assert doc["target"]["architecture"] == "test_resnet" and doc["target"]["kind"] == "file"
    assert doc["target"]["revision"] == doc["target"]["weights_digest"][:16]
    assert len(doc["notes"]) == 1 and "degenerate weights: 4 weight tensor(s)" in err


def test_timm_pinned_revision_is_that_init(capsys) -> None:
    timm = pytest.importorskip("timm")
    doc, err = bound_json(capsys, "timm:test_resnet@random-init:seed=3", "--input-shape", TIMM_SHAPE, "-v", "naive")
    assert doc["target"]["revision"] == "random-init:seed=3" and "as asked" in err.splitlines()[0]
    torch.manual_seed(3)
    m = timm.create_model("test_resnet", pretrained=False).eval()
    direct = lipcore.analyze(m, ["naive"], input_shape=(3, 16, 16))
    assert doc["results"]["naive"]["value"] == pytest.approx(direct.results["naive"].value, rel=1e-12)
    again, _ = bound_json(capsys, "timm:test_resnet@random-init:seed=3", "--input-shape", TIMM_SHAPE, "-v", "naive",
                          "--reinit-zero")
    assert again["target"]["revision"] == "random-init:seed=3:reinit-zero" and len(again["notes"]) == 1
    assert "unknown timm architecture" in one_error(capsys, "timm:no_such_arch_xyz", "-v", "naive")


def test_timm_target_bounds_as_the_audit_task_does(capsys) -> None:
    """`lipzoo bound timm:X` and the audit's own per-model work (tasks.run_job on the job of a zoo entry for X, as
    the flow builds it) give the same values, revision and notes; the full Prefect audit is the next test."""
    pytest.importorskip("timm")
    from dataclasses import replace

    from flows import hubs
    from flows.refs import Job
    from flows.tasks import run_job
    from flows.zoo import parse_zoo

    doc, _ = bound_json(capsys, "timm:test_resnet", "--input-shape", TIMM_SHAPE, "-v", V2)
    (entry,) = parse_zoo({"name": "z", "variants": V2.split(","), "models": [
        {"hub": "timm", "models": ["test_resnet"], "input_shape": [3, 16, 16]}]}).entries
    (ref,) = hubs.discover(entry)
    out = run_job(Job(ref, replace(entry.settings, device="cpu", hub_options=dict(entry.params))))
    assert {r.variant: r.value for r in out.rows} == pytest.approx(values(doc), rel=1e-12)
    assert {r.revision for r in out.rows} == {doc["target"]["revision"]}
    assert all(r.params["notes"] == doc["notes"][1:] for r in out.rows)  # [0] is the CLI's random-init line


@pytest.mark.usefixtures("prefect_harness")
def test_timm_target_bounds_as_it_audits_in_a_zoo(capsys, tmp_path) -> None:
    """The same value from `lipzoo bound timm:X` and from an audit of a zoo entry for X (and the same revision,
    and the degenerate note on the catalog rows)."""
    pytest.importorskip("timm")
    from catalogs import Catalog
    from flows.audit import audit_zoo

    doc, _ = bound_json(capsys, "timm:test_resnet", "--input-shape", TIMM_SHAPE, "-v", V2)
    cat = tmp_path / "c.duckdb"
    s = audit_zoo({"name": "z", "variants": V2.split(","), "models": [
        {"hub": "timm", "models": ["test_resnet"], "input_shape": [3, 16, 16]}]}, catalog=str(cat), device="cpu")
    (note,) = s["notes"]  # the audit says it too (the CLI prints one line per model)
    assert note["model_id"] == "timm:test_resnet" and note["notes"] == doc["notes"][1:]
    with Catalog(cat, read_only=True).connect() as con:
        rows = con.execute("SELECT variant, value, revision, params FROM results WHERE model_id = 'timm:test_resnet'"
                           ).fetchall()
    assert {r[0]: r[1] for r in rows} == pytest.approx(values(doc), rel=1e-12)
    assert {r[2] for r in rows} == {doc["target"]["revision"]}
    assert all("degenerate weights" in json.loads(r[3])["notes"][0] for r in rows)


# -- Hugging Face: the fake hub, then the on-disk cache offline ------------------------------------------------
def test_hf_repo_at_head_and_at_an_old_commit(capsys, hub, online) -> None:
    old, new = mlp_bytes(online, 1), mlp_bytes(online, 2, act="tanh")
    s1 = hub.publish("org/mlp", {"model.safetensors": old})
    s2 = hub.publish("org/mlp", {"model.safetensors": new}, title="retrain")
    for rev, data, act in ((None, new, "tanh"), (s1, old, "relu"), ("main", new, "tanh")):
        target = "hf:org/mlp" + (f"@{rev}" if rev else "")
        doc, _ = bound_json(capsys, target, "--endpoint", hub.url, "-v", V2)
        assert doc["target"]["revision"] == (s1 if rev == s1 else s2)
        (online / "f.safetensors").write_bytes(data)
        direct = lipcore.analyze(online / "f.safetensors", V2.split(","), activation=act)
        assert values(doc) == pytest.approx({v: direct.results[v].value for v in V2.split(",")}, rel=1e-12)
    assert "repository not found" in one_error(capsys, "hf:org/missing", "--endpoint", hub.url, "-v", "naive")


def test_hf_timm_format_repo(capsys, hub, online) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=4)
    save_file(model.state_dict(), str(online / "tr.safetensors"))
    hub.publish("org/tr", {"config.json": json.dumps({"architecture": "test_resnet", "num_classes": 4}),
                           "model.safetensors": (online / "tr.safetensors").read_bytes()})
    doc, _ = bound_json(capsys, "hf:org/tr", "--endpoint", hub.url, "--input-shape", TIMM_SHAPE, "-v", "naive")
    direct = lipcore.analyze(model.eval(), ["naive"], input_shape=(3, 16, 16))
    assert doc["results"]["naive"]["value"] == pytest.approx(direct.results["naive"].value, rel=1e-12)
    assert doc["target"]["architecture"] == "test_resnet"


def test_hf_offline_from_a_real_cache(capsys, hub, online, monkeypatch) -> None:
    """A cache as huggingface_hub writes it (blobs, snapshots/<sha>, refs/main), then HF_HUB_OFFLINE."""
    import huggingface_hub.constants as c
    from huggingface_hub import snapshot_download

    data = mlp_bytes(online, 4)
    sha = hub.publish("org/cached", {"model.safetensors": data, "config.json": "{}"})
    folder = Path(snapshot_download("org/cached", endpoint=hub.url))  # writes refs/main itself
    assert (Path(c.HF_HUB_CACHE) / "models--org--cached" / "refs" / "main").read_text() == sha
    hub.stop()
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    doc, _ = bound_json(capsys, "hf:org/cached", "-v", V2)
    direct = lipcore.analyze(folder / "model.safetensors", V2.split(","), activation="relu")
    assert doc["target"]["revision"] == sha
    assert values(doc) == pytest.approx({v: direct.results[v].value for v in V2.split(",")}, rel=1e-12)
    assert "not in the local cache" in one_error(capsys, "hf:org/never-cached", "-v", "naive")


def _bert_repo(hub: FakeHub, online: Path) -> str:
    cfg = {"model_type": "bert", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
           "intermediate_size": 16, "vocab_size": 20, "max_position_embeddings": 16}
    return hub.publish("org/bert", {"config.json": json.dumps(cfg), "model.safetensors": mlp_bytes(online, 5)})


def test_transformers_format_repo_is_refused_with_the_reason(capsys, hub, online) -> None:
    """A transformers repo is never read as a bare state dict (it would be 'not an MLP' or, worse, an MLP)."""
    try:
        import transformers  # noqa: F401
        pytest.skip("transformers is installed: the load path is tested instead")
    except ImportError:
        pass
    from flows.hubs import Unsupported, hf
    from flows.refs import ModelRef, Settings

    sha = _bert_repo(hub, online)
    err = one_error(capsys, "hf:org/bert", "--endpoint", hub.url, "-v", "naive")
    assert err == ("lipzoo: error: hf:org/bert: transformers-format repo (model_type=bert): "
                   "install lipzoo[transformers]")
    with pytest.raises(Unsupported, match=r"model_type=bert"):  # an audit records it as refused rows
        hf.fetch(ModelRef("hf", "org/bert", sha, None, hub.url), Settings(variants=()))


def test_transformers_format_repo_loads_through_transformers(capsys, hub, online) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=8, num_attention_heads=2, num_hidden_layers=1, intermediate_size=16,
                                  vocab_size=20, max_position_embeddings=16)
    transformers.BertModel(cfg).save_pretrained(online / "bert", safe_serialization=True)
    hub.publish("org/bert", {p.name: p.read_bytes() for p in (online / "bert").iterdir()})
    doc, _ = bound_json(capsys, "hf:org/bert", "--endpoint", hub.url, "-v", "naive")
    assert doc["target"]["architecture"] == "transformers:bert"
    r = doc["results"]["naive"]
    assert r["status"] == "refused" or r["value"] is not None  # attention is refused by name, never mis-bounded


# -- default variants and budgets ---------------------------------------------------------------------------------
def test_default_graph_set_and_mlp_set(capsys, tmp_path) -> None:
    from flows.variant_plan import GRAPH_DEFAULT
    from lipcore.variants import DEFAULT_VARIANTS

    doc, _ = bound_json(capsys, "bound_factories:small_cnn", "--input-shape", "1,5,5")
    assert list(doc["results"]) == list(GRAPH_DEFAULT) and doc["skipped"] == {}
    ok = {k: r for k, r in doc["results"].items() if r["status"] == "ok"}
    assert {"naive", "eclipse-fast", "lower-sampled"} <= set(ok)
    low = max(r["value"] for r in ok.values() if r["kind"] == "lower")
    assert all(r["value"] >= low for r in ok.values() if r["kind"] == "upper")
    Ws, bs = random_weights(3, [3, 5, 2])
    doc, _ = bound_json(capsys, write_weights(tmp_path, "npz", Ws, bs), "-a", "relu",
                        "-o", "lower-ascent.starts=1", "-o", "lower-ascent.steps=5", "-o", "lower-sampled.samples=8")
    assert set(doc["results"]) == set(DEFAULT_VARIANTS)


def test_budget_plan_is_monotone_and_fits() -> None:
    """Over many budgets: naive and the lower bounds always run, what runs at a budget runs at every larger one,
    the admitted upper bounds' (safety-scaled) estimates fit in the upper share, and every skip says why."""
    import bound_factories

    from flows import variant_plan as vp
    from lipcore.api import load_target

    torch.manual_seed(0)
    nets = [load_target(bound_factories.small_cnn(), input_shape=(1, 5, 5)),
            load_target([np.ones((300, 200)), np.ones((300, 300)), np.ones((4, 300))], activation="relu")]
    for net in nets:
        full = vp.plan(net, None, torch.device("cpu"), None)
        prev: set[str] = set()
        for budget in [1e-7, 1e-5, 1e-3, 1e-2, 0.1, 1.0, 10.0, 1e3, 1e6]:
            p = vp.plan(net, None, torch.device("cpu"), budget)
            assert set(p.run) | set(p.skipped) == set(full.run) and not set(p.run) & set(p.skipped)
            room = (1 - vp.LOWER_SHARE) * budget
            assert ("naive" in p.run) == (vp.SAFETY * p.estimates["naive"] <= room)  # graphs: always (no cost)
            assert {"lower-sampled", "lower-ascent"} <= set(p.run)
            assert prev <= set(p.run)
            prev = set(p.run)
            used = sum(vp.SAFETY * p.estimates[v] for v in p.run if v in p.estimates)
            assert used <= room * (1 + 1e-12)
            assert all(why.startswith("skipped: budget (estimated ") for why in p.skipped.values())
        assert prev == set(full.run)  # a large budget runs the whole default set


def test_budget_skips_are_shown(capsys, tmp_path, monkeypatch) -> None:
    from lipcore import calibrate

    # the MLP guard's rate pinned at 10 GFLOP/s (it is measured per machine otherwise)
    monkeypatch.setenv("LIPZOO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(calibrate, "_MEMORY", {})
    (tmp_path / "calibration.json").write_text(json.dumps({calibrate.device_key(torch.device("cpu")): {"dense": 1e10}}))
    Ws, bs = random_weights(5, [64, 256, 256, 8])
    path = write_weights(tmp_path, "npz", Ws, bs)
    # lipcore's MLP estimate here: ~0.018 s per upper bound (naive included); 2x of it fits in 3/4 of 0.06 s once
    argv = [path, "-a", "relu", "-v", "naive,eclipse-fast,sh-combined,lower-sampled", "--budget", "0.06",
            "-o", "lower-sampled.samples=4"]
    doc, _ = bound_json(capsys, *argv)
    assert set(doc["skipped"]) == {"eclipse-fast", "sh-combined"} and "eclipse-fast" not in doc["results"]
    assert doc["results"]["naive"]["status"] == "ok"
    rc, out, _ = cli(capsys, "bound", *argv)
    row = next(line for line in out.splitlines() if "eclipse-fast" in line)
    assert rc == 0 and "skipped: budget (estimated" in row


def test_manifest_reinit_zero_key() -> None:
    """`reinit_zero = true` in a timm entry: checked like every key, recorded in the revision, re-drawn on fetch
    from the revision alone (a catalog row's revision re-fetches the same weights)."""
    pytest.importorskip("timm")
    from flows import hubs
    from flows.zoo import ZooError, parse_zoo

    def entry(**kw: Any) -> Any:
        return parse_zoo({"name": "z", "models": [{"hub": "timm", "models": ["test_resnet"], "pretrained": False,
                                                   **kw}]}).entries[0]

    with pytest.raises(ZooError, match="reinit_zero must be true or false"):
        entry(reinit_zero="yes")
    (ref,) = hubs.discover(entry(reinit_zero=True, seed=2))
    assert ref.revision.startswith("random-init:seed=2:reinit-zero:timm=")
    a = hubs.fetch(ref, entry().settings)  # settings without the key: the revision decides
    assert a.info["reinit_zero"] and "notes" not in a.info
    (plain,) = hubs.discover(entry(seed=2))
    b = hubs.fetch(plain, entry().settings)
    assert "degenerate weights" in b.info["notes"][0] and b.info["zero_weights"] == a.info["reinit_zero"]
