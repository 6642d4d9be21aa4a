"""Hubs against real files and a real (local) HTTP hub: discovery, revisions, fetching by reference.

No Prefect here: these exercise flows.hubs directly (huggingface_hub and timm are the real libraries,
talking to tests/fakehub.py on 127.0.0.1).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakehub import FakeHub
from safetensors.torch import save_file
from torch import nn

from flows import hubs
from flows.hubs import HubError, Unsupported, archs, bench, hf, is_transient, local, timm_hub
from flows.refs import ModelRef, Settings, Unresolved
from flows.tasks import HardStopped, call_with_hard_stop
from flows.zoo import Entry

S = Settings(variants=("naive", "eclipse-fast"))


def mlp_bytes(tmp: Path, seed: int, act: str = "relu", widths: tuple[int, ...] = (6, 8, 8, 3)) -> bytes:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if k < len(widths) - 2:
            layers.append(nn.ReLU() if act == "relu" else nn.Tanh())
    p = tmp / f"mlp{seed}.safetensors"
    save_file(nn.Sequential(*layers).state_dict(), str(p), metadata={"activation": act})
    return p.read_bytes()


def entry(hub: str, **params: object) -> Entry:
    return Entry(hub, dict(params), S, f"{hub}#test")


@pytest.fixture
def hub():
    with FakeHub() as h:
        yield h


@pytest.fixture
def online(monkeypatch, tmp_path):
    """huggingface_hub online against the fake hub, with a private cache (conftest makes the suite offline)."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path


# -- hf -------------------------------------------------------------------------------------------------
def test_hf_discover_author_and_missing_repo(hub, online):
    s1 = hub.publish("org/a", {"model.safetensors": mlp_bytes(online, 1)})
    s2 = hub.publish("org/b", {"model.safetensors": mlp_bytes(online, 2)})
    hub.publish("other/c", {"model.safetensors": mlp_bytes(online, 3)})
    refs = hf.discover(entry("hf", author="org", repos=["org/missing"], endpoint=hub.url))
    ok = {r.repo_id: r.revision for r in refs if isinstance(r, ModelRef)}
    assert ok == {"org/a": s1, "org/b": s2}
    bad = [r for r in refs if isinstance(r, Unresolved)]
    assert [(b.model_id, b.reason.split(" (")[0]) for b in bad] == [("hf:org/missing", "repository not found")]


def test_hf_fetch_pinned_revision_mlp_through_lipcore(hub, online):
    import lipcore

    old = mlp_bytes(online, 1)
    s1 = hub.publish("org/mlp", {"model.safetensors": old})
    s2 = hub.publish("org/mlp", {"model.safetensors": mlp_bytes(online, 2)}, title="retrain")
    assert s1 != s2 and hf.resolve_revision("org/mlp", "main", hub.url) == s2
    loaded = hf.fetch(ModelRef("hf", "org/mlp", s1, None, hub.url), S)  # the *old* revision, by reference
    assert Path(loaded.target).read_bytes() == old and loaded.activation == "relu"
    (online / "old.safetensors").write_bytes(old)
    via_hub = lipcore.analyze(loaded.target, ["naive", "eclipse-fast"], activation=loaded.activation)
    direct = lipcore.analyze(online / "old.safetensors", ["naive", "eclipse-fast"], activation="relu")
    for v in ("naive", "eclipse-fast"):
        assert via_hub.results[v].status == "ok"
        assert via_hub.results[v].value == pytest.approx(direct.results[v].value, rel=1e-12)
    assert via_hub.results["eclipse-fast"].value <= via_hub.results["naive"].value * (1 + 1e-9)
    # a second fetch of the same revision is a cache hit: no file download
    n = len([r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]])
    hf.fetch(ModelRef("hf", "org/mlp", s1, None, hub.url), S)
    assert len([r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]) == n


def test_hf_timm_config_loads_through_timm(hub, online):
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    p = online / "tr.safetensors"
    save_file(model.state_dict(), str(p))
    sha = hub.publish("org/tr", {"config.json": json.dumps({"architecture": "test_resnet", "num_classes": 10}),
                                 "model.safetensors": p.read_bytes()})
    loaded = hf.fetch(ModelRef("hf", "org/tr", sha, None, hub.url), Settings(variants=(), input_shape=(3, 32, 32)))
    got = loaded.target.state_dict()
    assert loaded.architecture == "test_resnet" and loaded.input_shape == (3, 32, 32)
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())


def test_hf_unknown_timm_architecture_is_unsupported(hub, online):
    sha = hub.publish("org/alien", {"config.json": json.dumps({"architecture": "no_such_arch_9000"}),
                                    "model.safetensors": mlp_bytes(online, 1)})
    with pytest.raises(Unsupported, match="no_such_arch_9000"):
        hf.fetch(ModelRef("hf", "org/alien", sha, None, hub.url), S)


def test_hf_offline_resolves_from_cache(hub, online, monkeypatch):
    import huggingface_hub.constants as c

    sha = hub.publish("org/a", {"model.safetensors": mlp_bytes(online, 1)})
    hf.fetch(ModelRef("hf", "org/a", sha, None, hub.url), S)  # populate the cache (writes refs/main? no: by sha)
    ref_file = Path(c.HF_HUB_CACHE) / "models--org--a" / "refs" / "main"
    ref_file.parent.mkdir(parents=True, exist_ok=True)
    ref_file.write_text(sha)
    hub.stop()
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert hf.resolve_revision("org/a") == sha
    assert hf.list_author("org") == [("org/a", sha)]
    assert Path(hf.fetch(ModelRef("hf", "org/a", sha), S).target).is_file()
    with pytest.raises(LookupError, match="HF_HUB_OFFLINE"):
        hf.resolve_revision("org/never-cached")


# -- local ----------------------------------------------------------------------------------------------
def test_local_revisions_follow_content(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "a.safetensors").write_bytes(mlp_bytes(tmp_path, 1))
    np.savez(d / "b.npz", W1=np.eye(3), W2=np.ones((1, 3)))
    (d / "notes.txt").write_text("not a checkpoint")
    refs = local.discover(entry("local", path=str(d)))
    assert sorted(r.repo_id for r in refs) == ["ckpt/a.safetensors", "ckpt/b.npz"]
    a = next(r for r in refs if r.repo_id.endswith("a.safetensors"))
    assert a.model_id == "local:ckpt/a.safetensors" and len(a.revision) == 16
    assert local.fetch(a, S).weights_digest.startswith(a.revision)
    (d / "a.safetensors").write_bytes(mlp_bytes(tmp_path, 2))
    with pytest.raises(HubError, match="changed since discovery"):
        local.fetch(a, S)
    a2 = next(r for r in local.discover(entry("local", path=str(d), pattern="*.safetensors")))
    assert a2.repo_id == a.repo_id and a2.revision != a.revision


def test_local_corrupt_safetensors_fails_with_reason(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (ref,) = local.discover(entry("local", path=str(d)))
    with pytest.raises(HubError, match="corrupt or unreadable safetensors"):
        local.fetch(ref, S)


def test_local_missing_folder_is_unresolved(tmp_path):
    (u,) = local.discover(entry("local", path=str(tmp_path / "nope")))
    assert isinstance(u, Unresolved) and "not found" in u.reason


def test_arch_metadata_rebuilds_cnn(tmp_path):
    spec = archs.spec_json([("conv2d", {"in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding": 1}),
                            ("relu", {}), ("flatten", {}), ("linear", {"in_features": 32, "out_features": 3})])
    torch.manual_seed(0)
    model = archs.build(spec)
    p = tmp_path / "cnn.safetensors"
    save_file(model.state_dict(), str(p), metadata={archs.ARCH_KEY: spec, archs.INPUT_SHAPE_KEY: "[1, 4, 4]"})
    loaded = hubs.load_weight_file(p, "local:cnn", S)
    assert loaded.input_shape == (1, 4, 4) and loaded.architecture == "sequential"
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(loaded.target(x), model(x))
    bad = json.dumps({"kind": "sequential", "layers": [["transformer", {}]]})
    save_file(model.state_dict(), str(p), metadata={archs.ARCH_KEY: bad})
    with pytest.raises(Unsupported, match="unsupported layer 'transformer'"):
        hubs.load_weight_file(p, "local:cnn", S)


def test_demo_files_are_small_and_load():
    root = Path(__file__).resolve().parent.parent / "deploy" / "zoos" / "demo" / "digits"
    files = sorted(root.glob("*.safetensors"))
    assert len(files) >= 6 and sum(f.stat().st_size for f in files) < 2_000_000
    cnn = hubs.load_weight_file(root / "cnn_small.safetensors", "local:cnn_small", S)
    assert isinstance(cnn.target, nn.Module) and cnn.input_shape == (1, 8, 8)
    mlp = hubs.load_weight_file(root / "mlp_tanh.safetensors", "local:mlp_tanh", S)
    assert mlp.activation == "tanh" and mlp.architecture == "mlp"


# -- bench and timm ---------------------------------------------------------------------------------------
def test_bench_digest_is_stable_under_threads():
    from lipcore.mlp.benchnets import eclipse_weights

    (ref,) = bench.discover(entry("bench", nets=["lyr5n20"]))
    assert ref.model_id == "bench:eclipse/lyr5n20"
    out: list[str] = []
    ths = [threading.Thread(target=lambda: out.append(bench.fetch(ref, S).weights_digest)) for _ in range(4)]
    [t.start() for t in ths]
    [t.join() for t in ths]
    assert len(set(out)) == 1 and out[0].startswith(ref.revision)
    net = bench.fetch(ref, S).target
    assert all(np.array_equal(a, b) for a, b in zip(net.weights, eclipse_weights(5, 20), strict=True))
    (bad,) = bench.discover(entry("bench", nets=["resnet"]))
    assert isinstance(bad, Unresolved)


def test_timm_random_init_is_seeded_and_recorded():
    refs = timm_hub.discover(entry("timm", models=["test_resnet", "no_such_model_x"], pretrained=False, seed=3))
    r = refs[0]  # explicit names are not checked against timm's registry when nothing needs the hub
    assert r.revision.startswith("random-init:seed=3:timm=")
    a = timm_hub.fetch(r, S).target.state_dict()
    b = timm_hub.fetch(r, S).target.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(Unsupported, match="unknown timm architecture"):
        timm_hub.fetch(refs[1], S)
    names = [x.repo_id for x in timm_hub.discover(entry("timm", models=["test_vit*"], pretrained=False))]
    assert "test_vit" in names


def test_timm_pretrained_auto_falls_back_offline():
    # conftest keeps the suite offline: "auto" records a seeded init, "true" makes it an unresolved failure
    (r,) = timm_hub.discover(entry("timm", models=["test_resnet"], pretrained="auto"))
    assert r.revision.startswith("random-init:seed=0")
    (u,) = timm_hub.discover(entry("timm", models=["test_resnet"], pretrained=True))
    assert isinstance(u, Unresolved) and "pretrained weights unavailable" in u.reason


# -- errors and budgets -------------------------------------------------------------------------------------
def test_is_transient(hub, online):
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    assert is_transient(ConnectionResetError("reset"))
    assert is_transient(httpx2.ConnectError("refused"))
    assert not is_transient(HubError("corrupt"))
    assert not is_transient(ValueError("bad"))

    class Resp:
        status_code = 503

    with pytest.raises(RepositoryNotFoundError) as err:
        HfApi(endpoint=hub.url).model_info("org/missing")
    assert not is_transient(err.value)
    e503 = RuntimeError("server")
    e503.response = Resp()  # type: ignore[attr-defined]
    assert is_transient(e503)


def test_hard_stop_interrupts_python_work():
    def spin() -> None:
        while True:
            pass

    t0 = time.perf_counter()
    with pytest.raises(HardStopped, match="time budget of 0.5 s exceeded"):
        call_with_hard_stop(spin, 0.5, "model")
    assert time.perf_counter() - t0 < 5
    assert call_with_hard_stop(lambda: 42, 0.5) == 42
    time.sleep(0.7)  # a cancelled stop must not fire later in this thread
