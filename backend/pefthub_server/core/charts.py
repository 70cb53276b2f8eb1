"""Server-rendered SVG for the run pages: a job's loss curves and a version's lineage graph.

Pure functions of plain data (no database, no request): the views gather the data in a constant
number of queries and these draw it. Every text that reaches the markup is escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape

from django.utils.safestring import SafeString, mark_safe

#: the metric keys drawn as curves, with their legend labels and colours (readable on light and dark)
LOSS_SERIES = (("loss", "training loss", "#2f81f7"), ("eval_loss", "eval loss", "#d4700a"))


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    colour: str
    points: list[tuple[float, float]] = field(default_factory=list)


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def loss_series(events: Iterable[dict]) -> list[Series]:
    """One point per metric event that carries a finite ``loss`` / ``eval_loss``, at its ``step``.

    An event without a usable step is placed at its position among the metric events (1, 2, ...),
    so a worker that reports no steps still gets a curve. A step at or before one already drawn is an attempt
    resumed from a checkpoint replaying the steps after it: its points replace the earlier attempt's from there on.
    """
    series = [Series(key, label, colour) for key, label, colour in LOSS_SERIES]
    for index, data in enumerate(events, 1):
        if not isinstance(data, dict):
            continue
        x = data.get("step")
        x = float(x if _finite(x) else index)
        for s in series:
            if _finite(data.get(s.key)):
                while s.points and s.points[-1][0] >= x:
                    s.points.pop()
                s.points.append((x, float(data[s.key])))
    return series


def nice_ticks(low: float, high: float, count: int = 5, *, whole: bool = False) -> list[float]:
    """Round tick values covering [low, high]: steps of 1, 2 or 5 times a power of ten (``whole``: at least 1)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high < low:
        low, high = high, low
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(step, 1) if whole else step
    first = math.floor(low / step + 1e-9) * step  # 0.3 / 0.1 is 2.999...
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _label(value: float) -> str:
    return f"{value:.4g}"


def loss_chart(series: list[Series], *, title: str, width: int = 640, height: int = 280) -> SafeString:
    """An accessible SVG line chart of ``series``: axes with ticks, a legend, one ``<circle>`` per point.

    Each circle carries ``data-series`` (the metric key), so a reader (or a test) counts the points
    of a curve. An empty chart says so in its text.
    """
    left, right, top, bottom = 56, 16, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [p for s in series for p in s.points]
    total = len(points)
    summary = "; ".join(
        f"{s.label}: {len(s.points)} points" + (f", first {_label(s.points[0][1])}, last {_label(s.points[-1][1])}, "
                                                 f"lowest {_label(min(y for _, y in s.points))}" if s.points else "")
        for s in series)
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
           f'aria-labelledby="chart-title chart-desc" xmlns="http://www.w3.org/2000/svg" data-points="{total}">',
           f'<title id="chart-title">{escape(title)}</title>',
           f'<desc id="chart-desc">{escape(summary)}</desc>']
    if not points:
        out.append(f'<text x="{width / 2:g}" y="{height / 2:g}" text-anchor="middle">No loss reported yet.</text></svg>')
        return mark_safe("".join(out))
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x_ticks = nice_ticks(min(xs), max(xs), whole=all(x.is_integer() for x in xs))  # steps are whole numbers
    y_ticks = nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    out.append(f'<g class="axes" stroke="currentColor" stroke-opacity=".35" font-size="11">'
               f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"/>'
               f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>')
    for t in x_ticks:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}"/>'
                   f'<text class="tick-x" x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" stroke="none">{_label(t)}</text>')
    for t in y_ticks:
        y = sy(t)
        out.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke-opacity=".12"/>'
                   f'<text class="tick-y" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" stroke="none">{_label(t)}</text>')
    out.append(f'<text x="{left + plot_w / 2:g}" y="{height - 4}" text-anchor="middle" stroke="none">step</text></g>')
    legend_x = left
    for s in series:
        if not s.points:
            continue
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
        dash = ' stroke-dasharray="5 3"' if s.key != "loss" else ""
        out.append(f'<g class="series" data-series="{escape(s.key)}"><polyline fill="none" stroke="{s.colour}" '
                   f'stroke-width="1.5"{dash} points="{coords}"/>')
        out += [f'<circle data-series="{escape(s.key)}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2" fill="{s.colour}">'
                f'<title>{escape(s.label)} at step {_label(x)}: {_label(y)}</title></circle>' for x, y in s.points]
        out.append(f'</g><g class="legend" font-size="12"><rect x="{legend_x}" y="8" width="14" height="4" fill="{s.colour}"/>'
                   f'<text x="{legend_x + 18}" y="14">{escape(s.label)}</text></g>')
        legend_x += 18 + 8 * len(s.label) + 16
    out.append("</svg>")
    return mark_safe("".join(out))


# --- lineage -------------------------------------------------------------------------------------

#: what the graph calls a parent it may not name
HIDDEN = "a repository you cannot see"


@dataclass(frozen=True)
class Node:
    label: str  # `ns/name@n`, or HIDDEN
    relation: str  # "base model", "training data", "merged adapter x0.5", "adapter", "merge", "this version"
    href: str | None = None  # only for what the reader may open


def _clip(text: str, limit: int = 30) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _node(node: Node, x: float, y: float, w: float, h: float, css: str) -> str:
    body = (f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="6" fill="none" stroke="currentColor" '
            f'stroke-opacity=".5"/><text x="{x + 8:.1f}" y="{y + 17:.1f}" font-size="12" font-weight="600">'
            f'{escape(_clip(node.label))}</text><text x="{x + 8:.1f}" y="{y + 32:.1f}" font-size="11" '
            f'fill-opacity=".7">{escape(_clip(node.relation))}</text>')
    tip = f"<title>{escape(node.relation)}: {escape(node.label)}</title>"
    if node.href:
        return f'<a class="{css}" href="{escape(node.href)}">{tip}{body}</a>'
    return f'<g class="{css}">{tip}{body}</g>'


def lineage_graph(center: Node, parents: list[Node], children: list[Node], *, more_children: int = 0) -> SafeString:
    """Parents on the left, this version in the middle, children on the right, joined by curves.

    ``more_children`` children beyond those given are summarised in one last box ("and N more").
    """
    right = list(children) + ([Node(f"and {more_children} more", "not drawn")] if more_children > 0 else [])
    node_w, node_h, gap, col_gap, pad = 200, 42, 12, 60, 8
    rows = max(len(parents), len(right), 1)
    height = pad * 2 + rows * node_h + (rows - 1) * gap
    width = pad * 2 + 3 * node_w + 2 * col_gap
    cols = [pad, pad + node_w + col_gap, pad + 2 * (node_w + col_gap)]

    def column_y(n: int, i: int) -> float:
        block = n * node_h + (n - 1) * gap
        return (height - block) / 2 + i * (node_h + gap)

    cy = column_y(1, 0)
    summary = (f"Lineage of {center.label}: {len(parents)} parent(s) — "
               + (", ".join(f"{p.relation} {p.label}" for p in parents) or "none")
               + f"; {len(children) + max(more_children, 0)} child(ren)"
               + (" — " + ", ".join(f"{c.relation} {c.label}" for c in children) if children else ""))
    out = [f'<svg class="lineage" viewBox="0 0 {width} {height:.0f}" width="100%" role="img" '
           f'aria-labelledby="lineage-title lineage-desc" xmlns="http://www.w3.org/2000/svg">',
           f'<title id="lineage-title">Lineage of {escape(center.label)}</title>',
           f'<desc id="lineage-desc">{escape(summary)}</desc><g fill="none" stroke="currentColor" stroke-opacity=".45">']
    mid_in, mid_out = (cols[1], cy + node_h / 2), (cols[1] + node_w, cy + node_h / 2)
    for i in range(len(parents)):
        y = column_y(len(parents), i) + node_h / 2
        out.append(_curve((cols[0] + node_w, y), mid_in))
    for i in range(len(right)):
        y = column_y(len(right), i) + node_h / 2
        out.append(_curve(mid_out, (cols[2], y)))
    out.append("</g>")
    out += [_node(p, cols[0], column_y(len(parents), i), node_w, node_h, "parent") for i, p in enumerate(parents)]
    out.append(_node(center, cols[1], cy, node_w, node_h, "current"))
    out += [_node(c, cols[2], column_y(len(right), i), node_w, node_h, "child") for i, c in enumerate(right)]
    out.append("</svg>")
    return mark_safe("".join(out))


def _curve(start: tuple[float, float], end: tuple[float, float]) -> str:
    (x0, y0), (x1, y1) = start, end
    mid = (x0 + x1) / 2
    return f'<path d="M{x0:.1f},{y0:.1f} C{mid:.1f},{y0:.1f} {mid:.1f},{y1:.1f} {x1:.1f},{y1:.1f}"/>'
