"""Small line charts drawn with PIL, for the report (the loss curve, the conditioning-scale sweep).

PIL is already a dependency of every stage; a plotting library would add tens of MB to the
evaluation image for two charts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
GREY = (120, 120, 120)
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 30, 40  # margins around the plotting area, in pixels
AXIS_LABELS = 38  # below the plotting area: the x tick labels, then the x axis label
LEGEND_ROW, HANDLE = 16, 32  # a legend row's height and its line sample's length


@dataclass
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    colour: tuple = COLOURS[0]
    dashed: bool = False
    markers: bool = False


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _range(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        pad = abs(lo) * 0.1 or 0.5
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _label(value: float) -> str:
    return f"{value:.4g}"


@dataclass
class Chart:
    """A drawn chart and where things landed on it, in pixels: the plotting area, each series'
    path, the legend's box (``None`` for a single series: the title names it) and each legend
    entry's handle segment."""
    image: Image.Image
    area: tuple[int, int, int, int]
    paths: list[tuple[Series, list[tuple[float, float]]]]
    legend: Optional[tuple[int, int, int, int]] = None
    handles: list[tuple[Series, tuple[tuple[float, float], tuple[float, float]]]] = field(default_factory=list)


def line_chart(series: list[Series], title: str, x_label: str, y_label: str,
               size: tuple[int, int] = (560, 320), x_ticks: Optional[list[float]] = None) -> Image.Image:
    """A chart of ``series`` (lines; ``markers`` adds dots, ``dashed`` suits reference values)."""
    return plot(series, title, x_label, y_label, size, x_ticks).image


def plot(series: list[Series], title: str, x_label: str, y_label: str,
         size: tuple[int, int] = (560, 320), x_ticks: Optional[list[float]] = None) -> Chart:
    """:func:`line_chart`, returning where everything was drawn. The legend sits under the
    axes, outside the plotting area, so no line can ever run through it, and each entry's
    handle is drawn like its line (solid or dashed, with a dot when the line has markers)."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    drawn = [s for s in series if len(s.xs)]
    if not drawn:
        draw.text((LEFT, height // 2), "no data", fill="black")
        return Chart(image, (LEFT, TOP, width - RIGHT, height - BOTTOM), [])
    entries = _legend_rows(draw, drawn, width - LEFT - RIGHT) if len(drawn) > 1 else []
    rows = 1 + max((row for row, _, _ in entries), default=-1)
    legend_height = rows * LEGEND_ROW + 6 if entries else 0
    area = (LEFT, TOP, width - RIGHT, height - BOTTOM - legend_height)
    x_lo, x_hi = _range([float(x) for s in drawn for x in s.xs])
    y_lo, y_hi = _range([float(y) for s in drawn for y in s.ys])

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = area[0] + (x - x_lo) / (x_hi - x_lo) * (area[2] - area[0])
        py = area[3] - (y - y_lo) / (y_hi - y_lo) * (area[3] - area[1])
        return px, py

    for tick in nice_ticks(y_lo, y_hi):
        _, py = to_px(x_lo, tick)
        draw.line([(area[0], py), (area[2], py)], fill=(230, 230, 230))
        draw.text((4, py - 6), _label(tick), fill="black")
    for tick in x_ticks if x_ticks is not None else nice_ticks(x_lo, x_hi):
        px, _ = to_px(tick, y_lo)
        draw.line([(px, area[3]), (px, area[3] + 4)], fill="black")
        draw.text((px - 8, area[3] + 6), _label(tick), fill="black")
    draw.rectangle(area, outline="black")
    paths = []
    for s in drawn:
        points = [to_px(float(x), float(y)) for x, y in zip(s.xs, s.ys)]
        _stroke(draw, s, points)
        paths.append((s, points))
    draw.text((LEFT, 8), title, fill="black")
    draw.text(((area[0] + area[2]) // 2 - 3 * len(x_label), area[3] + 22), x_label, fill="black")
    draw.text((4, TOP - 14), y_label, fill=GREY)
    chart = Chart(image, area, paths)
    if entries:
        top = area[3] + AXIS_LABELS
        right = max(x + HANDLE + 6 + draw.textlength(s.label) for _, x, s in entries)
        chart.legend = (area[0], top, min(width - 1, int(right) + 6), top + rows * LEGEND_ROW + 2)
        draw.rectangle(chart.legend, outline=(200, 200, 200))
        for row, x, s in entries:
            y = top + 1 + row * LEGEND_ROW + LEGEND_ROW / 2
            handle = ((x, y), (x + HANDLE, y))
            _stroke(draw, s, list(handle), marker_at=[((x + x + HANDLE) / 2, y)])
            draw.text((x + HANDLE + 6, y - 6), s.label, fill="black")
            chart.handles.append((s, handle))
    return chart


def _legend_rows(draw: ImageDraw.ImageDraw, series: list[Series], width: int) -> list[tuple[int, float, Series]]:
    """``(row, x, series)`` per legend entry, left to right, wrapping to a new row when the next
    entry would run past ``width``."""
    out, row, x = [], 0, LEFT + 6
    for s in series:
        entry = HANDLE + 6 + draw.textlength(s.label)
        if x > LEFT + 6 and x + entry > LEFT + width:
            row, x = row + 1, LEFT + 6
        out.append((row, x, s))
        x += entry + 18
    return out


def _stroke(draw: ImageDraw.ImageDraw, s: Series, points: list[tuple[float, float]],
            marker_at: Optional[list[tuple[float, float]]] = None) -> None:
    """A series' line through ``points`` as the plot draws it (a legend handle included)."""
    if s.dashed:
        for a, b in zip(points, points[1:]):
            _dashed(draw, a, b, s.colour)
    elif len(points) > 1:
        draw.line(points, fill=s.colour, width=2)
    if s.markers or len(points) == 1:
        for px, py in marker_at or points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=s.colour)


def _dashed(draw: ImageDraw.ImageDraw, a: tuple, b: tuple, colour: tuple, dash: float = 6.0) -> None:
    length = math.dist(a, b)
    pieces = max(1, int(length // dash))
    for i in range(0, pieces, 2):
        t0, t1 = i / pieces, min(1.0, (i + 1) / pieces)
        draw.line([(a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0),
                   (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)], fill=colour, width=2)


def stack(images: list[Image.Image]) -> Image.Image:
    """Images one under the other, on white."""
    width = max(im.width for im in images)
    out = Image.new("RGB", (width, sum(im.height for im in images)), "white")
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height
    return out
