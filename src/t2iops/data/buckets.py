"""Aspect-ratio buckets: the training shapes a dataset of mixed sizes is sorted into.

SDXL was trained with buckets of about one megapixel from 1:1 to about 1:2.4 and 2.4:1, and
conditioned on each sample's original size and crop; a square crop of every sample fine-tunes it
off that distribution and cuts the sides off wide and tall layouts. Each sample goes to the
bucket whose aspect ratio is nearest its own (in log space, so 2:1 and 1:2 are equally far from
1:1), is resized to cover the bucket and cropped to it.

``encode.buckets`` chooses the list:

* ``square``: one ``resolution`` x ``resolution`` bucket (every sample centre- or randomly
  cropped to a square, as before buckets existed);
* ``auto``: SDXL's standard list, scaled to ``resolution``'s pixel area and rounded to a multiple
  of what the VAE and the adapter's downscale factor require;
* a list of ``HxW`` strings (height x width), e.g. ``[1024x1024, 832x1216, 1216x832]``.

A bucket is ``(height, width)`` everywhere, as tensors and SDXL's time ids order them.
"""
from __future__ import annotations

import math
import re
from typing import Sequence, Union

from ..errors import UsageError

Bucket = tuple[int, int]  # (height, width)

# SDXL's ~1-megapixel training buckets (height, width) at resolution 1024: 1:1 to 1:2.4 and 2.4:1.
SDXL_BUCKETS: tuple[Bucket, ...] = (
    (1024, 1024),
    (1152, 896), (896, 1152),
    (1216, 832), (832, 1216),
    (1344, 768), (768, 1344),
    (1536, 640), (640, 1536),
)
SDXL_RESOLUTION = 1024
_HXW = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_bucket(text: str) -> Bucket:
    """``"832x1216"`` -> (832, 1216); errors name the value and the expected form."""
    match = _HXW.match(str(text))
    if not match:
        raise UsageError(f"encode.buckets: {text!r} is not a bucket; write HEIGHTxWIDTH, e.g. 832x1216")
    height, width = int(match.group(1)), int(match.group(2))
    if height <= 0 or width <= 0:
        raise UsageError(f"encode.buckets: {text!r} has a zero side")
    return height, width


def bucket_list(spec: Union[str, Sequence[str]], resolution: int, multiple: int = 64) -> list[Bucket]:
    """The buckets ``spec`` (``encode.buckets``) names for ``resolution``, each side a multiple of
    ``multiple``; square first, no duplicates. Explicit buckets that are not multiples of
    ``multiple`` are refused, naming the bucket and the multiple."""
    if multiple < 1:
        raise UsageError(f"bucket multiple must be >= 1, got {multiple}")
    if spec == "square":
        side = max(multiple, _round_to(resolution, multiple))
        return [(side, side)]
    if spec == "auto":
        scale = resolution / SDXL_RESOLUTION
        found = [_fit(h * scale, w * scale, multiple) for h, w in SDXL_BUCKETS]
    elif isinstance(spec, str):
        raise UsageError(f"encode.buckets must be 'square', 'auto' or a list of HEIGHTxWIDTH, got {spec!r}")
    else:
        if not spec:
            raise UsageError("encode.buckets is an empty list; give at least one HEIGHTxWIDTH or use 'square'")
        found = [parse_bucket(item) for item in spec]
        for (h, w), text in zip(found, spec):
            if h % multiple or w % multiple:
                raise UsageError(f"encode.buckets: {text} is not a multiple of {multiple} on each side (what the VAE "
                                 f"and the adapter's downscale factor need); e.g. {_round_to(h, multiple)}x"
                                 f"{_round_to(w, multiple)}")
    unique: list[Bucket] = []
    for bucket in sorted(found, key=lambda b: abs(math.log(b[1] / b[0]))):  # square first, then by aspect
        if bucket not in unique:
            unique.append(bucket)
    return unique


def nearest_bucket(height: int, width: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is nearest ``width / height`` in log space; on a tie the
    one listed first (square before others)."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b[1] / b[0]) - aspect))


def beyond_range(height: int, width: int, buckets: Sequence[Bucket], tolerance: float = 0.1) -> bool:
    """Whether an image is wider or taller than every bucket by more than ``tolerance`` (in log
    aspect): it still goes to the nearest (extreme) bucket, and loses more to the crop; the encode
    stage counts and reports these."""
    aspect = math.log(width / height)
    aspects = [math.log(b[1] / b[0]) for b in buckets]
    return aspect > max(aspects) + tolerance or aspect < min(aspects) - tolerance


def bucket_name(bucket: Bucket) -> str:
    return f"{bucket[0]}x{bucket[1]}"


def _round_to(value: float, multiple: int) -> int:
    return int(round(value / multiple)) * multiple


def _fit(height: float, width: float, multiple: int) -> Bucket:
    """The bucket of sides that are multiples of ``multiple`` nearest a scaled SDXL bucket: of
    each side rounded and its two neighbours, those whose pixel area is within a quarter of the
    target's, the one whose aspect ratio is nearest (then the nearer area). Rounding each side on
    its own is exact at SDXL's sizes, but on a coarse grid (64 px with a factor of 16) it turned
    2.4:1 into 3:1 (now 2:1); the aspect is what a bucket is for."""
    aspect, area = math.log(width / height), math.log(width * height)
    h0, w0 = _round_to(height, multiple), _round_to(width, multiple)
    candidates = [(h, w) for h in (h0 - multiple, h0, h0 + multiple) for w in (w0 - multiple, w0, w0 + multiple)
                  if h >= multiple and w >= multiple]

    def errors(bucket: Bucket) -> tuple[float, float]:
        return abs(math.log(bucket[1] / bucket[0]) - aspect), abs(math.log(bucket[0] * bucket[1]) - area)

    near = [b for b in candidates if errors(b)[1] <= math.log(1.25)]
    if near:
        return min(near, key=errors)
    return min(candidates, key=lambda b: sum(errors(b)))
