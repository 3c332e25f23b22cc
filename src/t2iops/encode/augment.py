"""Geometry shared by an image and its condition: resize, crop, flip, and SDXL's time ids.

The image and its condition must go through *identical* geometry, or the adapter learns to
put circles where they are not. Everything here is a pure function of the sample's size and a
per-sample seed, so an encode run is reproducible and the trainer can redo the flip exactly.

SDXL conditions its UNet on six "time ids" per sample: the original image size, the top-left
corner of the crop (in the resized image) and the target size. They differ per sample (the
diffusers example gives every sample the same values; we do not).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from ..hashing import raw_digest


@dataclass(frozen=True)
class CropPlan:
    """Resize the shorter side to ``resolution``, then take a ``resolution`` square at ``top, left``."""

    original_size: tuple[int, int]  # (height, width) of the source image
    resized_size: tuple[int, int]  # (height, width) after the shorter side became ``resolution``
    top: int
    left: int
    resolution: int

    def time_ids(self, flipped: bool = False) -> list[int]:
        """SDXL's ``[orig_h, orig_w, crop_top, crop_left, target_h, target_w]``. A horizontal
        flip mirrors the crop inside the resized image, so its left corner moves."""
        left = self.resized_size[1] - self.left - self.resolution if flipped else self.left
        return [*self.original_size, self.top, left, self.resolution, self.resolution]


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-sample seed that depends only on the id (not on row order or Python's hash salt)."""
    return int.from_bytes(raw_digest(f"{seed}:{sample_id}".encode())[:8], "big")


def plan_crop(width: int, height: int, resolution: int, random_crop: bool, seed: int) -> CropPlan:
    scale = resolution / min(width, height)
    # round() as torchvision's Resize does for the shorter side; never below the target.
    new_h = max(resolution, round(height * scale))
    new_w = max(resolution, round(width * scale))
    if random_crop:
        rng = random.Random(seed)
        top = rng.randint(0, new_h - resolution)
        left = rng.randint(0, new_w - resolution)
    else:  # centre crop, as torchvision's CenterCrop rounds it
        top = int(round((new_h - resolution) / 2.0))
        left = int(round((new_w - resolution) / 2.0))
    return CropPlan((height, width), (new_h, new_w), top, left, resolution)


def apply_crop(image: Image.Image, plan: CropPlan) -> Image.Image:
    """Apply ``plan`` to an image of the plan's original size (bilinear resize, then crop)."""
    if image.size != (plan.original_size[1], plan.original_size[0]):
        raise ValueError(
            f"image is {image.size[0]}x{image.size[1]} but the crop plan was made for "
            f"{plan.original_size[1]}x{plan.original_size[0]}"
        )
    resized = image.resize((plan.resized_size[1], plan.resized_size[0]), Image.BILINEAR)
    return resized.crop((plan.left, plan.top, plan.left + plan.resolution, plan.top + plan.resolution))


def prepare_pair(
    image: Image.Image, condition: Image.Image, resolution: int, random_crop: bool, seed: int
) -> tuple[Image.Image, Image.Image, CropPlan]:
    """Image and condition at training resolution with the same crop. A condition of another
    size is first brought to the image's size, so the crop lands on the same content."""
    plan = plan_crop(image.width, image.height, resolution, random_crop, seed)
    if condition.size != image.size:
        condition = condition.resize(image.size, Image.BILINEAR)
    return apply_crop(image, plan), apply_crop(condition, plan), plan
