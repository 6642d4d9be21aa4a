"""`lipzoo report`: the HTML page built from a real catalog file, rendered in headless Chromium.

The catalog is populated through `Catalog.write` with ResultRow objects (three models, one of them with three
revisions); the page is checked as a browser sees it (`--dump-dom`) and as a person sees it (`--screenshot`,
non-blank pixels). Chromium comes from Debian (`apt-get install chromium`; .ci/system-deps does it in CI).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from catalogs import Catalog, ResultRow
from flows.report import bounds_plot, load_report_data, render_html, write_report

T0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)
# model -> revision -> {variant: value | ("refused"/"failed", reason)}; lower-* are measured lower bounds
ZOO: dict[str, dict[str, dict[str, float | tuple[str, str]]]] = {
    "hf:acme/mlp-small": {
        "1111111aaaaaaa": {"naive": 9.81, "eclipse-fast": 4.02, "sh-combined": 3.71, "optimized": 3.02,
                           "lipsdp-neuron": 2.98, "lower-sampled": 1.95, "lower-ascent": 2.41},
        "2222222bbbbbbb": {"naive": 8.12, "eclipse-fast": 3.55, "sh-combined": 3.30, "optimized": 2.77,
                           "lipsdp-neuron": 2.74, "lower-sampled": 1.88, "lower-ascent": 2.20},
        "3333333ccccccc": {"naive": 6.40, "eclipse-fast": 2.91, "sh-combined": 2.70, "optimized": 2.31,
                           "lipsdp-neuron": 2.29, "lower-sampled": 1.70, "lower-ascent": 2.05},
    },
    "timm:resnet18": {
        "random-init:seed=0": {"naive": 3.1e6, "eclipse-fast": 2.2e5, "sh-combined": 1.9e5, "optimized": 1.1e5,
                               "lipsdp-neuron": ("refused", "LipSDP only for plain MLPs"),
                               "lower-sampled": 41.0, "lower-ascent": 57.5},
    },
    "local:demo/mlp-tanh": {
        "sha256:abc123": {"naive": 2.5, "eclipse-fast": 1.61, "sh-combined": 1.58, "optimized": 1.49,
                          "lipsdp-neuron": ("failed", "certification failed: M_2 not positive definite"),
                          "lower-sampled": 1.31, "lower-ascent": 1.42},
    },
}
UPPER = ["naive", "eclipse-fast", "sh-combined", "optimized", "lipsdp-neuron"]


def _rows() -> list[ResultRow]:
    rows = []
    for mid, revs in ZOO.items():
        hub, _, repo = mid.partition(":")
        for i, (rev, results) in enumerate(revs.items()):
            for var, val in results.items():
                kind = "lower" if var.startswith("lower") else "upper"
                status, reason, value = ("ok", None, val) if isinstance(val, float) else (val[0], val[1], None)
                rows.append(ResultRow(model_id=mid, hub=hub, repo_id=repo, revision=rev, variant=var, kind=kind,
                                      status=status, value=value, reason=reason, seconds=0.1, engine_version="1",
                                      computed_at=T0 + timedelta(days=i, minutes=len(rows))))
    return rows


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "lipzoo.duckdb"
    cat = Catalog(path)
    # one write per revision, in time order, as successive audits would write them
    for rev_rows in _by_revision(_rows()):
        cat.write(rev_rows)
    return path


def _by_revision(rows: list[ResultRow]) -> list[list[ResultRow]]:
    groups: dict[tuple[str, str], list[ResultRow]] = {}
    for r in rows:
        groups.setdefault((r.model_id, r.revision), []).append(r)
    return sorted(groups.values(), key=lambda g: g[0].computed_at)


# ------------------------------------------------------------------------------------------ pure functions

def _tick_labels(svg: str) -> list[float]:
    """The numbers printed on one inline figure: its tick labels (every other text there is a word or ×ratio)."""
    out = []
    for t in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}text"):
        try:
            out.append(float((t.text or "").replace("\u2212", "-")))
        except ValueError:
            pass
    return out


@pytest.mark.parametrize("lo_exp", [-13, -6, -1, 0, 2, 5, 9, 14, 20])
@pytest.mark.parametrize("decades", [0.03, 0.4, 2.5, 34])
def test_bounds_axis_is_logarithmic_and_labelled_over_any_span(lo_exp, decades):
    """From 1e-13 to 1e21 and from a few percent to 34 decades: increasing, readable labels inside the range."""
    lo = 1.7 * 10.0 ** lo_exp
    hi = lo * 10 ** min(decades, 21 - lo_exp)
    rows = [{"variant": "naive", "kind": "upper", "status": "ok", "value": hi},
            {"variant": "lower-ascent", "kind": "lower", "status": "ok", "value": lo}]
    labels = sorted(_tick_labels(bounds_plot("m", rows)))
    assert len(set(labels)) == len(labels) >= 2, labels
    assert lo / 1.2 <= labels[0] and labels[-1] <= hi * 1.2, labels
    if hi / lo > 1e3:  # a wide span is labelled at powers of ten only (a log axis, not a linear one)
        assert all(math.log10(t) == pytest.approx(round(math.log10(t)), abs=1e-9) for t in labels), labels


def test_two_renders_of_one_catalog_are_byte_identical(catalog_path):
    a, b = load_report_data(catalog_path), load_report_data(catalog_path)
    b.generated_at = a.generated_at
    page = render_html(a)
    assert page == render_html(b)
    assert "<metadata" not in page and "dc:date" not in page
    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "ids must be unique across the inlined figures"
    # every reference (clip paths, marker definitions) resolves inside its own figure
    for svg in re.findall(r"<svg.*?</svg>", page, re.S):
        refs = set(re.findall(r'url\(#([^)]+)\)', svg)) | set(re.findall(r'href="#([^"]+)"', svg))
        assert refs and refs <= set(re.findall(r' id="([^"]+)"', svg)), refs - set(re.findall(r' id="([^"]+)"', svg))


def test_report_data_comes_from_the_catalog_queries(catalog_path):
    data = load_report_data(catalog_path)
    assert [r["model_id"] for r in data.leaderboard] == ["local:demo/mlp-tanh", "hf:acme/mlp-small", "timm:resnet18"]
    small = next(d for d in data.details if d.model_id == "hf:acme/mlp-small")
    assert small.revision == "3333333ccccccc"
    assert [r["revision"] for r in small.revisions] == ["1111111aaaaaaa", "2222222bbbbbbb", "3333333ccccccc"]
    assert {r["variant"]: r["value"] for r in small.latest}["optimized"] == pytest.approx(2.31)
    assert small.history["1111111aaaaaaa"]["naive"] == pytest.approx(9.81)
    resnet = next(d for d in data.details if d.model_id == "timm:resnet18")
    refused = next(r for r in resnet.latest if r["variant"] == "lipsdp-neuron")
    assert refused["status"] == "refused" and "plain MLPs" in refused["reason"]
    focus = load_report_data(catalog_path, model="acme/mlp-small")
    assert focus.focus == "hf:acme/mlp-small" and [d.model_id for d in focus.details] == ["hf:acme/mlp-small"]


def test_html_is_self_contained_and_labels_every_plot(catalog_path):
    page = render_html(load_report_data(catalog_path))
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page must not load anything"
    assert "<script" not in page
    for mid in ZOO:
        assert re.search(rf'<svg[^>]*class="bounds-plot"[^>]*data-model="{re.escape(mid)}"', page), mid
    # the tightness heat map carries the numbers: resnet18 optimized 1.1e5 / 57.5
    assert "×1913<" in page
    assert "×1.049" in page  # mlp-tanh optimized 1.49 / 1.42
    # the tooltips (SVG <title>) carry the exact values: heat-map cells, bound marks, the impossible region
    assert "<title>timm:resnet18 optimized: ×1913.0435</title>" in page
    assert "<title>timm:resnet18 lipsdp-neuron: refused LipSDP only for plain MLPs</title>" in page
    assert "<title>optimized: geometric mean ×" in page and "over 3 model(s)</title>" in page
    assert "<title>optimized: 1.49 (×1.0493 the lower bound)</title>" in page
    assert page.count("<title>below the measured lower bound: no sound upper bound can be here</title>") == 3


# ------------------------------------------------------------------------------------------ headless Chromium

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _run_chromium(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}"]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120, cwd=tmp)


def test_report_renders_in_headless_chromium(catalog_path, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/system-deps does it in CI)")
    from PIL import Image, ImageStat

    out = write_report(catalog_path, tmp_path / "report.html")
    url = out.resolve().as_uri()
    dom = _run_chromium(exe, tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    # the browser parsed the plots: one bounds plot and one history plot per model, a tightness heat map
    for mid in ZOO:
        assert re.search(rf'<svg[^>]*class="bounds-plot"[^>]*data-model="{re.escape(mid)}"', html), mid
        assert re.search(rf'<svg[^>]*class="history-plot"[^>]*data-model="{re.escape(mid)}"', html), mid
    assert html.count('class="tightness-plot"') == 1
    for var in UPPER + ["lower-sampled", "lower-ascent"]:
        assert f'data-variant="{var}"' in html and f">{var}</text>" in html, var
    # the history of the 3-revision model has its three revisions on the x axis, in order
    hist = re.search(r'<svg[^>]*class="history-plot"[^>]*data-model="hf:acme/mlp-small".*?</svg>', html, re.S)
    assert hist is not None
    assert _revision_labels(hist.group(0)) == ["1111111aaa", "2222222bbb", "3333333ccc"]
    assert 'data-status="refused"' in html and "LipSDP only for plain MLPs" in html

    png = tmp_path / "report.png"
    shot = _run_chromium(exe, tmp_path, f"--screenshot={png}", "--window-size=1200,2400", url)
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    img = Image.open(png).convert("RGB")
    assert img.size == (1200, 2400)
    stat = ImageStat.Stat(img)
    assert max(stat.var) > 500, f"the screenshot looks blank (variance {stat.var})"
    # the plots' colours are on the page: the lower-bound red and the variant blues/greens
    colors = {c for _, c in img.getcolors(maxcolors=1 << 20) or []}
    assert (214, 39, 40) in colors and (31, 119, 180) in colors
    keep = Path(__file__).resolve().parents[1] / "out"
    if keep.is_dir():  # a developer's look at it: ./out/report.png (ignored by git)
        shutil.copy(png, keep / "report.png")


def test_an_unsound_upper_bound_is_flagged_not_hidden(tmp_path):
    """An upper bound below the measured lower bound is a bug somewhere: the page must shout it."""
    cat = tmp_path / "c.duckdb"
    mk = dict(model_id="hf:acme/bad", hub="hf", repo_id="acme/bad", revision="r1", engine_version="1")
    Catalog(cat).write([ResultRow(**mk, variant="eclipse-fast", kind="upper", status="ok", value=0.9),
                        ResultRow(**mk, variant="lower-ascent", kind="lower", status="ok", value=1.2)])
    page = render_html(load_report_data(cat))
    assert "NO — upper &lt; lower" in page  # the leaderboard's sound column
    assert ">UNSOUND</text>" in page  # the bounds plot's tightness label


def test_many_revisions_keep_the_axis_readable(tmp_path):
    cat = tmp_path / "c.duckdb"
    c = Catalog(cat)
    for i in range(30):
        mk = dict(model_id="hf:acme/m", hub="hf", repo_id="acme/m", revision=f"rev{i:02d}", engine_version="1",
                  computed_at=T0 + timedelta(hours=i))
        c.write([ResultRow(**mk, variant="eclipse-fast", kind="upper", status="ok", value=2.0 + i / 10),
                 ResultRow(**mk, variant="lower-sampled", kind="lower", status="ok", value=1.0 + i / 20)])
    page = render_html(load_report_data(cat))
    labels = _revision_labels(page)
    assert 5 <= len(labels) <= 10 and labels[-1] == "rev29"
    # every revision still has its point, each with its tooltip (an SVG <title>)
    for i in range(30):
        assert f"<title>eclipse-fast @ rev{i:02d}: {2.0 + i / 10:.6g}</title>" in page, i
        assert f"<title>lower bound @ rev{i:02d}: {1.0 + i / 20:.6g}</title>" in page, i


def _revision_labels(svg: str) -> list[str]:
    return re.findall(r'class="revision-label"[^>]*>(?:<title>[^<]*</title>)?<text[^>]*>(\w+)', svg)
