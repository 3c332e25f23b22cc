"""The report's images: the sample grid (best and worst samples), the training loss curve and
the conditioning-scale sweep."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from PIL import Image, ImageDraw

from .plots import COLOURS, GREY, Chart, Series, nice_ticks, plot, stack

WITHOUT = "without_adapter"
REAL = "real_images"
GRID_HEADER, GRID_LEFT = 32, 170  # the grid's column headers (two lines) and row labels, in pixels


def scale_of(variant: str) -> float:
    """``adapter@1.5`` -> 1.5."""
    return float(variant.split("@")[1])


def sample_file(sample: dict) -> str:
    # Shards written before file names were sanitized named images <index>_<id>.png.
    return sample.get("file") or f"{sample['index']:06d}_{sample['id']}.png"


# -- grid -------------------------------------------------------------------------------------
def ranking_metric(info: dict) -> dict:
    """What the grid ranks samples by: circle IoU when it is measured (the embedded demo's
    headline and gate), else the condition kind's primary fidelity metric."""
    return next((m for m in info["fidelity"] if m["name"] == "circle_iou"), info["fidelity"][0])


def grid_selection(samples: list[dict], info: dict, rows: int) -> list[tuple[str, dict]]:
    """``rows`` samples ranked by :func:`ranking_metric` with the adapter (first scale): the best
    half and the worst half, best first, each tagged with its rank; all of them, ranked, when
    there are no more than ``rows``."""
    metric = ranking_metric(info)
    key = f"{metric['name']}/{info['variants'][1]}"
    ranked = sorted(samples, key=lambda s: (-s[key] if metric["higher_is_better"] else s[key], s["index"]))
    n = len(ranked)
    if n <= rows:
        chosen = list(enumerate(ranked))
    else:
        best = math.ceil(rows / 2)
        worst = rows - best
        chosen = list(enumerate(ranked[:best])) + [(n - worst + k, s) for k, s in enumerate(ranked[n - worst:])]
    return [(f"rank {r + 1}/{n}: {metric['name']} {s[key]:.3f}", s) for r, s in chosen]


def grid_columns(info: dict, with_real: bool) -> list[tuple[str, str]]:
    """``(image folder key, header)`` per grid column, left to right: the condition, the images
    without the adapter, the adapter at each conditioning scale in increasing order, the real
    image. Scale 0 is not a column of its own: its images are the ones without the adapter
    (the same bits), so that column's header says "scale 0" instead."""
    variants = info["variants"]
    scales = sorted(scale_of(v) for v in variants[1:])
    columns = [("condition", "condition"),
               (WITHOUT, "without adapter\n(scale 0)" if 0 in scales else "without adapter")]
    by_scale = {scale_of(v): v for v in variants[1:]}
    columns += [(by_scale[s], f"with adapter\nscale {s:g}") for s in scales if s != 0]
    return columns + ([(REAL, "real image")] if with_real else [])


def make_grid(local_shards: list[Path], selection: list[tuple[str, dict]], info: dict,
              columns: Optional[list[tuple[str, str]]] = None) -> Image.Image:
    """Rows of the :func:`grid_columns` (condition | without adapter | with adapter, each scale |
    real image), each labelled with the sample's rank, id and prompt."""
    columns = columns or grid_columns(info, all((path / REAL).is_dir() for path in local_shards))
    cell = min(max(info["resolution"], 128), 256)
    header, left = GRID_HEADER, GRID_LEFT
    grid = Image.new("RGB", (left + cell * len(columns), header + cell * len(selection)), "white")
    draw = ImageDraw.Draw(grid)
    for c, (_, label) in enumerate(columns):
        for k, line in enumerate(label.split("\n")):
            draw.text((left + c * cell + 4, 3 + 13 * k), line, fill="black")
    folders = {"condition": "conditions", REAL: REAL, **{v: f"images/{v}" for v in info["variants"]}}
    for r, (tag, s) in enumerate(selection):
        y = header + r * cell
        draw.text((4, y + 4), tag, fill="black")
        draw.text((4, y + 18), f"#{s['index']} {str(s['id'])[:24]}", fill="black")
        for k, line in enumerate(_wrap(s["prompt"], 26)[:6]):
            draw.text((4, y + 34 + 12 * k), line, fill="gray")
        for c, (key, _) in enumerate(columns):
            path = _find(local_shards, folders[key], sample_file(s))
            with Image.open(path) as im:
                _paste_fitted(grid, im.convert("RGB"), left + c * cell, y, cell)
    return grid


def _paste_fitted(grid: Image.Image, image: Image.Image, x: int, y: int, cell: int) -> None:
    """Paste ``image`` into the ``cell`` square at (x, y), scaled to fit and centred: a wide or
    tall sample keeps its aspect ratio (white bands fill the rest) instead of being squashed."""
    w, h = image.size
    fit_w, fit_h = (cell, max(1, round(cell * h / w))) if w >= h else (max(1, round(cell * w / h)), cell)
    grid.paste(image.resize((fit_w, fit_h), Image.NEAREST), (x + (cell - fit_w) // 2, y + (cell - fit_h) // 2))


def _find(local_shards: list[Path], folder: str, name: str) -> Path:
    for path in local_shards:
        candidate = path / folder / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{folder}/{name} is in none of the shards {', '.join(map(str, local_shards))}")


def _wrap(text: str, width: int) -> list[str]:
    lines, cur = [], ""
    for word in str(text).split():
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}".strip()
    return lines + ([cur] if cur else [])


# -- loss curve -------------------------------------------------------------------------------
def loss_curve_figure(curve: dict) -> Optional[Image.Image]:
    chart = loss_curve_chart(curve)
    return chart.image if chart is not None else None


def loss_curve_chart(curve: dict) -> Optional[Chart]:
    """The adapter's training loss per step, with a moving average when there are many points."""
    steps, losses = curve.get("steps") or [], curve.get("loss") or []
    if not steps:
        return None
    if len(steps) < 50:
        series = [Series("loss", steps, losses, COLOURS[0], markers=len(steps) <= 20)]
    else:
        window = max(5, len(steps) // 25)
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1))
                  for i in range(len(losses))]
        series = [Series("loss", steps, losses, (170, 200, 230)),
                  Series(f"mean of {window} points", steps, smooth, COLOURS[0])]
    ticks = [t for t in nice_ticks(steps[0], steps[-1]) if t == int(t)]  # steps are whole numbers
    return plot(series, "training loss of the adapter", "step", "loss", x_ticks=ticks or None)


# -- conditioning-scale sweep -----------------------------------------------------------------
def sweep_table(metrics: dict, info: dict, names: list[str]) -> list[list]:
    """Rows ``[scale, value per metric...]``: "without adapter" first, then each conditioning
    scale in increasing order, then "real images" when measured. Scale 0 is the row without
    the adapter (the same images), labelled "0 (without adapter)", not a second row."""
    variants = sorted(info["variants"][1:], key=scale_of)
    zero = any(scale_of(v) == 0 for v in variants)
    rows = [["0 (without adapter)" if zero else "without adapter", *[metrics[n]["without_adapter"] for n in names]]]
    for v in variants:
        if scale_of(v) != 0:
            rows.append([scale_of(v), *[_at_scale(metrics, info, n, v) for n in names]])
    if any("real_images" in metrics[n] for n in names):
        rows.append(["real images", *[metrics[n].get("real_images", "-") for n in names]])
    return rows


def _at_scale(metrics: dict, info: dict, name: str, variant: str) -> Any:
    if variant == info["variants"][1]:
        return metrics[name]["with_adapter"]
    return metrics["sweep"][f"scale_{variant.split('@')[1]}"].get(name, "-")


def sweep_figure(metrics: dict, info: dict, per_sample: list[dict]) -> Image.Image:
    return stack([chart.image for chart in sweep_charts(metrics, info, per_sample)])


def sweep_charts(metrics: dict, info: dict, per_sample: list[dict]) -> list[Chart]:
    """One panel per per-sample metric: its value at each conditioning scale, with dashed
    lines at the value without the adapter and on the real images."""
    variants = sorted(info["variants"][1:], key=scale_of)
    scales = [scale_of(v) for v in variants]
    panels = []
    for m in per_sample:
        name = m["name"]
        series = [Series("with adapter", scales, [_at_scale(metrics, info, name, v) for v in variants],
                         COLOURS[0], markers=True),
                  Series("without adapter", [scales[0], scales[-1]], [metrics[name]["without_adapter"]] * 2,
                         GREY, dashed=True)]
        if "real_images" in metrics[name]:
            series.append(Series("real images", [scales[0], scales[-1]], [metrics[name]["real_images"]] * 2,
                                 COLOURS[2], dashed=True))
        better = "higher" if m["higher_is_better"] else "lower"
        panels.append(plot(series, f"{name} ({better} is better) vs conditioning scale",
                           "adapter conditioning scale", name, x_ticks=scales))
    return panels
