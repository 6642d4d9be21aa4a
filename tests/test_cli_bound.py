"""`lipzoo bound`: JSON schema with real values, the table, and bad input as exit 2 with one stderr line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_loaders import random_weights, write_weights
from torch import nn

from lipzoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
LIPZOO = ROOT / ".venv" / "bin" / "lipzoo"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def spectral_product(Ws: list[np.ndarray]) -> float:
    return float(np.prod([np.linalg.norm(W, 2) for W in Ws]))


@pytest.fixture
def net_file(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    Ws, bs = random_weights(21, [4, 12, 10, 2])
    return write_weights(tmp_path, "npz", Ws, bs), Ws


def test_json_naive_is_the_product_of_spectral_norms(capsys, net_file) -> None:
    path, Ws = net_file
    rc, out, err = run_cli(capsys, "bound", path, "--variant", "naive", "--activation", "relu", "--json",
                           "--device", "cpu")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["model"] == "net.npz"
    assert set(doc["results"]) == {"naive"}
    r = doc["results"]["naive"]
    assert {"value", "seconds", "status", "reason"} <= set(r)
    assert r["status"] == "ok" and r["reason"] is None and isinstance(r["seconds"], float) and r["seconds"] >= 0
    assert r["value"] == pytest.approx(spectral_product(Ws), rel=1e-12)
    assert doc["summary"]["widths"] == [4, 12, 10, 2]


def test_json_slope_scales_naive(capsys, net_file) -> None:
    path, Ws = net_file
    for slope in (["--slope=-0.5,1.5"], ["--slope", "-0.5,1.5"], ["--slope", "-5e-1, 1.5"]):
        rc, out, err = run_cli(capsys, "bound", path, "--variant", "naive", *slope, "--json")
        assert rc == 0, err
        value = json.loads(out)["results"]["naive"]["value"]
        assert value == pytest.approx(spectral_product(Ws) * 1.5 ** 2, rel=1e-12)


def test_json_several_variants_real_values(capsys, net_file) -> None:
    pytest.importorskip("lipcore.mlp.closed_form")
    pytest.importorskip("lipcore.lower")
    from eclipse_nn.eclipsE_fast import ECLipsE_Fast

    path, Ws = net_file
    rc, out, err = run_cli(capsys, "bound", path, "-v", "naive,eclipse-fast", "-v", "sh-combined",
                           "--variant", "lower-sampled", "-a", "relu", "--json", "--device", "cpu")
    assert rc == 0, err
    res = json.loads(out)["results"]
    assert list(res) == ["naive", "eclipse-fast", "sh-combined", "lower-sampled"]
    assert all(r["status"] == "ok" for r in res.values()), res
    ref = float(ECLipsE_Fast([torch.tensor(W) for W in Ws], [0.0, 0.0], [1.0, 1.0]))
    assert res["eclipse-fast"]["value"] == pytest.approx(ref, rel=1e-9)
    lower = res["lower-sampled"]["value"]
    assert 0 < lower <= res["sh-combined"]["value"] <= res["eclipse-fast"]["value"] * (1 + 1e-12)
    assert res["eclipse-fast"]["value"] <= res["naive"]["value"]


def test_table_output(capsys, net_file) -> None:
    pytest.importorskip("lipcore.mlp.closed_form")
    path, Ws = net_file
    rc, out, err = run_cli(capsys, "bound", path, "-v", "naive,eclipse-fast,lower-sampled", "-a", "relu")
    assert rc == 0 and err == ""
    assert "net.npz: MLP, 3 layers, widths 4-12-10-2, activation relu (slopes [0, 1])" in out
    for word in ("variant", "ratio", "seconds", "naive", "eclipse-fast", "lower-sampled", "best lower bound"):
        assert word in out
    naive_row = next(line for line in out.splitlines() if " naive " in line)
    assert f"{spectral_product(Ws):.6g}" in naive_row


def test_table_without_lower_bound_says_how_to_get_the_ratio(capsys, net_file) -> None:
    rc, out, _ = run_cli(capsys, "bound", net_file[0], "-v", "naive", "-a", "relu")
    assert rc == 0 and "add --variant lower-ascent" in out


def test_refused_or_failed_variants_still_exit_zero(capsys, net_file) -> None:
    rc, out, _ = run_cli(capsys, "bound", net_file[0], "-v", "naive,eclipse-fast", "-a", "relu", "--budget",
                         "1e-9", "--json")
    assert rc == 0
    doc = json.loads(out)
    res, skipped = doc["results"], doc["skipped"]
    assert set(res) | set(skipped) == {"naive", "eclipse-fast"}
    assert all(r["status"] in ("failed", "refused") and r["value"] is None and "budget" in r["reason"]
               for r in res.values())
    assert all(why.startswith("skipped: budget") for why in skipped.values())


def test_options_reach_the_variants(capsys, net_file) -> None:
    pytest.importorskip("lipcore.mlp.closed_form")
    rc, out, err = run_cli(capsys, "bound", net_file[0], "-v", "sh-spectral", "-a", "relu", "--json",
                           "--option", "sh-spectral.c_grid=[1.0]")
    assert rc == 0, err
    one_c = json.loads(out)["results"]["sh-spectral"]["value"]
    rc, out, _ = run_cli(capsys, "bound", net_file[0], "-v", "eclipse-fast", "-a", "relu", "--json")
    assert one_c == pytest.approx(json.loads(out)["results"]["eclipse-fast"]["value"], rel=1e-12)  # SN(1) = Fast


def test_module_state_dict_with_batchnorm_through_the_cli(capsys, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    net = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2)).double().eval()
    with torch.no_grad():
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.uniform_(-2, 2)
    save_file(net.state_dict(), str(tmp_path / "bn.safetensors"), metadata={"activation": "tanh"})
    rc, out, err = run_cli(capsys, "bound", tmp_path / "bn.safetensors", "-v", "naive", "--json", "--bn-eps",
                           str(net[1].eps))
    assert rc == 0, err
    s = net[1]
    W1 = (s.weight / torch.sqrt(s.running_var + s.eps)).detach().numpy()[:, None] * net[0].weight.detach().numpy()
    want = np.linalg.norm(W1, 2) * np.linalg.norm(net[3].weight.detach().numpy(), 2)
    assert json.loads(out)["results"]["naive"]["value"] == pytest.approx(want, rel=1e-12)
    # without eps the bound covers every eps >= 0 (eps = 0 scales: never below the eps model's) and says so
    rc, out, err = run_cli(capsys, "bound", tmp_path / "bn.safetensors", "-v", "naive", "--json")
    doc = json.loads(out)
    assert doc["results"]["naive"]["value"] >= want and "does not store eps" in doc["summary"]["assumptions"][0]


def test_help_teaches(capsys) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["bound", "--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    from lipcore.activations import SUPPORTED
    from lipcore.variants import VARIANTS

    for vid, spec in VARIANTS.items():
        assert vid in out and spec.description[:30] in out
    for name in SUPPORTED:
        assert name in out
    assert "examples:" in out and "--slope -0.1,1.1" in out and ".mat" in out


# -- bad input: exit 2, one line on stderr naming the file and the problem, no traceback -------------------------
def _bad_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    Ws, bs = random_weights(22)
    cases: dict[str, tuple[list[str], str]] = {}
    p = write_weights(tmp, "npz", Ws, bs, stem="garbage")
    p.write_bytes(os.urandom(500))
    cases["garbage-npz"] = ([str(p), "-a", "relu"], "corrupt or truncated")
    p = write_weights(tmp, "safetensors", Ws, bs, stem="trunc")
    p.write_bytes(p.read_bytes()[:200])
    cases["truncated-safetensors"] = ([str(p), "-a", "relu"], "corrupt or unreadable")  # the hubs' words
    p = write_weights(tmp, "pt", Ws, bs, stem="trunc")
    p.write_bytes(p.read_bytes()[:300])
    cases["truncated-pt"] = ([str(p), "-a", "relu"], "corrupt or truncated")
    (tmp / "empty.mat").write_bytes(b"")
    cases["empty-mat"] = ([str(tmp / "empty.mat"), "-a", "relu"], "empty file")
    nan = [W.copy() for W in Ws]
    nan[0][0, 0] = np.nan
    cases["nan-mat"] = ([str(write_weights(tmp, "mat", nan, bs, stem="nan")), "-a", "relu"], "contains NaN")
    inf = [W.copy() for W in Ws]
    inf[2][1, 1] = np.inf
    cases["inf-pt"] = ([str(write_weights(tmp, "pt", inf, bs, stem="inf")), "-a", "relu"], "contains Inf")
    mis = [Ws[0], Ws[1][:, :3], Ws[2]]
    cases["shape-npz"] = ([str(write_weights(tmp, "npz", mis, None, stem="mis")), "-a", "relu"], "shape mismatch")
    torch.save(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).state_dict(),
               tmp / "cnn.pt")
    cases["conv-pt"] = ([str(tmp / "cnn.pt"), "-a", "relu"], "state-dict files must hold MLPs")
    good = write_weights(tmp, "npz", Ws, bs, stem="good")
    cases["bad-activation"] = ([str(good), "-a", "swishy"], "unsupported activation 'swishy'")
    cases["no-activation"] = ([str(good)], "pass --activation NAME")
    cases["missing-file"] = ([str(tmp / "absent.npz"), "-a", "relu"], "file not found")
    cases["unknown-variant"] = ([str(good), "-a", "relu", "-v", "fastest"], "unknown variant 'fastest'")
    cases["bad-slope"] = ([str(good), "--slope", "1,x"], "bad --slope")
    cases["bad-option"] = ([str(good), "-a", "relu", "-o", "nodot=1"], "bad --option")
    return cases


BAD = ["garbage-npz", "truncated-safetensors", "truncated-pt", "empty-mat", "nan-mat", "inf-pt", "shape-npz",
       "conv-pt", "bad-activation", "no-activation", "missing-file", "unknown-variant", "bad-slope", "bad-option"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exit_2_one_line(capsys, tmp_path: Path, case: str) -> None:
    argv, needle = _bad_cases(tmp_path)[case]
    rc, out, err = run_cli(capsys, "bound", *argv, "-v", "naive") if case != "unknown-variant" else run_cli(
        capsys, "bound", *argv)
    assert rc == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lipzoo: error: ") and "Traceback" not in err
    assert needle in lines[0]
    if case not in ("unknown-variant", "bad-slope", "bad-option"):
        assert Path(argv[0]).name in lines[0]  # names the file


def _subprocess(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    env.pop("LIPZOO_DEBUG", None)
    exe = [str(LIPZOO)] if LIPZOO.exists() else [sys.executable, "-m", "lipzoo"]
    return subprocess.run([*exe, *argv], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def test_console_script_json(net_file) -> None:
    path, Ws = net_file
    proc = _subprocess("bound", str(path), "--variant", "naive", "--activation", "relu", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"]["naive"]["value"] == pytest.approx(spectral_product(Ws), rel=1e-12)


def test_console_script_bad_file_no_traceback(tmp_path: Path) -> None:
    Ws, bs = random_weights(23)
    p = write_weights(tmp_path, "pt", Ws, bs, stem="broken")
    p.write_bytes(p.read_bytes()[:100])
    proc = _subprocess("bound", str(p), "--activation", "relu")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"lipzoo: error: {p}: cannot read PyTorch file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_unavailable_is_one_line(capsys, net_file) -> None:
    rc, out, err = run_cli(capsys, "bound", net_file[0], "-a", "relu", "-v", "naive", "--device", "cuda")
    assert rc == 2 and out == "" and len(err.splitlines()) == 1 and "CUDA is not available" in err


def test_progress_line_rewrites_itself(capsys) -> None:
    from lipcore.report import BoundResult
    from lipzoo.cli.bound import _Progress

    prog = _Progress(["naive", "lower-ascent"], enabled=True)
    prog("naive", BoundResult("naive", "upper", "ok", 1.0, 0.25))
    prog.close()
    err = capsys.readouterr().err
    assert err.startswith("\r\x1b[K[0/2] running naive ...")
    assert "[1/2] naive ok (0.25s); running lower-ascent ..." in err and err.endswith("\r\x1b[K")
    assert "\n" not in err
    quiet = _Progress(["naive"], enabled=False)
    quiet("naive", BoundResult("naive", "upper", "ok", 1.0, 0.25))
    assert capsys.readouterr().err == ""


def _arch_file(tmp_path: Path, layers: list, module: nn.Module, stem: str, shape: list[int]) -> Path:
    from safetensors.torch import save_file

    meta = {"lipzoo.arch": json.dumps({"kind": "sequential", "layers": layers}),
            "lipzoo.input_shape": json.dumps(shape)}
    p = tmp_path / f"{stem}.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(p), metadata=meta)
    return p


def test_safetensors_with_architecture_metadata_is_rebuilt(capsys, tmp_path: Path) -> None:
    pytest.importorskip("flows.hubs.archs")
    torch.manual_seed(5)
    mlp = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    p = _arch_file(tmp_path, [["linear", {"in_features": 5, "out_features": 7}], ["tanh", {}],
                              ["linear", {"in_features": 7, "out_features": 2}]], mlp, "mlp_arch", [5])
    rc, out, err = run_cli(capsys, "bound", p, "-v", "naive", "--json")  # no --activation: the arch names it
    assert rc == 0, err
    doc = json.loads(out)
    want = spectral_product([mlp[0].weight.detach().double().numpy(), mlp[2].weight.detach().double().numpy()])
    assert doc["model"] == "mlp_arch.safetensors"
    assert doc["results"]["naive"]["value"] == pytest.approx(want, rel=1e-6)


def test_safetensors_cnn_reaches_the_graph_engine_or_says_why(capsys, tmp_path: Path) -> None:
    pytest.importorskip("flows.hubs.archs")
    torch.manual_seed(6)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2))
    p = _arch_file(tmp_path, [["conv2d", {"in_channels": 1, "out_channels": 3, "kernel_size": 3, "padding": 1}],
                              ["relu", {}], ["flatten", {}], ["linear", {"in_features": 48, "out_features": 2}]],
                   cnn, "cnn_arch", [1, 4, 4])
    rc, out, err = run_cli(capsys, "bound", p, "-v", "naive", "--json")
    try:
        import lipcore.graph  # noqa: F401
    except ImportError:
        assert rc == 2 and err.splitlines() == ["lipzoo: error: cnn_arch.safetensors: unsupported layer Conv2d at '0'"]
        return
    assert rc == 0, err
    naive = json.loads(out)["results"]["naive"]
    assert naive["status"] == "ok"
    # a sound bound is at least the largest Jacobian norm we can find by sampling
    x = torch.randn(200, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    jac = torch.func.vmap(torch.func.jacrev(lambda v: cnn(v[None])[0]))(x).reshape(200, 2, 16)
    assert naive["value"] >= torch.linalg.matrix_norm(jac, ord=2).max().item() * (1 - 1e-6)


def test_safetensors_with_a_broken_architecture_is_one_line(capsys, tmp_path: Path) -> None:
    pytest.importorskip("flows.hubs.archs")
    mlp = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    p = _arch_file(tmp_path, [["linear", {"in_features": 5, "out_features": 3}], ["tanh", {}],
                              ["linear", {"in_features": 3, "out_features": 2}]], mlp, "wrong_arch", [5])
    rc, out, err = run_cli(capsys, "bound", p, "-v", "naive")
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and "wrong_arch.safetensors" in err and "do not match" in err


def test_eclipse_benchmark_mat_file_matches_the_eclipse_package(capsys, tmp_path: Path) -> None:
    """lyr10n20.mat written exactly as ECLipsE's generate_random_weights.py does, bounded through the CLI."""
    pytest.importorskip("lipcore.mlp.closed_form")
    from eclipse_nn.eclipsE_fast import ECLipsE_Fast
    from scipy.io import savemat

    from lipcore.mlp.benchnets import eclipse_weights

    Ws = eclipse_weights(10, 20)
    cells = np.empty((1, len(Ws)), dtype=object)
    for k, W in enumerate(Ws):
        cells[0, k] = W
    savemat(tmp_path / "lyr10n20.mat", {"weights": cells})
    rc, out, err = run_cli(capsys, "bound", tmp_path / "lyr10n20.mat", "-a", "relu", "-v", "naive,eclipse-fast",
                           "--json")
    assert rc == 0, err
    res = json.loads(out)["results"]
    ref = float(ECLipsE_Fast([torch.tensor(W) for W in Ws], [0.0] * 9, [1.0] * 9))
    assert res["eclipse-fast"]["value"] == pytest.approx(ref, rel=1e-9)
    assert res["naive"]["value"] == pytest.approx(spectral_product(Ws), rel=1e-12)
    assert res["eclipse-fast"]["value"] < res["naive"]["value"]
