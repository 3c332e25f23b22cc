"""Small line charts drawn with PIL, for the report (the loss curve, the conditioning-scale sweep).

PIL is already a dependency of every stage; a plotting library would add tens of MB to the
evaluation image for two charts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
GREY = (120, 120, 120)
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 30, 40  # margins around the plotting area, in pixels


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


def line_chart(series: list[Series], title: str, x_label: str, y_label: str,
               size: tuple[int, int] = (560, 320), x_ticks: Optional[list[float]] = None) -> Image.Image:
    """A chart of ``series`` (lines; ``markers`` adds dots, ``dashed`` suits reference values)."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    drawn = [s for s in series if len(s.xs)]
    if not drawn:
        draw.text((LEFT, height // 2), "no data", fill="black")
        return image
    x_lo, x_hi = _range([float(x) for s in drawn for x in s.xs])
    y_lo, y_hi = _range([float(y) for s in drawn for y in s.ys])
    area = (LEFT, TOP, width - RIGHT, height - BOTTOM)

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
    for s in drawn:
        points = [to_px(float(x), float(y)) for x, y in zip(s.xs, s.ys)]
        if s.dashed:
            for a, b in zip(points, points[1:]):
                _dashed(draw, a, b, s.colour)
        elif len(points) > 1:
            draw.line(points, fill=s.colour, width=2)
        if s.markers or len(points) == 1:
            for px, py in points:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=s.colour)
    draw.text((LEFT, 8), title, fill="black")
    draw.text(((area[0] + area[2]) // 2 - 3 * len(x_label), height - 16), x_label, fill="black")
    draw.text((4, TOP - 14), y_label, fill=GREY)
    for k, s in enumerate(drawn):  # legend, top right inside the plot
        y = area[1] + 6 + 14 * k
        draw.line([(area[2] - 150, y + 6), (area[2] - 130, y + 6)], fill=s.colour, width=2)
        draw.text((area[2] - 125, y), s.label[:22], fill="black")
    return image


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
