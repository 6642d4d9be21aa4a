"""The report's certificate figures (issue 14): certified accuracy vs l2 eps, per model and all models in one.

matplotlib figures inlined like the rest of the report (flows/figures.py). The curves are drawn from the stored
margins, so they are exact step functions: acc(eps) = #{m_i > sqrt(2) L eps} / n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .figures import Tags, figure, inline_svg, style
from .report import _e

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f"]


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


def _plot(curves: Sequence[dict[str, Any]], label: str, cls: str, names: Sequence[str], prefix: str) -> str:
    """Certified accuracy (y) against the l2 radius (x, linear from 0): one step curve per certificate."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter

    hi = _eps_max(curves)
    units = " / ".join(sorted({str(c.get("eps_units") or "raw") for c in curves}))
    tag = Tags()
    with style():
        fig, ax = figure(640, 300, (56, 170, 18, 42))
        ax.set(xlim=(0, hi), ylim=(0, 1), yticks=[0, 0.25, 0.5, 0.75, 1.0], ylabel="certified accuracy",
               xlabel=f"l2 radius eps ({units} input units)")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.grid(axis="y", color="#eee")
        for i, (c, name) in enumerate(zip(curves, names, strict=True)):
            color, (r, acc), ca = PALETTE[i % len(PALETTE)], _curve(c), float(c["clean_accuracy"])
            pts = [(0.0, ca)]
            for ri, ai in zip(r, acc, strict=True):
                if ri <= 0:
                    continue
                if ri > hi:
                    break
                pts += [(ri, pts[-1][1]), (ri, ai - 1.0 / len(r))]
            pts.append((hi, pts[-1][1]))
            tag(ax.plot(*zip(*pts, strict=True), color=color, lw=2, label=name[:24])[0], "curve", model=c["model_id"])
            tag(ax.plot([0], [ca], "o", ms=8, color=color, clip_on=False)[0], "clean",  # clean accuracy at eps 0
                f"{name}: clean accuracy {ca:.1%}")
        marker = Line2D([], [], ls="", marker="o", ms=6, color="#555", label="clean accuracy")
        ax.legend(handles=[*ax.get_lines()[::2], marker], loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return inline_svg(fig, cls, label, prefix, tag, series=len(curves))


def _short(model_id: str) -> str:
    return model_id.split(":", 1)[-1].rsplit("/", 1)[-1].removesuffix(".safetensors")


def compare_plot(curves: Sequence[dict[str, Any]]) -> str:
    """All models' curves in one figure (the first len(PALETTE) of them, one colour each)."""
    return _plot(curves[:len(PALETTE)], "certified accuracy vs eps, all models with an evaluation set",
                 "certified-compare", [_short(c["model_id"]) for c in curves[:len(PALETTE)]], "cc-")


def model_plot(c: dict[str, Any], index: int = 0) -> str:
    """One model's curve, labelled with the bound it certifies from (`index` keeps its ids unique on the page)."""
    return _plot([c], f"certified accuracy vs eps: {c['model_id']}", "certified-model",
                 [f"L={float(c['bound']):.4g} ({c['variant']})"], f"c{index}-")


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
    for i, c in enumerate(curves):
        parts.append(f'<section class="certified" data-model="{_e(c["model_id"])}"><h3>{_e(c["model_id"])}</h3>'
                     f"{model_plot(c, i)}</section>")
    return "\n".join(parts)
