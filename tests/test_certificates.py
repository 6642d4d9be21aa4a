"""Certificates (issue 14): the radius statement, the linear oracle, the catalog table (migration, upsert,
ranking) and the audit stage. Real lipcore bounds, real DuckDB files, real Prefect flows."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

import lipcore
from flows.certify import (
    SQRT2,
    certified_accuracy,
    certified_radii,
    load_eval,
    logits_fn,
    summarize,
    true_margins,
)

DEMO = Path(__file__).resolve().parent.parent / "deploy" / "zoos" / "demo"


# -- the math -------------------------------------------------------------------------------------------
def _best_upper(target, **kw) -> float:
    rep = lipcore.analyze(target, ["naive", "eclipse-fast"], device="cpu", **kw)
    return float(rep.best_upper().value)


def test_linear_oracle_radius_is_exact():
    """Two classes with w_2 = -w_1: ||W||_2 = sqrt(2) ||w_1|| so sqrt(2) L = ||w_1 - w_2|| and the certified
    radius m / (sqrt(2) L) is exactly the distance to the decision boundary (w_1 - w_2).x + b_1 - b_2 = 0."""
    rng = np.random.default_rng(3)
    d = 12
    w = rng.normal(size=d)
    b = 0.3
    W = np.stack([w, -w])
    mlp = lipcore.MLP([W], [], [np.array([b, -b])], name="linear")
    L = _best_upper(mlp)
    assert L == pytest.approx(SQRT2 * np.linalg.norm(w), rel=1e-12)
    x = rng.normal(size=(200, d))
    logits = x @ W.T + np.array([b, -b])
    y = np.where(rng.random(200) < 0.8, logits.argmax(1), 1 - logits.argmax(1))  # some misclassified
    r = certified_radii(true_margins(logits, y), L)
    dw, db = W[0] - W[1], 2 * b
    exact = np.abs(x @ dw + db) / np.linalg.norm(dw)
    correct = logits.argmax(1) == y
    assert np.max(np.abs(r[correct] - exact[correct])) < 1e-9
    assert np.all(r[~correct] == 0)
    # and it is tight: a step just beyond the radius towards the boundary flips the prediction
    i = int(np.flatnonzero(correct)[0])
    s = np.sign(x[i] @ dw + db)
    xp = x[i] - s * dw / np.linalg.norm(dw) * r[i] * (1 + 1e-6)
    assert np.sign(xp @ dw + db) != s


def test_certified_accuracy_counts():
    m = np.array([-1.0, 0.0, 1.0, 2.0, 4.0])
    L = 1 / SQRT2  # radius = margin
    assert certified_accuracy(m, L, 0.0) == pytest.approx(3 / 5)
    assert certified_accuracy(m, L, 1.0) == pytest.approx(2 / 5)  # radius must exceed eps
    assert certified_accuracy(m, L, 3.9) == pytest.approx(1 / 5)
    s = summarize(m, L, (0.0, 1.0))
    assert s["clean_accuracy"] == pytest.approx(0.6) and s["median_radius"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        certified_radii(m, 0.0)


def _attack(f_torch, x: torch.Tensor, y: torch.Tensor, radius: torch.Tensor, steps: int = 30) -> torch.Tensor:
    """PGD on the true-label margin inside the l2 ball of `radius` per sample (projected each step)."""
    delta = torch.zeros_like(x, requires_grad=True)
    shape = (-1,) + (1,) * (x.ndim - 1)
    for _ in range(steps):
        out = f_torch(x + delta)
        top = out.gather(1, y[:, None])[:, 0]
        other = out.clone()
        other[torch.arange(len(y)), y] = -torch.inf
        loss = (top - other.max(1).values).sum()
        (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            gn = g.flatten(1).norm(dim=1).clamp_min(1e-30).reshape(shape)
            delta -= (radius.reshape(shape) / 4) * g / gn
            n = delta.flatten(1).norm(dim=1).reshape(shape)
            delta *= torch.clamp(radius.reshape(shape) / n.clamp_min(1e-30), max=1.0)
    return delta.detach()


@pytest.mark.parametrize("name", ["mlp_relu", "mlp_tanh", "cnn_small"])
def test_no_perturbation_below_the_radius_flips(name):
    """Random and gradient-directed perturbations of norm 0.999 r(x) never change a certified prediction."""
    from flows.hubs import fetch
    from flows.hubs.local import REV_LEN, file_digest
    from flows.refs import ModelRef, Settings

    path = DEMO / "digits" / f"{name}.safetensors"
    ref = ModelRef("local", f"demo/digits/{name}.safetensors", file_digest(path)[:REV_LEN], location=str(path))
    loaded = fetch(ref, Settings(variants=("eclipse-fast",), input_shape=(1, 8, 8)))
    kw = {"input_shape": loaded.input_shape} if loaded.input_shape else {}
    if loaded.activation:
        kw["activation"] = loaded.activation
    L = _best_upper(loaded.target, **kw)
    data = load_eval("builtin:digits", limit=120)
    f = logits_fn(loaded.target, loaded.activation, loaded.input_shape)
    m = true_margins(f(data.x), data.y)
    r = certified_radii(m, L)
    keep = r > 0
    assert keep.mean() > 0.5
    x, y, rr = data.x[keep].astype(np.float64), data.y[keep], r[keep] * 0.999

    if isinstance(loaded.target, torch.nn.Module):
        mod = loaded.target.double().eval()
        shape = loaded.input_shape
        f_t = lambda z: mod(z.reshape((len(z), *shape)))  # noqa: E731
    else:
        mlp = lipcore.api.load_target(loaded.target, activation=loaded.activation)
        f_t = mlp.torch_callable("cpu", torch.float64)
    xt, yt, rt = torch.as_tensor(x), torch.as_tensor(y), torch.as_tensor(rr)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # random directions on the sphere of radius 0.999 r
        d = torch.randn(xt.shape, generator=g, dtype=torch.float64)
        d = d / d.norm(dim=1, keepdim=True) * rt[:, None]
        with torch.no_grad():
            assert torch.equal(f_t(xt + d).argmax(1), yt)
    delta = _attack(f_t, xt, yt, rt)
    assert torch.all(delta.norm(dim=1) <= rt * (1 + 1e-9))
    with torch.no_grad():
        pred = f_t(xt + delta).argmax(1)
    assert torch.equal(pred, yt)
    # the attack is real: at 20x the radius it flips some predictions
    delta = _attack(f_t, xt, yt, rt * 20)
    with torch.no_grad():
        assert (f_t(xt + delta).argmax(1) != yt).any()


def test_eval_loading(tmp_path):
    d = load_eval("builtin:digits")
    assert len(d) == 360 and d.x.shape == (360, 64) and 0 <= d.x.min() and d.x.max() <= 1
    np.savez(tmp_path / "e.npz", x=d.x[:10], y=d.y[:10])
    e = load_eval("e.npz", base_dir=tmp_path)
    assert len(e) == 10 and e.digest != d.digest
    from flows.certify import EvalError

    with pytest.raises(EvalError, match="does not exist"):
        load_eval("nope.npz", base_dir=tmp_path)
    np.savez(tmp_path / "bad.npz", a=d.x)
    with pytest.raises(EvalError, match="x and y"):
        load_eval(tmp_path / "bad.npz")


def test_preprocess_and_manifest_keys():
    from flows.certify import apply_preprocess
    from flows.zoo import ZooError, parse_zoo

    x = np.ones((2, 3, 2, 2), dtype=np.float32)
    z = apply_preprocess(x, {"mean": [0.5, 0.5, 0.0], "std": [0.5, 0.25, 1.0]})
    assert z[0, 0, 0, 0] == pytest.approx(1.0) and z[0, 1, 0, 0] == pytest.approx(2.0) and z[0, 2, 0, 0] == 1.0
    zoo = parse_zoo({"name": "z", "eps": [0.5, 0.1], "models": [
        {"hub": "bench", "nets": ["lyr2n20"], "eval": "builtin:digits", "preprocess": {"mean": 0.5, "std": 0.25}}]})
    c = zoo.entries[0].settings.certify
    assert c["eval"] == "builtin:digits" and c["eps"] == (0.1, 0.5) and c["preprocess"]["std"] == [0.25]
    with pytest.raises(ZooError, match="eps"):
        parse_zoo({"name": "z", "models": [{"hub": "bench", "nets": ["lyr2n20"], "eps": [-1]}]})
    with pytest.raises(ZooError, match="std"):
        parse_zoo({"name": "z", "models": [{"hub": "bench", "nets": ["lyr2n20"], "preprocess": {"std": 0}}]})


# -- the catalog ----------------------------------------------------------------------------------------
def _result(model: str, rev: str, value: float, variant: str = "eclipse-fast"):
    from catalogs import ResultRow

    return ResultRow(model_id=f"local:{model}", hub="local", repo_id=model, revision=rev, variant=variant,
                     kind="upper", status="ok", value=value, engine_version=lipcore.ENGINE_VERSION)


def _cert(model: str, rev: str, margins, bound: float, digest: str = "d1", when: datetime | None = None):
    from catalogs.certificates import CertificateRow

    eps = (0.0, 0.1, 0.5)
    s = summarize(np.asarray(margins, dtype=float), bound, eps)
    return CertificateRow(model_id=f"local:{model}", revision=rev, scope="best", variant="eclipse-fast",
                          engine_version=lipcore.ENGINE_VERSION, dataset="builtin:digits", dataset_digest=digest,
                          preprocess="none", eps_units="raw", bound=bound, n=s["n"],
                          clean_accuracy=s["clean_accuracy"], median_radius=s["median_radius"], eps=s["eps"],
                          certified_accuracy=s["certified_accuracy"], margins=s["margins"],
                          computed_at=when or datetime.now(UTC))


def test_migration_from_v2_keeps_results(tmp_path):
    from catalogs import Catalog, migrate
    from catalogs.schema import current_version

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    migrate(con, target=2)
    con.close()
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO models VALUES ('local:a', 'local', 'a', NULL, now(), now())")
    con.execute("INSERT INTO revisions VALUES ('local:a', 'r1', NULL, now(), now())")
    con.execute("INSERT INTO results (model_id, revision, variant, engine_version, hub, repo_id, kind, status, value, "
                "computed_at, written_at) VALUES ('local:a', 'r1', 'naive', '1', 'local', 'a', 'upper', 'ok', 2.5, "
                "now(), now())")
    assert current_version(con) == 2
    con.close()
    cat = Catalog(path)
    assert cat.schema_version == 3
    with cat.connect() as c:
        assert c.execute("SELECT value FROM results").fetchall() == [(2.5,)]
        assert c.execute("SELECT count(*) FROM certificates").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM certified_leaderboard").fetchone() == (0,)
    assert cat.leaderboard()[0]["best_upper"] == 2.5


def test_upsert_and_current(tmp_path):
    from catalogs import Catalog

    cat = Catalog(tmp_path / "c.duckdb")
    cat.write([_result("a", "r1", 2.0)])
    t0 = datetime.now(UTC)
    assert cat.write_certificates([_cert("a", "r1", [1.0, 2.0, -1.0], 2.0, when=t0)]) == 1
    cat.write_certificates([_cert("a", "r1", [1.0, 2.0, 3.0], 1.0, when=t0 + timedelta(seconds=1))])  # same key
    with cat.connect() as c:
        assert c.execute("SELECT count(*), max(bound) FROM certificates").fetchone() == (1, 1.0)
    # new data: a new row; the newest is current
    cat.write_certificates([_cert("a", "r1", [5.0], 1.0, digest="d2", when=t0 + timedelta(seconds=2))])
    with cat.connect() as c:
        assert c.execute("SELECT count(*) FROM certificates").fetchone() == (2,)
        assert c.execute("SELECT dataset_digest, n FROM current_certificates").fetchall() == [("d2", 1)]


def test_ranking_by_certified_accuracy(tmp_path):
    from catalogs import Catalog

    cat = Catalog(tmp_path / "c.duckdb")
    cat.write([_result("a", "r1", 1.0), _result("b", "r1", 1.0), _result("c", "r1", 1.0)])
    L = 1 / SQRT2  # radius = margin
    cat.write_certificates([_cert("a", "r1", [0.3, 0.3, 0.05, -1], L), _cert("b", "r1", [0.6, 0.6, 0.6, 0.6], L),
                            _cert("c", "r1", [0.3, 0.3, 0.05, 0.05], L)])
    lb = cat.certified_leaderboard(0.2)
    assert [(r["model_id"], r["rank"], r["certified_accuracy"]) for r in lb] == [
        ("local:b", 1, 1.0), ("local:a", 2, 0.5), ("local:c", 2, 0.5)]
    lb = cat.certified_leaderboard(0.01)  # an eps nobody stored: from the margins
    assert [r["model_id"] for r in lb] == ["local:b", "local:c", "local:a"]
    assert lb[2]["certified_accuracy"] == pytest.approx(0.75)
    with cat.connect() as c:
        rows = c.execute("SELECT model_id, rank, certified_accuracy FROM certified_leaderboard WHERE eps = 0.1 "
                         "ORDER BY rank, model_id").fetchall()
    assert rows == [("local:b", 1, 1.0), ("local:a", 2, 0.5), ("local:c", 2, 0.5)]
    # history and the parquet export carry them
    assert len(cat.certificate_history("local:a")) == 1
    out = cat.export(tmp_path / "pq")
    assert out["certificates"]["rows"] == 3


# -- the audit stage (real Prefect flow) -----------------------------------------------------------------
@pytest.mark.usefixtures("prefect_harness")
def test_audit_writes_certificates_and_recomputes_on_change(tmp_path):
    from catalogs import Catalog
    from flows.audit import audit_zoo

    def zoo(eps, pattern=("digits/mlp_relu.safetensors",)):
        return {"name": "cert", "variants": ["naive", "eclipse-fast"], "eps": eps, "models": [
            {"hub": "local", "path": str(DEMO), "pattern": list(pattern), "eval": "builtin:digits",
             "certify_variants": ["naive"]}]}

    cat_path = tmp_path / "a.duckdb"
    s1 = audit_zoo(zoo([0.0, 0.1]), catalog=str(cat_path), device="cpu")
    assert s1["certified"] == 2 and not s1["certificate_problems"]  # best + naive
    cat = Catalog(cat_path)
    lb = cat.certified_leaderboard(0.1)
    assert len(lb) == 1 and lb[0]["variant"] == "eclipse-fast" and lb[0]["clean_accuracy"] > 0.9
    best = cat.leaderboard()[0]["best_upper"]
    assert lb[0]["bound"] == pytest.approx(best)
    assert 0 < lb[0]["certified_accuracy"] < lb[0]["clean_accuracy"]
    s2 = audit_zoo(zoo([0.0, 0.1]), catalog=str(cat_path), device="cpu")
    assert s2["certified"] == 0 and s2["certificates_up_to_date"] == 2
    s3 = audit_zoo(zoo([0.0, 0.2]), catalog=str(cat_path), device="cpu")  # eps changed: recomputed in place
    assert s3["certified"] == 2
    with cat.connect() as c:
        assert c.execute("SELECT count(*) FROM certificates").fetchone() == (2,)
        assert c.execute("SELECT eps FROM current_certificates WHERE scope = 'best'").fetchone() == ([0.0, 0.2],)
    # a model whose bound changes (a better variant appears) gets a new certificate from the new best bound
    z = zoo([0.0, 0.2])
    z["variants"] = ["naive", "eclipse-fast", "sh-combined"]
    s4 = audit_zoo(z, catalog=str(cat_path), device="cpu")
    new_best = cat.leaderboard()[0]
    if new_best["best_upper"] < best * (1 - 1e-12):
        assert s4["certified"] == 1 and cat.certified_leaderboard(0.2)[0]["bound"] == new_best["best_upper"]
    assert math.isfinite(cat.certified_leaderboard(0.2)[0]["median_radius"])


# -- the report -----------------------------------------------------------------------------------------
def _report_catalog(tmp_path):
    from catalogs import Catalog

    cat = Catalog(tmp_path / "r.duckdb")
    cat.write([_result("a", "r1", 1.0), _result("b", "r1", 2.0), _result("nodata", "r1", 3.0)])
    rng = np.random.default_rng(0)
    cat.write_certificates([_cert("a", "r1", rng.normal(1.0, 0.5, 300), 1.0),
                            _cert("b", "r1", rng.normal(1.5, 0.5, 300), 2.0)])
    return cat


def test_report_has_certified_curves(tmp_path):
    import re

    from flows.report import write_report

    cat = _report_catalog(tmp_path)
    html = write_report(cat.path, tmp_path / "report.html").read_text()
    assert html.count('class="certified-compare"') == 1 and 'data-series="2"' in html
    for m in ("local:a", "local:b"):
        assert re.search(rf'<svg[^>]*class="certified-model"[^>]*aria-label="[^"]*{m}"', html)
        assert f'class="curve" data-model="{m}"' in html
    assert "local:nodata" not in html.split("<h2>Certified accuracy</h2>")[1]
    assert html.count('class="clean"') == 4  # clean accuracy marked on each curve (compare + per model)
    assert "raw</b> input units" in html
    # the curve starts at the clean accuracy and only goes down
    d = re.search(r'class="curve" data-model="local:a"><path d="([^"]+)"', html).group(1)
    ys = [float(y) for y in re.findall(r"[ML] [-\d.e]+ ([-\d.e]+)", d)]
    assert len(ys) > 50  # a step per sample (300 margins), not a smoothed line
    assert all(b >= a - 1e-9 for a, b in zip(ys, ys[1:], strict=False))  # SVG y grows downwards


def test_report_certified_curves_in_headless_chromium(tmp_path):
    import re

    from test_report import _chromium, _run_chromium

    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/system-deps does it in CI)")
    from PIL import Image, ImageStat

    from flows.report import write_report

    cat = _report_catalog(tmp_path)
    out = write_report(cat.path, tmp_path / "report.html")
    dom = _run_chromium(exe, tmp_path, "--dump-dom", out.resolve().as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert re.search(r'<svg[^>]*class="certified-compare"', dom.stdout)
    assert len(re.findall(r'<svg[^>]*class="certified-model"', dom.stdout)) == 2
    png = tmp_path / "report.png"
    shot = _run_chromium(exe, tmp_path, f"--screenshot={png}", "--window-size=1000,4200", out.resolve().as_uri())
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    img = Image.open(png).convert("RGB")
    assert max(ImageStat.Stat(img).var) > 300, "the screenshot looks blank"
    # the comparison figure draws the second model in red: red pixels are only in the certified section
    a = np.asarray(img)
    red_rows = np.flatnonzero((a == [214, 39, 40]).all(-1).any(1))
    assert len(red_rows) > 50, "the certified-accuracy comparison curves are not visible"
    keep = Path(__file__).resolve().parents[1] / "out"
    if keep.is_dir():
        shutil_copy = __import__("shutil").copy
        shutil_copy(png, keep / "report_certified.png")


def test_cli_leaderboard_by_certified_accuracy_and_history(tmp_path, capsys):
    import json

    from lipzoo.cli import main

    cat = _report_catalog(tmp_path)
    rc = main(["leaderboard", "--by", "certified-accuracy", "--eps", "0.5", "--format", "json",
               "--catalog", str(cat.path)])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    ranked = [r for r in rows if r["rank"] is not None]
    assert [r["model_id"] for r in ranked] == [r["model_id"] for r in cat.certified_leaderboard(0.5)]
    assert ranked[0]["certified_accuracy"] >= ranked[1]["certified_accuracy"]
    assert rows[-1]["model_id"] == "local:nodata" and rows[-1]["rank"] is None  # bound-only row kept
    assert main(["history", "local:a", "--certificates", "--format", "json", "--catalog", str(cat.path)]) == 0
    (h,) = json.loads(capsys.readouterr().out)
    assert h["scope"] == "best" and h["eps"] == [0.0, 0.1, 0.5]


def test_timm_preprocess_comes_from_pretrained_cfg():
    timm = pytest.importorskip("timm")
    from flows.certify import EvalError, apply_preprocess, preprocess_spec, timm_preprocess

    assert preprocess_spec("timm") == "timm"
    model = timm.create_model("test_resnet", pretrained=False)
    pre = timm_preprocess(model)
    assert pre["mean"] == pytest.approx(list(model.pretrained_cfg["mean"]))
    assert pre["std"] == pytest.approx(list(model.pretrained_cfg["std"]))
    x = np.full((1, 3, 4, 4), 0.5, dtype=np.float32)
    z = apply_preprocess(x, pre)
    assert z[0, 0, 0, 0] == pytest.approx((0.5 - pre["mean"][0]) / pre["std"][0], rel=1e-6)
    with pytest.raises(EvalError, match="pretrained_cfg"):
        timm_preprocess(torch.nn.Linear(2, 2))
