"""`lipzoo report`: one self-contained HTML page a team can read without lipzoo, a server or the network.

Why inline SVG drawn here and no charting library: the page must open from a mail attachment or a CI
artifact, offline, forever; a few hundred lines of SVG arithmetic are smaller than any vendored library
and need no JavaScript. Every number comes from the catalog's own queries (`Catalog.leaderboard`,
`Catalog.history`, `Catalog.history_summary`); this module only arranges and draws them.

The page: the leaderboard table; per model, every variant's certified upper bound against the measured
lower bound on a log axis (the shaded region below the lower bound is where no sound bound can be);
tightness (upper / lower) per variant as a heat map over models; each model's bounds across revisions.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# the registry order of lipcore.variants (not imported: `lipzoo report` must not pay for torch)
VARIANT_ORDER = ["naive", "eclipse-fast", "sh-spectral", "sh-gershgorin", "sh-shift", "sh-combined", "optimized",
                 "lipsdp-neuron", "lipsdp-layer", "eclipse", "lower-sampled", "lower-ascent"]
PALETTE = ["#7f7f7f", "#1f77b4", "#17becf", "#bcbd22", "#9467bd", "#2ca02c", "#ff7f0e", "#8c564b", "#e377c2",
           "#393b79", "#d62728", "#ad494a"]
LOWER_COLOR = "#d62728"
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif"


# ---------------------------------------------------------------------------------------------- data

@dataclass
class ModelDetail:
    """What the page shows for one model: its latest results and its history across revisions."""

    model_id: str
    revision: str | None
    latest: list[dict[str, Any]]  # one row per variant at the latest revision (newest engine)
    revisions: list[dict[str, Any]]  # history_summary rows, oldest first
    history: dict[str, dict[str, float]]  # revision -> variant -> ok value


@dataclass
class ReportData:
    leaderboard: list[dict[str, Any]]
    details: list[ModelDetail]
    catalog: str = ""
    focus: str | None = None
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    certificates: list[dict[str, Any]] = field(default_factory=list)  # issue 14: flows/report_certified.py


def variant_sort_key(v: str) -> tuple[int, str]:
    return (VARIANT_ORDER.index(v) if v in VARIANT_ORDER else len(VARIANT_ORDER), v)


def variant_color(v: str) -> str:
    if v in VARIANT_ORDER:
        return PALETTE[VARIANT_ORDER.index(v) % len(PALETTE)]
    return PALETTE[sum(map(ord, v)) % len(PALETTE)]


def _usable(r: dict[str, Any]) -> bool:
    v = r.get("value")
    return r.get("status") == "ok" and v is not None and math.isfinite(v) and v > 0


def _current(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(revision, variant) -> the newest result (as the catalog's current_results view picks it)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if r.get("variant") == "*":
            continue
        key = (r["revision"], r["variant"])
        rank = (r.get("computed_at") or datetime.min.replace(tzinfo=UTC), str(r.get("engine_version") or ""))
        old = out.get(key)
        if old is None or rank >= (old.get("computed_at") or datetime.min.replace(tzinfo=UTC),
                                   str(old.get("engine_version") or "")):
            out[key] = r
    return out


def load_report_data(catalog_path: str | Path, model: str | None = None, top: int | None = None) -> ReportData:
    """Read everything the page needs from the catalog (read-only, short connections)."""
    from catalogs import Catalog

    cat = Catalog(catalog_path, read_only=True)
    board = cat.leaderboard(variant_columns=False)
    focus = cat.resolve_model(model) if model else None
    ids = [r["model_id"] for r in board]
    if focus:
        ids = [focus]
    elif top:
        ids = ids[:top]
    details = []
    for mid in ids:
        rows = cat.history(mid)
        summary = cat.history_summary(mid)
        cur = _current(rows)
        latest_rev = next((r["revision"] for r in board if r["model_id"] == mid), None)
        latest = sorted((r for (rev, _), r in cur.items() if rev == latest_rev),
                        key=lambda r: (r["kind"] != "upper", variant_sort_key(r["variant"])))
        hist: dict[str, dict[str, float]] = {}
        for (rev, var), r in cur.items():
            if _usable(r):
                hist.setdefault(rev, {})[var] = float(r["value"])
        details.append(ModelDetail(mid, latest_rev, latest, summary, hist))
    certs = [c for c in cat.certificate_curves() if focus is None or c["model_id"] == focus]
    return ReportData(board, details, catalog=str(catalog_path), focus=focus, certificates=certs)


# ---------------------------------------------------------------------------------------------- SVG helpers

def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float | int):
        return f"{v:.{digits}g}"
    return str(v)


def tick_label(t: float) -> str:
    """1.5, 20, 300, 4000, then 1e4, 2e5 (shorter than Python's 1e+04)."""
    if 1e-3 <= t < 1e4:
        return f"{t:.4g}"
    k = math.floor(math.log10(t))
    m = t / 10 ** k
    return f"{m:.2g}e{k}"


def times(t: float) -> str:
    """A tightness ratio: ×1.049, ×16.92, ×1913, ×5.39e4."""
    return "×" + (f"{t:.3f}" if t < 10 else f"{t:.4g}" if t < 1e4 else tick_label(t))


def anchor(model_id: str) -> str:
    return "m-" + re.sub(r"[^A-Za-z0-9_-]+", "-", model_id).strip("-")


def log_ticks(lo: float, hi: float) -> list[float]:
    """Readable tick values in [lo, hi] for a log axis: decades, then 1-2-5, then 1..9, then linear steps."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks: list[float] = []
    for mults in ((1,), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10.0 ** k for k in range(a, b + 1) for m in mults if lo <= m * 10.0 ** k <= hi * (1 + 1e-12)]
        if len(ticks) >= 3:
            break
    if len(ticks) > 9:  # many decades: every n-th decade
        step = math.ceil(len(ticks) / 8)
        ticks = ticks[::step]
    if len(ticks) < 2:  # a narrow range: linear ticks at a 1-2-5 step
        raw = (hi - lo) / 4
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
        t = math.ceil(lo / step) * step
        ticks = []
        while t <= hi * (1 + 1e-12):
            ticks.append(round(t, 12))
            t += step
    return ticks


class LogScale:
    """Maps values in [lo, hi] (padded) to pixels [p0, p1] logarithmically."""

    def __init__(self, values: Sequence[float], p0: float, p1: float, pad: float = 1.12) -> None:
        vals = [v for v in values if v and v > 0 and math.isfinite(v)] or [1.0]
        self.lo, self.hi = min(vals) / pad, max(vals) * pad
        if self.hi / self.lo < 1.05:
            mid = math.sqrt(self.lo * self.hi)
            self.lo, self.hi = mid / 1.05, mid * 1.05
        self.p0, self.p1 = p0, p1

    def __call__(self, v: float) -> float:
        t = (math.log(v) - math.log(self.lo)) / (math.log(self.hi) - math.log(self.lo))
        return self.p0 + t * (self.p1 - self.p0)

    def ticks(self) -> list[float]:
        return log_ticks(self.lo, self.hi)


def _svg_open(width: int, height: int, cls: str, label: str, **data: str) -> str:
    attrs = " ".join(f'data-{k}="{_e(v)}"' for k, v in data.items())
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="{cls}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}" {attrs} style="{FONT}">'
            f"<title>{_e(label)}</title>")


# ---------------------------------------------------------------------------------------------- plots

def bounds_plot(model_id: str, rows: Sequence[dict[str, Any]]) -> str:
    """Every variant's bound vs the measured lower bound for one model (log x axis), tightness at the right."""
    uppers = [r for r in rows if r["kind"] == "upper"]
    lowers = [r for r in rows if r["kind"] == "lower"]
    lb = max((float(r["value"]) for r in lowers if _usable(r)), default=None)
    ordered = uppers + lowers
    W, left, right, top, row_h = 760, 150, 120, 42, 24
    H = top + row_h * max(len(ordered), 1) + 44
    sx = LogScale([float(r["value"]) for r in ordered if _usable(r)] + ([lb] if lb else []), left, W - right)
    out = [_svg_open(W, H, "bounds-plot", f"{model_id}: certified upper bounds vs measured lower bound",
                     model=model_id)]
    out.append(f'<text class="plot-title" x="{left}" y="16" font-size="13" font-weight="600">{_e(model_id)}</text>')
    y_axis = top + row_h * len(ordered) + 4
    if lb:
        xl = sx(lb)
        out.append(f'<rect class="impossible" x="{left}" y="{top - 6}" width="{max(xl - left, 0):.1f}" '
                   f'height="{y_axis - top + 6}" fill="#fbe3e3"><title>below the measured lower bound: no sound '
                   f"upper bound can be here</title></rect>")
        out.append(f'<line class="lower-bound" x1="{xl:.1f}" x2="{xl:.1f}" y1="{top - 10}" y2="{y_axis}" '
                   f'stroke="{LOWER_COLOR}" stroke-width="1.5" stroke-dasharray="5,3"/>')
        out.append(f'<text x="{xl:.1f}" y="{top - 14}" font-size="11" fill="{LOWER_COLOR}" text-anchor="middle">'
                   f"lower bound {fmt(lb)}</text>")
    for t in sx.ticks():
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 6}" y2="{y_axis}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{x:.1f}" y="{y_axis + 14}" font-size="10" text-anchor="middle" fill="#555">'
                   f"{tick_label(t)}</text>")
    out.append(f'<line x1="{left}" x2="{W - right}" y1="{y_axis}" y2="{y_axis}" stroke="#888"/>')
    out.append(f'<text x="{(left + W - right) / 2:.0f}" y="{y_axis + 32}" font-size="11" text-anchor="middle" '
               f'fill="#333">Lipschitz constant (ℓ2, log scale)</text>')
    out.append(f'<text x="{W - right + 10}" y="{top - 14}" font-size="11" fill="#333">upper / lower</text>')
    for i, r in enumerate(ordered):
        y = top + row_h * i + row_h / 2
        v, var = r["variant"], r["kind"]
        color = variant_color(v)
        out.append(f'<g class="variant-row" data-variant="{_e(v)}" data-kind="{var}" data-status="{_e(r["status"])}">')
        out.append(f'<text class="variant-label" x="{left - 8}" y="{y + 4:.1f}" font-size="12" text-anchor="end" '
                   f'fill="{"#222" if _usable(r) else "#999"}">{_e(v)}</text>')
        if _usable(r):
            x = sx(float(r["value"]))
            tight = float(r["value"]) / lb if (lb and var == "upper") else None
            tip = f"{v}: {fmt(r['value'], 6)}" + (f" (×{tight:.4f} the lower bound)" if tight else "")
            if r.get("vacuous"):
                tip += " — vacuous"
            if lb and var == "upper":
                out.append(f'<line x1="{sx(lb):.1f}" x2="{x:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}" '
                           f'stroke-opacity="0.35" stroke-width="3"/>')
            if var == "lower":
                out.append(f'<path d="M{x:.1f},{y - 6:.1f} l6,6 l-6,6 l-6,-6 z" fill="{color}"><title>{_e(tip)}'
                           f"</title></path>")
            else:
                fill = "white" if r.get("vacuous") else color
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5.5" fill="{fill}" stroke="{color}" '
                           f'stroke-width="2"><title>{_e(tip)}</title></circle>')
            label = times(tight) if tight else ("lower" if var == "lower" else fmt(r["value"]))
            if lb and var == "upper" and float(r["value"]) < lb * (1 - 1e-6):
                label = "UNSOUND"
            out.append(f'<text class="tightness" x="{W - right + 10}" y="{y + 4:.1f}" font-size="12" '
                       f'fill="#222">{_e(label)}</text>')
        else:
            reason = (r.get("reason") or "").splitlines()[0] if r.get("reason") else ""
            short = reason if len(reason) <= 70 else reason[:67] + "…"
            out.append(f'<text x="{left + 6}" y="{y + 4:.1f}" font-size="11" font-style="italic" fill="#999">'
                       f'{_e(r["status"])}{": " + _e(short) if short else ""}<title>{_e(reason)}</title></text>')
        out.append("</g>")
    if not ordered:
        out.append(f'<text x="{left}" y="{top + 12}" font-size="12" fill="#999">no results</text>')
    out.append("</svg>")
    return "".join(out)


def history_plot(model_id: str, revisions: Sequence[dict[str, Any]], history: dict[str, dict[str, float]]) -> str:
    """Bounds across revisions (oldest left): one line per upper variant, the lower bound dashed red."""
    revs = [r["revision"] for r in revisions]
    uppers = sorted({v for rev in revs for v in history.get(rev, {}) if not v.startswith("lower")},
                    key=variant_sort_key)
    lower_by_rev = {rev: max((x for v, x in history.get(rev, {}).items() if v.startswith("lower")), default=None)
                    for rev in revs}
    W, left, right, top, bottom = 760, 70, 170, 30, 58
    H = top + 220 + bottom
    n = len(revs)
    xs = {rev: left + (i + 0.5) * (W - left - right) / max(n, 1) for i, rev in enumerate(revs)}
    vals = [x for rev in revs for x in history.get(rev, {}).values()]
    sy = LogScale(vals, top + 220, top)
    out = [_svg_open(W, H, "history-plot", f"{model_id}: bounds across {n} revision(s)", model=model_id)]
    out.append(f'<text class="plot-title" x="{left}" y="16" font-size="13" font-weight="600">{_e(model_id)} — '
               f"{n} revision{'s' if n != 1 else ''}</text>")
    for t in sy.ticks():
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{W - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="#555">{tick_label(t)}'
                   f"</text>")
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + 220}" stroke="#888"/>')
    out.append(f'<line x1="{left}" x2="{W - right}" y1="{top + 220}" y2="{top + 220}" stroke="#888"/>')
    label_every = max(1, math.ceil(n / 10))  # ~10 labels at most; the newest revision is always labelled
    for i, r in enumerate(revisions):
        rev = r["revision"]
        if (n - 1 - i) % label_every:
            continue
        seen = r.get("revision_seen")
        when = seen.strftime("%Y-%m-%d %H:%M") if isinstance(seen, datetime) else ""
        out.append(f'<text class="revision-label" x="{xs[rev]:.1f}" y="{top + 236}" font-size="10" '
                   f'text-anchor="middle" fill="#333">{_e(rev[:10])}<title>{_e(rev)} first seen {when}</title>'
                   f"</text>")
        out.append(f'<text x="{xs[rev]:.1f}" y="{top + 249}" font-size="9" text-anchor="middle" fill="#888">'
                   f"{_e(when[5:])}</text>")

    def series(points: list[tuple[float, float] | None], color: str, dash: str = "") -> str:
        segs, cur = [], []
        for p in points + [None]:
            if p is None:
                if len(cur) > 1:
                    segs.append(cur)
                cur = []
            else:
                cur.append(p)
        d = "".join(f'<polyline fill="none" stroke="{color}" stroke-width="2" {dash} points="'
                    + " ".join(f"{x:.1f},{y:.1f}" for x, y in s) + '"/>' for s in segs)
        return d

    for v in uppers:
        pts = [(xs[rev], sy(history[rev][v])) if v in history.get(rev, {}) else None for rev in revs]
        color = variant_color(v)
        out.append(f'<g class="history-series" data-variant="{_e(v)}">' + series(pts, color))
        for rev, p in zip(revs, pts, strict=True):
            if p:
                out.append(f'<circle cx="{p[0]:.1f}" cy="{p[1]:.1f}" r="3.5" fill="{color}"><title>{_e(v)} @ '
                           f"{_e(rev[:12])}: {fmt(history[rev][v], 6)}</title></circle>")
        out.append("</g>")
    lpts = [(xs[rev], sy(lower_by_rev[rev])) if lower_by_rev[rev] else None for rev in revs]
    if any(lpts):
        out.append('<g class="history-series" data-variant="lower bound">'
                   + series(lpts, LOWER_COLOR, 'stroke-dasharray="5,3"'))
        for rev, p in zip(revs, lpts, strict=True):
            if p:
                out.append(f'<path d="M{p[0]:.1f},{p[1] - 5:.1f} l5,5 l-5,5 l-5,-5 z" fill="{LOWER_COLOR}"><title>'
                           f"lower bound @ {_e(rev[:12])}: {fmt(lower_by_rev[rev], 6)}</title></path>")
        out.append("</g>")
    legend = [(v, variant_color(v), "") for v in uppers] + ([("lower bound", LOWER_COLOR, 'stroke-dasharray="5,3"')]
                                                             if any(lpts) else [])
    for i, (name, color, dash) in enumerate(legend):
        y = top + 8 + 17 * i
        out.append(f'<line x1="{W - right + 14}" x2="{W - right + 34}" y1="{y}" y2="{y}" stroke="{color}" '
                   f'stroke-width="2" {dash}/><text class="legend" x="{W - right + 40}" y="{y + 4}" '
                   f'font-size="11">{_e(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _heat(t: float) -> str:
    """Green at tightness 1, through yellow, to red at 30x and beyond (log scale)."""
    s = min(max(math.log10(t) / math.log10(30), 0.0), 1.0)
    hue = 120 * (1 - s)
    return f"hsl({hue:.0f},70%,{82 - 12 * s:.0f}%)"


def tightness_plot(details: Sequence[ModelDetail]) -> str:
    """Heat map of upper / lower per model (rows) and upper-bound variant (columns), geometric mean below."""
    variants = sorted({r["variant"] for d in details for r in d.latest if r["kind"] == "upper"}, key=variant_sort_key)
    cell_w, cell_h, left, top = 92, 24, 230, 96
    W = left + cell_w * max(len(variants), 1) + 20
    H = top + cell_h * (len(details) + 2) + 30
    out = [_svg_open(W, H, "tightness-plot", "tightness (certified upper / measured lower) per variant and model")]
    out.append('<text class="plot-title" x="10" y="16" font-size="13" font-weight="600">Tightness: upper / lower '
               "(1 = provably optimal; lower is better)</text>")
    for j, v in enumerate(variants):
        x = left + cell_w * j + cell_w / 2
        out.append(f'<text class="variant-label" x="{x:.0f}" y="{top - 8}" font-size="11" text-anchor="start" '
                   f'transform="rotate(-35 {x:.0f} {top - 8})" fill="{variant_color(v)}">{_e(v)}</text>')
    per_variant: dict[str, list[float]] = {v: [] for v in variants}
    for i, d in enumerate([*details, None]):
        y = top + cell_h * i
        name = d.model_id if d else "geometric mean"
        short = name if len(name) <= 34 else "…" + name[-33:]
        out.append(f'<text class="model-label" x="{left - 8}" y="{y + 16}" font-size="11" text-anchor="end" '
                   f'font-weight="{400 if d else 600}">{_e(short)}<title>{_e(name)}</title></text>')
        lb = None
        by_var: dict[str, dict[str, Any]] = {}
        if d:
            lb = max((float(r["value"]) for r in d.latest if r["kind"] == "lower" and _usable(r)), default=None)
            by_var = {r["variant"]: r for r in d.latest}
        for j, v in enumerate(variants):
            x = left + cell_w * j
            if d:
                r = by_var.get(v)
                t = float(r["value"]) / lb if (r and lb and _usable(r)) else None
                if t is not None:
                    per_variant[v].append(t)
                tip = (f"{d.model_id} {v}: ×{t:.4f}" if t is not None else
                       f"{d.model_id} {v}: {(r or {}).get('status', 'not run')} {(r or {}).get('reason') or ''}")
            else:
                ts = per_variant[v]
                t = math.exp(sum(map(math.log, ts)) / len(ts)) if ts else None
                tip = f"{v}: geometric mean ×{t:.4f} over {len(ts)} model(s)" if t else f"{v}: no data"
            fill = _heat(t) if t is not None else "#f2f2f2"
            out.append(f'<rect class="tightness-cell" data-variant="{_e(v)}" x="{x + 1}" y="{y + 1}" '
                       f'width="{cell_w - 2}" height="{cell_h - 2}" fill="{fill}"><title>{_e(tip)}</title></rect>')
            out.append(f'<text x="{x + cell_w / 2:.0f}" y="{y + 16}" font-size="11" text-anchor="middle" '
                       f'fill="{"#222" if t is not None else "#aaa"}">{times(t) if t else "—"}</text>')
    # the means run over different models per variant: say over how many
    y = top + cell_h * (len(details) + 1)
    out.append(f'<text x="{left - 8}" y="{y + 14}" font-size="10" text-anchor="end" fill="#666">models in the mean'
               "</text>")
    for j, v in enumerate(variants):
        out.append(f'<text class="mean-count" x="{left + cell_w * j + cell_w / 2:.0f}" y="{y + 14}" font-size="10" '
                   f'text-anchor="middle" fill="#666">{len(per_variant[v])}</text>')
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------- page

CSS = "body{margin:24px auto;max-width:1100px;padding:0 16px;color:#222;background:#fff;" + FONT + "}" + """
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px} .meta{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:13px;width:100%} th,td{padding:4px 8px;border-bottom:1px solid #eee;
text-align:left} th{background:#f6f6f6;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.nw{white-space:nowrap} tr.focus td{background:#fff8dc} .bad{color:#b00;font-weight:700} .ok{color:#080}
.muted{color:#999}
.model{margin:10px 0 26px} svg{display:block;max-width:100%;height:auto;margin:6px 0} code{font-size:12px}
"""


def _leaderboard_table(rows: Sequence[dict[str, Any]], focus: str | None) -> str:
    head = ("<tr><th>#</th><th>model</th><th>revision</th><th>best upper bound</th><th>variant</th>"
            "<th>lower bound</th><th>tightness</th><th>sound</th><th>ok / refused / failed</th><th>computed</th></tr>")
    body = []
    for r in rows:
        sound = r.get("sound")
        s = ('<span class="ok">yes</span>' if sound else '<span class="bad">NO — upper &lt; lower</span>'
             if sound is False else '<span class="muted">—</span>')
        when = r.get("computed_at")
        when_s = when.strftime("%Y-%m-%d %H:%M") if isinstance(when, datetime) else fmt(when)
        variant = _e(r.get("best_upper_variant") or "—") + (" (vacuous)" if r.get("best_upper_vacuous") else "")
        body.append(
            f'<tr class="{"focus" if r["model_id"] == focus else ""}" data-model="{_e(r["model_id"])}">'
            f'<td class="num">{fmt(r.get("rank"))}</td><td><a href="#{anchor(r["model_id"])}">{_e(r["model_id"])}'
            f'</a></td><td><code title="{_e(r.get("revision"))}">{_e(str(r.get("revision") or "")[:12])}</code></td>'
            f'<td class="num">{fmt(r.get("best_upper"))}</td><td class="nw">{variant}</td>'
            f'<td class="num">{fmt(r.get("best_lower"))}</td><td class="num">'
            f'{times(r["tightness"]) if r.get("tightness") else "—"}</td><td>{s}</td>'
            f'<td class="num">{r.get("n_ok", 0)} / {r.get("n_refused", 0)} / {r.get("n_failed", 0)}</td>'
            f'<td class="nw">{_e(when_s)}</td></tr>')
    if not rows:
        body.append('<tr><td colspan="10" class="muted">the catalog has no results yet: run `lipzoo audit`</td></tr>')
    return f'<table class="leaderboard">{head}{"".join(body)}</table>'


def render_html(data: ReportData) -> str:
    """The whole page as one string: no external resources, no scripts."""
    when = data.generated_at.strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>lipzoo report{' — ' + _e(data.focus) if data.focus else ''}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>lipzoo report</h1>",
        f'<p class="meta">{len(data.leaderboard)} model(s) in <code>{_e(data.catalog)}</code> · generated {when}. '
        "Upper bounds are certified (a proof, recomputed from the final multipliers); lower bounds are measured "
        "Jacobian norms. The true Lipschitz constant lies between them; tightness = best upper / best lower.</p>",
        "<h2>Leaderboard</h2>",
        _leaderboard_table(data.leaderboard, data.focus),
    ]
    if data.details:
        parts += ["<h2>Tightness per variant</h2>", tightness_plot(data.details)]
        parts.append("<h2>Bounds per model</h2>")
        for d in data.details:
            parts.append(f'<section class="model" id="{anchor(d.model_id)}" data-model="{_e(d.model_id)}">')
            parts.append(f"<h3>{_e(d.model_id)} <span class=\"meta\">revision <code>{_e(d.revision or '?')}</code>"
                         f"</span></h3>")
            parts.append(bounds_plot(d.model_id, d.latest))
            parts.append(history_plot(d.model_id, d.revisions, d.history))
            parts.append("</section>")
    from .report_certified import section

    parts.append(section(data.certificates))
    parts.append('<p class="meta">Made by <code>lipzoo report</code>; this file is self-contained and works '
                 "offline.</p></body></html>")
    return "\n".join(parts)


def write_report(catalog_path: str | Path, out: str | Path = "report.html", model: str | None = None,
                 top: int | None = None) -> Path:
    """Render the catalog at `catalog_path` to `out`; returns the path written."""
    data = load_report_data(catalog_path, model=model, top=top)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render_html(data), encoding="utf-8")
    tmp.replace(out)
    return out
