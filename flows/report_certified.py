"""The report's certificate figures (issue 14): certified accuracy vs l2 eps, per model and all models in one.

Plain inline SVG like the rest of flows/report.py (the page stays self-contained, no plotting dependency). The
curves are drawn from the stored margins, so they are exact step functions: acc(eps) = #{m_i > sqrt(2) L eps} / n.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif"
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f"]
W, H, L_PAD, R_PAD, T_PAD, B_PAD = 640, 300, 56, 170, 18, 42


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _curve(c: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(radii sorted ascending, certified accuracy just below each radius) of one certificate."""
    m = np.asarray(c["margins"], dtype=np.float64)
    r = np.sort(np.maximum(m, 0) / (math.sqrt(2) * float(c["bound"])))
    n = len(r)
    return r, 1.0 - np.arange(n) / n if n else np.array([])


def _eps_max(curves: Sequence[dict[str, Any]]) -> float:
    top = 0.0
    for c in curves:
        r, _ = _curve(c)
        pos = r[r > 0]
        if len(pos):
            top = max(top, float(np.quantile(pos, 0.98)))
    return top * 1.1 if top > 0 else 1.0


def _ticks(hi: float) -> list[float]:
    step = 10 ** math.floor(math.log10(hi / 4)) if hi > 0 else 0.1
    for k in (1, 2, 5, 10):
        if hi / (k * step) <= 6:
            step *= k
            break
    return [i * step for i in range(int(hi / step) + 1)]


def _plot(curves: Sequence[dict[str, Any]], label: str, cls: str, names: Sequence[str]) -> str:
    hi = _eps_max(curves)
    pw, ph = W - L_PAD - R_PAD, H - T_PAD - B_PAD
    X = lambda e: L_PAD + pw * min(e, hi) / hi  # noqa: E731
    Y = lambda a: T_PAD + ph * (1 - a)  # noqa: E731
    units = sorted({str(c.get("eps_units") or "raw") for c in curves})
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="{cls}" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'role="img" aria-label="{_e(label)}" data-series="{len(curves)}" style="{FONT}"><title>{_e(label)}</title>',
           f'<rect x="{L_PAD}" y="{T_PAD}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>']
    for t in _ticks(hi):
        out.append(f'<line x1="{X(t):.1f}" y1="{T_PAD + ph}" x2="{X(t):.1f}" y2="{T_PAD + ph + 4}" stroke="#666"/>'
                   f'<text x="{X(t):.1f}" y="{T_PAD + ph + 16}" font-size="11" text-anchor="middle">{t:g}</text>')
    for a in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{L_PAD}" y1="{Y(a):.1f}" x2="{L_PAD + pw}" y2="{Y(a):.1f}" stroke="#eee"/>'
                   f'<text x="{L_PAD - 6}" y="{Y(a) + 4:.1f}" font-size="11" text-anchor="end">{a:.0%}</text>')
    out.append(f'<text x="{L_PAD + pw / 2}" y="{H - 6}" font-size="12" text-anchor="middle">l2 radius eps '
               f'({_e(" / ".join(units))} input units)</text>')
    out.append(f'<text x="14" y="{T_PAD + ph / 2}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 14 {T_PAD + ph / 2})">certified accuracy</text>')
    for i, (c, name) in enumerate(zip(curves, names, strict=True)):
        color = PALETTE[i % len(PALETTE)]
        r, acc = _curve(c)
        pts = [(0.0, float(c["clean_accuracy"]))]
        for ri, ai in zip(r, acc, strict=True):
            if ri <= 0:
                continue
            if ri > hi:
                break
            pts += [(ri, pts[-1][1]), (ri, ai - 1.0 / len(r))]
        pts.append((hi, pts[-1][1]))
        d = " ".join(f"{X(e):.1f},{Y(a):.1f}" for e, a in pts)
        out.append(f'<polyline class="curve" data-model="{_e(c["model_id"])}" points="{d}" fill="none" '
                   f'stroke="{color}" stroke-width="1.8"/>')
        ca = float(c["clean_accuracy"])  # clean accuracy: a marker at eps = 0
        out.append(f'<circle class="clean" cx="{X(0):.1f}" cy="{Y(ca):.1f}" r="4" fill="{color}">'
                   f"<title>{_e(name)}: clean accuracy {ca:.1%}</title></circle>")
        ly = T_PAD + 14 + 16 * i
        out.append(f'<line x1="{W - R_PAD + 10}" y1="{ly - 4}" x2="{W - R_PAD + 28}" y2="{ly - 4}" stroke="{color}" '
                   f'stroke-width="2"/><text x="{W - R_PAD + 32}" y="{ly}" font-size="11">{_e(name[:24])}</text>')
    out.append(f'<text x="{W - R_PAD + 10}" y="{H - B_PAD + 10}" font-size="10" fill="#555">● clean accuracy</text>')
    out.append("</svg>")
    return "".join(out)


def _short(model_id: str) -> str:
    return model_id.split(":", 1)[-1].rsplit("/", 1)[-1].removesuffix(".safetensors")


def compare_plot(curves: Sequence[dict[str, Any]]) -> str:
    return _plot(curves[:len(PALETTE)], "certified accuracy vs eps, all models with an evaluation set",
                 "certified-compare", [_short(c["model_id"]) for c in curves[:len(PALETTE)]])


def model_plot(c: dict[str, Any]) -> str:
    return _plot([c], f"certified accuracy vs eps: {c['model_id']}", "certified-model",
                 [f"L={float(c['bound']):.4g} ({c['variant']})"])


def section(curves: Sequence[dict[str, Any]]) -> str:
    """The report's certificates section ('' when no model has one)."""
    if not curves:
        return ""
    units = sorted({str(c.get("eps_units") or "raw") for c in curves})
    parts = ["<h2>Certified accuracy</h2>",
             '<p class="meta">A sample with true-label margin m is certified at radius m / (sqrt(2) L), L the best '
             "certified upper bound of its revision: no l2 perturbation below it changes the prediction "
             f"(docs/certificates.md). eps is in <b>{_e(' / '.join(units))}</b> input units (raw = the model's own "
             "input; normalised = after the stated mean/std preprocessing).</p>",
             compare_plot(curves), '<table class="leaderboard"><tr><th>model</th><th>dataset</th><th>n</th>'
             "<th>clean acc</th><th>median radius</th><th>L</th><th>units</th></tr>"]
    for c in curves:
        parts.append(f"<tr><td>{_e(c['model_id'])}</td><td>{_e(c['dataset'])}</td><td>{c['n']}</td>"
                     f"<td>{float(c['clean_accuracy']):.1%}</td><td>{float(c['median_radius']):.4g}</td>"
                     f"<td>{float(c['bound']):.4g}</td><td>{_e(c['eps_units'])}</td></tr>")
    parts.append("</table>")
    for c in curves:
        parts.append(f'<section class="certified" data-model="{_e(c["model_id"])}"><h3>{_e(c["model_id"])}</h3>'
                     f"{model_plot(c)}</section>")
    return "\n".join(parts)
