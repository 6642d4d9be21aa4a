"""matplotlib figures as inline SVG for a self-contained HTML page (flows/report.py, flows/report_certified.py).

Why this layer: the page must open offline from a mail attachment, with no JavaScript, so each figure is
matplotlib's SVG inlined into the HTML. The SVG is made fit for that here: ids unique on the page, the tooltips
(<title>) and the class/data-* attributes a reader (or a test) finds an artist by, no metadata, and fixed ids
(svg.hashsalt) so the same data renders to the same bytes. matplotlib is imported only inside the functions:
importing this module costs nothing, so the CLI stays fast.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
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


def log_axis(ax: Any, which: str, limits: tuple[float, float]) -> None:
    """Log scale over `limits` on axis `which` ("x"/"y") printing `tick_label`s; matplotlib picks the ticks
    (decades on wide ranges, 2..9 between them, labelled, on narrow ones; none between past 3 decades)."""
    from matplotlib.ticker import LogFormatter, NullLocator

    class Labels(LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return tick_label(x)

    getattr(ax, f"set_{which}scale")("log")
    getattr(ax, f"set_{which}lim")(limits)
    axis = getattr(ax, f"{which}axis")
    axis.set_major_formatter(Labels())
    axis.set_minor_formatter(Labels(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    if limits[1] / limits[0] > 1e3:  # minor marks add clutter there, and matplotlib's ticks are not cheap
        axis.set_minor_locator(NullLocator())


class Tags(dict[str, dict[str, str]]):
    """gid -> what `inline_svg` adds to that artist's <g>: a class, data-* attributes and a <title> (tooltip)."""

    def __call__(self, artist: Any, cls: str, title: str | None = None, **data: Any) -> Any:
        artist.set_gid(f"a{len(self)}")
        self[artist.get_gid()] = {"class": cls, **{f"data-{k}": str(v) for k, v in data.items()},
                                  **({"title": title} if title else {})}
        return artist


def inline_svg(fig: Any, cls: str, label: str, prefix: str, tags: dict[str, dict[str, str]], **data: Any) -> str:
    """The figure as one compact <svg> element for the page: the `tags` added, `cls`, an aria-label, a <title>
    and data-* on the root. Only the ids something refers to are kept, made unique on the page by `prefix`;
    coordinates keep 2 decimals; the font is set once on the root; the metadata is dropped (the page
    carries the date), so the same catalog renders to the same bytes."""
    import xml.etree.ElementTree as ET

    svg, xlink = "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"
    prefix = "f" + hashlib.sha1(prefix.encode()).hexdigest()[:6]  # ids are content hashes: a clash is harmless
    href, font = f"{{{xlink}}}href", "font-family: 'DejaVu Sans', sans-serif; "
    buf = io.StringIO()
    with style():
        fig.savefig(buf, format="svg", metadata={"Date": None})
    ET.register_namespace("", svg)
    ET.register_namespace("xlink", xlink)
    root = ET.fromstring(buf.getvalue())
    root.remove(root.find(f"{{{svg}}}metadata"))
    used = set(re.findall(r"url\(#([^)]+)\)|href=\"#([^\"]+)\"", ET.tostring(root, encoding="unicode")))
    used = {a or b for a, b in used}

    def add(el: Any, attrs: dict[str, str]) -> None:
        for k, v in attrs.items():
            if k != "title":
                el.set(k, v)
        if "title" in attrs:
            el.insert(0, ET.Element("title"))
            el[0].text = attrs["title"]

    for el in list(root.iter()):
        el.text, el.tail = (el.text if el.text and el.text.strip() else None), None
        attrs, el.attrib = dict(el.attrib), {}
        for k, v in attrs.items():
            if k == "id" and v not in used:
                continue
            v = re.sub(r"(\.\d\d)\d+", r"\1", " ".join(v.split())).replace("url(#", f"url(#{prefix}")
            if k == "transform" and v.startswith("rotate(-0 "):
                continue
            el.set(k, f"#{prefix}{v[1:]}" if k == href and v.startswith("#") else  # not a data: URI
                   f"{prefix}{v}" if k == "id" else v.replace(font, "") if k == "style" else v)
        add(el, tags.get(attrs.get("id", ""), {}))
    for parent in reversed(list(root.iter())):  # a <g> with no attributes only nests: its children move up
        for i, child in reversed(list(enumerate(parent))):
            if child.tag == f"{{{svg}}}g" and not child.attrib:
                parent[i:i + 1] = list(child)
    vb = root.get("viewBox", "0 0 0 0")
    root.attrib.clear()
    add(root, {"class": cls, "width": vb.split()[2], "height": vb.split()[3], "viewBox": vb, "role": "img",
               "aria-label": label, **{f"data-{k}": str(v) for k, v in data.items()}, "style": font.strip(" ;"),
               "title": label})
    return ET.tostring(root, encoding="unicode")
