"""Geometry shared by an image and its condition: resize, crop, flip, and SDXL's time ids.

The image and its condition must go through *identical* geometry, or the adapter learns to
put circles where they are not. Everything here is a pure function of the sample's size and a
per-sample seed, so an encode run is reproducible and the trainer can redo the flip exactly.

Each sample is resized to cover its aspect-ratio bucket (:mod:`t2iops.data.buckets`) and cropped
to exactly the bucket; with one square bucket that is the classic shorter-side resize and square
crop. SDXL conditions its UNet on six "time ids" per sample: the original image size, the top-left
corner of the crop (in the resized image) and the target size (the bucket). They differ per sample (the
diffusers example gives every sample the same values; we do not).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Union

from PIL import Image

from ..hashing import raw_digest


@dataclass(frozen=True)
class CropPlan:
    """Resize so both sides cover the bucket ``(target_h, target_w)``, then take the bucket's
    shape at ``top, left``. A square bucket is the square crop of the shorter side."""

    original_size: tuple[int, int]  # (height, width) of the source image
    resized_size: tuple[int, int]  # (height, width) after the smallest resize that covers the bucket
    top: int
    left: int
    target_size: tuple[int, int]  # (height, width): the bucket

    def time_ids(self, flipped: bool = False) -> list[int]:
        """SDXL's ``[orig_h, orig_w, crop_top, crop_left, target_h, target_w]``. A horizontal
        flip mirrors the crop inside the resized image, so its left corner moves."""
        left = self.resized_size[1] - self.left - self.target_size[1] if flipped else self.left
        return [*self.original_size, self.top, left, *self.target_size]


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-sample seed that depends only on the id (not on row order or Python's hash salt)."""
    return int.from_bytes(raw_digest(f"{seed}:{sample_id}".encode())[:8], "big")


def plan_crop(width: int, height: int, target: Union[int, tuple[int, int]], random_crop: bool,
              seed: int) -> CropPlan:
    """The plan for an image of ``width`` x ``height`` and a bucket ``target`` = (height, width),
    or one side of a square bucket. The scale is the smallest that makes both sides cover the
    bucket, so the crop loses only the excess of the longer side (relative to the bucket)."""
    target_h, target_w = (target, target) if isinstance(target, int) else target
    scale = max(target_h / height, target_w / width)
    # round() as torchvision's Resize does for the shorter side; never below the target.
    new_h = max(target_h, round(height * scale))
    new_w = max(target_w, round(width * scale))
    if random_crop:
        rng = random.Random(seed)
        top = rng.randint(0, new_h - target_h)
        left = rng.randint(0, new_w - target_w)
    else:  # centre crop, as torchvision's CenterCrop rounds it
        top = int(round((new_h - target_h) / 2.0))
        left = int(round((new_w - target_w) / 2.0))
    return CropPlan((height, width), (new_h, new_w), top, left, (target_h, target_w))


def apply_crop(image: Image.Image, plan: CropPlan) -> Image.Image:
    """Apply ``plan`` to an image of the plan's original size (bilinear resize, then crop)."""
    if image.size != (plan.original_size[1], plan.original_size[0]):
        raise ValueError(
            f"image is {image.size[0]}x{image.size[1]} but the crop plan was made for "
            f"{plan.original_size[1]}x{plan.original_size[0]}"
        )
    resized = image.resize((plan.resized_size[1], plan.resized_size[0]), Image.BILINEAR)
    height, width = plan.target_size
    return resized.crop((plan.left, plan.top, plan.left + width, plan.top + height))


def prepare_pair(
    image: Image.Image, condition: Image.Image, target: Union[int, tuple[int, int]], random_crop: bool, seed: int
) -> tuple[Image.Image, Image.Image, CropPlan]:
    """Image and condition at the bucket ``target`` with the same crop. A condition of another
    size is first brought to the image's size, so the crop lands on the same content."""
    plan = plan_crop(image.width, image.height, target, random_crop, seed)
    if condition.size != image.size:
        condition = condition.resize(image.size, Image.BILINEAR)
    return apply_crop(image, plan), apply_crop(condition, plan), plan
