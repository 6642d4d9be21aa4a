"""`lipzoo report`: one self-contained HTML page a team can read without lipzoo, a server or the network.

The figures are matplotlib's, inlined as SVG (flows/figures.py: no external files, no JavaScript; tooltips are
SVG <title>s); matplotlib is imported only when a figure is drawn, so the CLI does not pay for it. Every number
comes from the catalog's own queries (`Catalog.leaderboard`, `Catalog.history`, `Catalog.history_summary`);
this module only arranges them.

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

from .figures import Tags, figure, inline_svg, log_axis, log_limits, style, tick_label

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


# ---------------------------------------------------------------------------------------------- figures

def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float | int):
        return f"{v:.{digits}g}"
    return str(v)


def times(t: float) -> str:
    """A tightness ratio: ×1.049, ×16.92, ×1913, ×5.39e4."""
    return "×" + (f"{t:.3f}" if t < 10 else f"{t:.4g}" if t < 1e4 else tick_label(t))


def anchor(model_id: str) -> str:
    return "m-" + re.sub(r"[^A-Za-z0-9_-]+", "-", model_id).strip("-")


def bounds_plot(model_id: str, rows: Sequence[dict[str, Any]]) -> str:
    """Every variant's bound vs the measured lower bound for one model (log x axis), tightness at the right.

    The shaded region below the lower bound is where no sound upper bound can be; a bound inside it is
    labelled UNSOUND. Refused/failed variants keep their row, with the reason."""
    from matplotlib.transforms import blended_transform_factory as blend

    ordered = [r for r in rows if r["kind"] == "upper"] + [r for r in rows if r["kind"] == "lower"]
    lb = max((float(r["value"]) for r in ordered if r["kind"] == "lower" and _usable(r)), default=None)
    n, tag = max(len(ordered), 1), Tags()
    with style():
        fig, ax = figure(760, 86 + 24 * n, (150, 120, 42, 44), model_id)
        lo, hi = log_limits([float(r["value"]) for r in ordered if _usable(r)] + ([lb] if lb else []))
        log_axis(ax, "x", (lo, hi))
        ax.set(ylim=(n - 0.5, -0.5), xlabel="Lipschitz constant (ℓ2, log scale)")
        ax.set_yticks(range(len(ordered)), [r["variant"] for r in ordered])
        labels = ax.get_yticklabels()
        ax.tick_params(axis="y", length=0, labelsize=12, labelcolor="#222")
        ax.spines["left"].set_visible(False)
        ax.grid(axis="x", color="#e6e6e6")
        at_row = blend(ax.transAxes, ax.transData)
        ax.text(1.03, 1.0, "upper / lower", transform=ax.transAxes, va="bottom")
        if lb:
            tag(ax.axvspan(lo, lb, color="#fbe3e3", zorder=0), "impossible",
                "below the measured lower bound: no sound upper bound can be here")
            ax.axvline(lb, color=LOWER_COLOR, lw=1.5, ls=(0, (5, 3)))
            ax.text(lb, 1.02, f"lower bound {fmt(lb)}", transform=blend(ax.transData, ax.transAxes), ha="center",
                    va="bottom", color=LOWER_COLOR, fontsize=10)
        for i, r in enumerate(ordered):
            v, kind, ok = r["variant"], r["kind"], _usable(r)
            row = {"variant": v, "kind": kind, "status": r["status"]}
            tag(labels[i], "variant-row", **row).set_color("#222" if ok else "#999")
            if not ok:
                reason = next(iter((r.get("reason") or "").splitlines()), "")
                short = reason if len(reason) <= 70 else reason[:67] + "…"
                tag(ax.text(0.01, i, f"{r['status']}: {short}" if short else str(r["status"]), transform=at_row,
                            va="center", fontsize=10, style="italic", color="#999"), "reason", reason, **row)
                continue
            x, color = float(r["value"]), variant_color(v)
            tight = x / lb if (lb and kind == "upper") else None
            tip = (f"{v}: {fmt(x, 6)}" + (f" (×{tight:.4f} the lower bound)" if tight else "")
                   + (" — vacuous" if r.get("vacuous") else ""))
            if tight:
                ax.plot([lb, x], [i, i], color=color, alpha=0.35, lw=3, solid_capstyle="butt")
            mark = ({"marker": "D", "ms": 8.5, "color": color} if kind == "lower" else
                    {"marker": "o", "ms": 11, "mew": 2, "mec": color, "mfc": "white" if r.get("vacuous") else color})
            tag(ax.plot([x], [i], ls="", clip_on=False, **mark)[0], "bound-mark", tip, **row)
            label = ("UNSOUND" if tight and tight < 1 - 1e-6 else times(tight) if tight else
                     "lower" if kind == "lower" else fmt(x))
            tag(ax.text(1.03, i, label, transform=at_row, va="center"), "tightness", **row)
        if not ordered:
            ax.text(0.01, 0, "no results", transform=at_row, va="center", color="#999")
    return inline_svg(fig, "bounds-plot", f"{model_id}: certified upper bounds vs measured lower bound",
                      "b" + anchor(model_id)[1:] + "-", tag, model=model_id)


def history_plot(model_id: str, revisions: Sequence[dict[str, Any]], history: dict[str, dict[str, float]]) -> str:
    """Bounds across revisions (oldest left, log y): one line per upper variant, the lower bound dashed red."""
    revs = [r["revision"] for r in revisions]
    n, at, tag = len(revs), [history.get(rev, {}) for rev in revs], Tags()
    uppers = sorted({v for h in at for v in h if not v.startswith("lower")}, key=variant_sort_key)
    series = [(v, variant_color(v), "-", "o", [h.get(v) for h in at]) for v in uppers]
    lower = [max((x for v, x in h.items() if v.startswith("lower")), default=None) for h in at]
    if any(x is not None for x in lower):
        series.append(("lower bound", LOWER_COLOR, (0, (5, 3)), "D", lower))
    with style():
        fig, ax = figure(760, 308, (80, 170, 30, 58), f"{model_id} — {n} revision{'s' if n != 1 else ''}")
        log_axis(ax, "y", log_limits(x for h in at for x in h.values()))
        ax.set(xlim=(-0.5, max(n, 1) - 0.5))
        ax.grid(axis="y", color="#e6e6e6")
        for name, color, ls, marker, ys in series:
            tag(ax.plot(range(n), [math.nan if y is None else y for y in ys], color=color, ls=ls, lw=2,
                        label=name)[0], "history-series", variant=name)
            for i, y in enumerate(ys):
                if y is not None:
                    tag(ax.plot([i], [y], marker, ms=7 if marker == "o" else 6.5, color=color, clip_on=False)[0],
                        "history-point", f"{name} @ {revs[i][:12]}: {fmt(y, 6)}", variant=name)
        every = max(1, math.ceil(n / 10))  # ~10 labels at most; the newest revision is always labelled
        shown = [i for i in range(n) if (n - 1 - i) % every == 0]
        seen = [revisions[i].get("revision_seen") for i in shown]
        when = [t.strftime("%Y-%m-%d %H:%M") if isinstance(t, datetime) else "" for t in seen]
        ax.set_xticks(shown, [f"{revs[i][:10]}\n{w[5:]}" for i, w in zip(shown, when, strict=True)], color="#333")
        for label, i, w in zip(ax.get_xticklabels(), shown, when, strict=True):
            tag(label, "revision-label", f"{revs[i]} first seen {w}")
        if series:
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), handlelength=1.8)
    return inline_svg(fig, "history-plot", f"{model_id}: bounds across {n} revision(s)",
                      "h" + anchor(model_id)[1:] + "-", tag, model=model_id)


def _tightness_grid(details: Sequence[ModelDetail], variants: list[str]) -> list[list[tuple[float | None, str]]]:
    """(upper / lower, tooltip) per model and variant, then the geometric mean over the models that have one."""
    grid = []
    for d in details:
        lb = max((float(r["value"]) for r in d.latest if r["kind"] == "lower" and _usable(r)), default=None)
        by_var = {r["variant"]: r for r in d.latest}
        row: list[tuple[float | None, str]] = []
        for v in variants:
            r = by_var.get(v)
            t = float(r["value"]) / lb if (r and lb and _usable(r)) else None
            row.append((t, f"{d.model_id} {v}: ×{t:.4f}" if t is not None else
                        f"{d.model_id} {v}: {(r or {}).get('status', 'not run')} {(r or {}).get('reason') or ''}"))
        grid.append(row)
    means: list[tuple[float | None, str]] = []
    for j, v in enumerate(variants):
        ts = [t for row in grid if (t := row[j][0]) is not None]
        t = math.exp(sum(map(math.log, ts)) / len(ts)) if ts else None
        means.append((t, f"{v}: geometric mean ×{t:.4f} over {len(ts)} model(s)" if t else f"{v}: no data"))
    return [*grid, means]


def tightness_plot(details: Sequence[ModelDetail]) -> str:
    """Heat map of upper / lower per model (rows) and upper-bound variant (columns), geometric mean below,
    coloured on a log scale from green (1) through yellow to red (30x and beyond).

    The means run over different models per variant, so the number of models in each is printed too."""
    import colorsys

    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, LogNorm
    from matplotlib.patches import Rectangle

    variants = sorted({r["variant"] for d in details for r in d.latest if r["kind"] == "upper"}, key=variant_sort_key)
    grid, nv, nr, tag = _tightness_grid(details, variants), max(len(variants), 1), len(details) + 1, Tags()
    stops = [colorsys.hls_to_rgb(120 * (1 - s) / 360, (82 - 12 * s) / 100, 0.7) for s in [k / 10 for k in range(11)]]
    cmap, norm = LinearSegmentedColormap.from_list("tightness", stops), LogNorm(1, 30, clip=True)
    W, H = max(230 + 92 * nv + 90, 620), 96 + 24 * (nr + 1) + 30  # wide enough for the title
    with style():
        fig, ax = figure(W, H, (230, W - 230 - 92 * nv, 96, 30),
                         "Tightness: upper / lower (1 = provably optimal; lower is better)")
        ax.set(xlim=(0, nv), ylim=(nr + 1, 0))
        ax.set_axis_off()
        for i, (name, row) in enumerate(zip([d.model_id for d in details] + ["geometric mean"], grid, strict=True)):
            tag(ax.text(-0.08, i + 0.5, name if len(name) <= 34 else "…" + name[-33:], ha="right", va="center",
                        weight="bold" if i == nr - 1 else "normal"), "model-label", name)
            for j, (t, tip) in enumerate(row):
                tag(ax.add_patch(Rectangle((j + 0.012, i + 0.04), 0.976, 0.92, edgecolor="none",
                                           facecolor=cmap(norm(t)) if t is not None else "#f2f2f2")),
                    "tightness-cell", tip, variant=variants[j])
                ax.text(j + 0.5, i + 0.5, times(t) if t else "—", ha="center", va="center",
                        color="#222" if t is not None else "#aaa")
        ax.text(-0.08, nr + 0.6, "models in the mean", ha="right", va="center", fontsize=10, color="#666")
        for j, v in enumerate(variants):
            ax.text(j + 0.5, -0.3, v, rotation=35, rotation_mode="anchor", color=variant_color(v))
            tag(ax.text(j + 0.5, nr + 0.6, str(sum(row[j][0] is not None for row in grid[:-1])), ha="center",
                        va="center", fontsize=10, color="#666"), "mean-count")
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ticks=[1, 2, 5, 10, 30],
                           cax=fig.add_axes(((250 + 92 * nv) / W, 54 / H, 12 / W, 24 * nr / H)))
        bar.ax.set_yticklabels(["×1", "×2", "×5", "×10", "≥×30"])
        bar.ax.minorticks_off()
    return inline_svg(fig, "tightness-plot", "tightness (certified upper / measured lower) per variant and model",
                      "t-", tag)


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
