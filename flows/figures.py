"""matplotlib figures as inline SVG for a self-contained HTML page (flows/report.py, flows/report_certified.py).

Why this layer: the page must open offline from a mail attachment, with no JavaScript, so each figure is
matplotlib's SVG inlined into the HTML. The SVG is made fit for that here: ids unique on the page, the tooltips
(<title>) and the class/data-* attributes a reader (or a test) finds an artist by, no metadata, and fixed ids
(svg.hashsalt) so the same data renders to the same bytes. matplotlib is imported only inside the functions:
importing this module costs nothing, so the CLI stays fast.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from typing import Any


def tick_label(t: float) -> str:
    """1.5, 20, 300, 4000, then 1e4, 2e5 (shorter than Python's 1e+04)."""
    if 1e-3 <= t < 1e4:
        return f"{t:.4g}"
    k = math.floor(math.log10(t))
    return f"{t / 10 ** k:.2g}e{k}"


def log_limits(values: Iterable[float], pad: float = 1.12) -> tuple[float, float]:
    """Axis limits around the positive finite values, padded; a near-constant set still gets a visible range."""
    vals = [v for v in values if v and v > 0 and math.isfinite(v)] or [1.0]
    lo, hi = min(vals) / pad, max(vals) * pad
    if hi / lo < 1.05:
        mid = math.sqrt(lo * hi)
        lo, hi = mid / 1.05, mid * 1.05
    return lo, hi


# the page's look; a fixed svg.hashsalt makes matplotlib's ids reproducible; text stays <text> (searchable, small)
STYLE = {"svg.hashsalt": "lipzoo", "svg.fonttype": "none", "font.family": "sans-serif",
         "font.sans-serif": ["DejaVu Sans"], "font.size": 11, "axes.edgecolor": "#888", "axes.linewidth": 0.8,
         "xtick.color": "#555", "ytick.color": "#555", "xtick.labelsize": 10, "ytick.labelsize": 10,
         "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False, "legend.fontsize": 10}


def style() -> Any:
    """The report's matplotlib settings, for the duration of one figure (the caller's rcParams stay as they are)."""
    import matplotlib

    return matplotlib.rc_context(STYLE)


def figure(width: float, height: float, margins: tuple[float, float, float, float],
           title: str | None = None) -> tuple[Any, Any]:
    """A (Figure, Axes) of `width` x `height` pixels, the axes inset by (left, right, top, bottom) pixels.

    A bare `matplotlib.figure.Figure`: no pyplot, hence no GUI backend and no global list of open figures to
    close (savefig picks the SVG canvas)."""
    from matplotlib.figure import Figure

    left, right, top, bottom = margins
    fig = Figure(figsize=(width / 72, height / 72), dpi=72)  # 1 pt = 1 px in the SVG
    ax = fig.add_axes((left / width, bottom / height, 1 - (left + right) / width, 1 - (top + bottom) / height))
    if title:
        fig.text(10 / width, 1 - 4 / height, title, va="top", fontsize=13, weight="bold")
    return fig, ax


def log_axis(ax: Any, which: str) -> None:
    """Log scale on axis `which` ("x"/"y") printing `tick_label`s; matplotlib picks the ticks (decades on wide
    ranges, 2..9 between them on narrow ones)."""
    from matplotlib.ticker import LogFormatter

    class Labels(LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return tick_label(x)

    getattr(ax, f"set_{which}scale")("log")
    getattr(ax, f"{which}axis").set_major_formatter(Labels())
    getattr(ax, f"{which}axis").set_minor_formatter(Labels(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


class Tags(dict[str, dict[str, str]]):
    """gid -> what `inline_svg` adds to that artist's <g>: a class, data-* attributes and a <title> (tooltip)."""

    def __call__(self, artist: Any, cls: str, title: str | None = None, **data: Any) -> Any:
        artist.set_gid(f"a{len(self)}")
        self[artist.get_gid()] = {"class": cls, **{f"data-{k}": str(v) for k, v in data.items()},
                                  **({"title": title} if title else {})}
        return artist


def inline_svg(fig: Any, cls: str, label: str, prefix: str, tags: dict[str, dict[str, str]], **data: Any) -> str:
    """The figure as one <svg> element for the page: its ids prefixed by `prefix` (unique on the page), the
    `tags` added, `cls`, an aria-label, a <title> and data-* on the root. The metadata is dropped (the page
    carries the date): the same catalog renders to the same bytes."""
    import xml.etree.ElementTree as ET

    svg, xlink = "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"
    buf = io.StringIO()
    with style():
        fig.savefig(buf, format="svg", metadata={"Date": None})
    ET.register_namespace("", svg)
    ET.register_namespace("xlink", xlink)
    root = ET.fromstring(buf.getvalue())
    root.remove(root.find(f"{{{svg}}}metadata"))

    def add(el: Any, attrs: dict[str, str]) -> None:
        for k, v in attrs.items():
            if k != "title":
                el.set(k, v)
        if "title" in attrs:
            el.insert(0, ET.Element("title"))
            el[0].text = attrs["title"]

    for el in root.iter():
        el.text, el.tail = (el.text if el.text and el.text.strip() else None), None
        for k, v in el.attrib.items():
            v = " ".join(v.split()) if k == "d" else v.replace("url(#", f"url(#{prefix}")
            ref = k == f"{{{xlink}}}href" and v.startswith("#")  # not the colorbar's data: URI
            el.set(k, f"#{prefix}{v[1:]}" if ref else f"{prefix}{v}" if k == "id" else v)
        add(el, tags.get(el.get("id", "")[len(prefix):], {}))
    vb = root.get("viewBox", "0 0 0 0")
    root.attrib.clear()
    add(root, {"class": cls, "width": vb.split()[2], "height": vb.split()[3], "viewBox": vb, "role": "img",
               "aria-label": label, **{f"data-{k}": str(v) for k, v in data.items()}, "title": label})
    return ET.tostring(root, encoding="unicode")
