"""Does a generated image show the prompted colours? The toy base's quality check.

The circle's position is random, so it is unknown when judging a generated image. We judge by
palette colours only: every pixel is mapped to its nearest palette colour; the background is
the most common one along the image border; the circle is the most common *other* palette
colour among the remaining (inner) pixels. A sample passes when both equal the prompted
colours. A blank image (no second colour inside) fails.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw


def palette_labels(image, palette: Mapping[str, Sequence[int]]) -> tuple[np.ndarray, list[str]]:
    """Per-pixel index of the nearest palette colour (Euclidean RGB) and the names in index order."""
    names = list(palette)
    table = np.asarray([palette[n] for n in names], dtype=np.float32)  # [K, 3]
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)  # [H, W, 3]
    dist = ((pixels[:, :, None, :] - table[None, None]) ** 2).sum(-1)  # [H, W, K]
    return dist.argmin(-1), names


def judge_colours(image, palette: Mapping[str, Sequence[int]]) -> tuple[str, Optional[str]]:
    """(background, circle) palette names read off ``image``; circle is None when the inside
    holds no colour but the background's."""
    labels, names = palette_labels(image, palette)
    border = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    background = int(np.bincount(border, minlength=len(names)).argmax())
    inner = labels[1:-1, 1:-1].ravel()
    counts = np.bincount(inner, minlength=len(names))
    counts[background] = 0
    circle = int(counts.argmax()) if counts.max() > 0 else None
    return names[background], (names[circle] if circle is not None else None)


def colour_accuracy(images, prompted: Sequence[tuple[str, str]], palette: Mapping[str, Sequence[int]]) -> dict:
    """Share of images whose (circle, background) colours both match ``prompted`` (a list of
    (circle, background) names), plus the share for each colour alone and per-sample verdicts."""
    if len(images) != len(prompted):
        raise ValueError(f"{len(images)} images but {len(prompted)} prompted colour pairs")
    if not images:
        raise ValueError("colour_accuracy needs at least one image")
    samples = []
    for image, (circle, background) in zip(images, prompted):
        got_background, got_circle = judge_colours(image, palette)
        samples.append(
            {
                "circle": circle,
                "background": background,
                "judged_circle": got_circle,
                "judged_background": got_background,
                "ok": got_circle == circle and got_background == background,
            }
        )
    n = len(samples)
    return {
        "colour_accuracy": sum(s["ok"] for s in samples) / n,
        "circle_accuracy": sum(s["judged_circle"] == s["circle"] for s in samples) / n,
        "background_accuracy": sum(s["judged_background"] == s["background"] for s in samples) / n,
        "num_samples": n,
        "samples": samples,
    }


def colour_pairs(palette_names: Sequence[str], count: int, seed: int) -> list[tuple[str, str]]:
    """``count`` (circle, background) pairs of distinct colours, drawn at random with ``seed``."""
    rng = np.random.default_rng(seed)
    names = list(palette_names)
    pairs = []
    for _ in range(count):
        i, j = rng.choice(len(names), size=2, replace=False)
        pairs.append((names[int(i)], names[int(j)]))
    return pairs


def sample_grid(images, captions: Sequence[str], verdicts: Optional[Sequence[bool]] = None, columns: int = 8):
    """One PNG-ready grid: each image with its prompt below (and a green/red tick bar when
    ``verdicts`` are given)."""
    if not images:
        raise ValueError("sample_grid needs at least one image")
    w, h = images[0].size
    cell_w, text_h = max(w, 96), 24
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * cell_w, rows * (h + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k, (image, caption) in enumerate(zip(images, captions)):
        x, y = (k % columns) * cell_w, (k // columns) * (h + text_h)
        grid.paste(image.convert("RGB"), (x + (cell_w - w) // 2, y))
        words = caption.replace(" background", "").replace(" circle with", " /").split()
        draw.text((x + 2, y + h + 1), " ".join(words[:3]), fill=(0, 0, 0))
        if verdicts is not None:
            colour = (20, 160, 40) if verdicts[k] else (200, 30, 30)
            draw.rectangle((x, y + h + 20, x + cell_w - 1, y + h + text_h - 1), fill=colour)
    return grid
