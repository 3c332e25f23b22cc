"""``t2iops data synth``: a deterministic fill50k-style circles dataset.

Each sample is a filled circle of one palette colour on a background of another; its
condition is the circle's outline, white on black, as in fill50k; its caption reads
"cyan circle with brown background". Rows also carry the geometry (``circle``: centre and
radius in pixels) and the colour names, so evaluation can measure the circle IoU and check the
colours by nearest palette entry.

``data.synth.aspect_ratios`` (width / height) gives the canvases, used in turn: sample ``i`` is
drawn on ratio ``i mod len``, each canvas about ``resolution`` x ``resolution`` pixels (so
aspect-ratio buckets get wide and tall samples to sort); ``[1.0]``, the default, is the square
dataset as it always was, byte for byte.

Sample ``i`` is drawn from its own generator seeded by ``(seed, i)``: the same seed gives
byte-identical files, and a larger ``count`` extends a dataset without changing its first rows.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageDraw

from .. import storage
from ..progress import progress

log = logging.getLogger(__name__)

# Clearly distinct colours (pairwise RGB distance >= 105), so "nearest palette colour" is a
# meaningful check of a generated image.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 35),
    "orange": (250, 130, 10),
    "yellow": (240, 230, 50),
    "green": (40, 160, 50),
    "cyan": (40, 215, 225),
    "blue": (30, 60, 210),
    "purple": (140, 40, 190),
    "pink": (250, 150, 210),
    "brown": (110, 60, 20),
    "gray": (128, 128, 128),
}


def nearest_color(rgb: tuple[float, float, float]) -> str:
    """The palette name closest (Euclidean RGB) to ``rgb``."""
    names = list(PALETTE)
    table = np.array([PALETTE[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(((table - np.asarray(rgb, dtype=np.float64)) ** 2).sum(axis=1)))]


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for sample ``index`` of a dataset synthesised with ``seed``."""
    return np.random.default_rng([seed, index])


def canvas_size(resolution: int, aspect_ratio: float) -> tuple[int, int]:
    """(width, height) of a canvas of ``aspect_ratio`` (width / height) with about
    ``resolution`` x ``resolution`` pixels, sides rounded to a multiple of 8 (what image models
    divide by); a square canvas is exactly ``resolution`` on each side."""
    if aspect_ratio == 1.0:
        return resolution, resolution
    area = resolution * resolution
    width = max(8, int(round(math.sqrt(area * aspect_ratio) / 8)) * 8)
    height = max(8, int(round(math.sqrt(area / aspect_ratio) / 8)) * 8)
    return width, height


def render_sample(rng: np.random.Generator, resolution: int, synth_cfg: Any,
                  size: Optional[tuple[int, int]] = None) -> tuple[Image.Image, Image.Image, dict]:
    """Draw one sample: (RGB image, RGB condition, meta with ``text``, ``circle``, ``color``,
    ``background``). ``synth_cfg`` is a :class:`t2iops.config.SynthConfig`. The canvas is
    ``size`` (width, height), default a ``resolution`` square; the radius is a fraction of its
    shorter side."""
    width, height = size or (resolution, resolution)
    short = min(width, height)
    names = list(PALETTE)
    color_index = int(rng.integers(len(names)))
    background_index = int(rng.integers(len(names) - 1))
    if background_index >= color_index:  # any colour but the circle's
        background_index += 1
    color, background = names[color_index], names[background_index]

    radius_frac = rng.uniform(synth_cfg.min_radius_frac, synth_cfg.max_radius_frac)
    r = min(max(1, int(round(radius_frac * short))), (short - 1) // 2)
    # The box [c - r, c + r] is inclusive in PIL, so c + r <= side - 1 keeps it inside.
    cx = int(rng.integers(r, width - r))
    cy = int(rng.integers(r, height - r))
    box = (cx - r, cy - r, cx + r, cy + r)

    image = Image.new("RGB", (width, height), PALETTE[background])
    ImageDraw.Draw(image).ellipse(box, fill=PALETTE[color])
    # Drawn in one channel without anti-aliasing: the ring is exactly 0 or 255.
    outline = Image.new("L", (width, height), 0)
    ImageDraw.Draw(outline).ellipse(box, outline=255, width=min(synth_cfg.outline_width, r))
    meta = {
        "text": f"{color} circle with {background} background",
        "circle": {"cx": cx, "cy": cy, "r": r},
        "color": color,
        "background": background,
    }
    return image, outline.convert("RGB"), meta


def synthesize(out: str, cfg: Any) -> dict:
    """Write ``cfg.data.synth.count`` samples to ``out`` (folder or s3:// prefix) in the
    dataset format: ``metadata.jsonl``, ``images/``, ``conditioning_images/``. Returns a summary."""
    synth = cfg.data.synth
    data = cfg.data
    id_key = data.id_column or "id"
    width = max(6, len(str(synth.count - 1)))
    colors: dict[str, int] = {}
    with storage.publish(out, cfg, extra={"stage": "synth", "count": synth.count, "seed": synth.seed}) as staging:
        (staging / "images").mkdir()
        (staging / "conditioning_images").mkdir()
        with open(staging / "metadata.jsonl", "w") as metadata:
            for index in progress(range(synth.count), desc="synth", unit="sample"):
                size = canvas_size(synth.resolution, synth.aspect_ratios[index % len(synth.aspect_ratios)])
                image, condition, meta = render_sample(sample_rng(synth.seed, index), synth.resolution, synth, size)
                row_id = f"{index:0{width}d}"
                image_path = f"images/{row_id}.png"
                condition_path = f"conditioning_images/{row_id}.png"
                image.save(staging / image_path, format="PNG")
                # The condition is stored as one channel (a third of the bytes); readers get RGB.
                condition.convert("L").save(staging / condition_path, format="PNG")
                row = {
                    id_key: row_id,
                    data.image_column: image_path,
                    data.conditioning_image_column: condition_path,
                    data.caption_column: meta.pop("text"),
                    **meta,
                }
                metadata.write(json.dumps(row) + "\n")
                colors[meta["color"]] = colors.get(meta["color"], 0) + 1
        cfg.write(staging)
    summary = {
        "out": str(out),
        "count": synth.count,
        "resolution": synth.resolution,
        "seed": synth.seed,
        "canvases": [list(canvas_size(synth.resolution, a)) for a in synth.aspect_ratios],  # (width, height)
        "colors": dict(sorted(colors.items())),
    }
    log.info("synthesised %d samples at %d px -> %s", synth.count, synth.resolution, out)
    return summary
