"""Generate the evaluation images: with the adapter and, same seeds and prompts, without it.

The baseline is the family's *plain* text-to-image generator (diffusers ``StableDiffusionPipeline``
/ ``StableDiffusionXLPipeline``) built from the same loaded components, not the adapter generator
at ``adapter_conditioning_scale=0``: "no adapter" then means exactly the base model users
would run. Both generators draw their initial latents from one generator per image, seeded
``evaluate.seed + sample index``, so an image does not depend on its batch or shard.

The diffusers adapter generators run the adapter once per image, before the denoising loop,
and add the same residuals (doubled along the batch for classifier-free guidance) at every
step; they never re-run it per step.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

from ..errors import UsageError

log = logging.getLogger(__name__)

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
}


def make_scheduler(base_scheduler: Any, name: str):
    """A fresh scheduler of the requested kind, configured like the base model's."""
    import diffusers

    if name == "default":
        return base_scheduler.__class__.from_config(base_scheduler.config)
    if name not in SCHEDULERS:
        raise UsageError(f"evaluate.scheduler: unknown scheduler {name!r}; choose default, {', '.join(SCHEDULERS)}")
    cls = getattr(diffusers, SCHEDULERS[name])
    extra = {}
    if "clip_sample" not in base_scheduler.config and "clip_sample" in inspect.signature(cls.__init__).parameters:
        # DDIM's default clips the predicted clean sample to [-1, 1], which is meant for pixels:
        # scaled latents are not bounded that way, and a base whose scheduler config does not
        # say (the toy base's DPM-Solver) would otherwise sample flat colour (circle IoU 0.34).
        extra["clip_sample"] = False
    return cls.from_config(base_scheduler.config, **extra)


def cover_crop(image: Image.Image, size: tuple[int, int], resample=Image.BICUBIC) -> Image.Image:
    """Resize to cover ``size`` (height, width) and centre-crop to it: the encode stage's
    geometry (:func:`t2iops.encode.augment.plan_crop`), so a condition is cut exactly as the
    adapter saw it in training. The scale is the larger of the two side ratios, so nothing is
    stretched and the crop cuts only the overhang of the longer side."""
    from ..encode.augment import plan_crop

    height, width = size
    if image.size == (width, height):
        return image
    plan = plan_crop(image.width, image.height, (height, width), random_crop=False, seed=0)
    resized = image.resize((plan.resized_size[1], plan.resized_size[0]), resample)
    return resized.crop((plan.left, plan.top, plan.left + width, plan.top + height))


def cover_scale(width: int, height: int, size: tuple[int, int]) -> float:
    """The factor :func:`cover_crop` resizes a ``width`` x ``height`` image by for ``size``."""
    return max(size[0] / height, size[1] / width)


def cover_offset(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    """(left, top) of :func:`cover_crop`'s crop in the resized image."""
    from ..encode.augment import plan_crop

    plan = plan_crop(width, height, tuple(size), random_crop=False, seed=0)
    return plan.left, plan.top


def square_resize(image: Image.Image, size: int, resample=Image.BICUBIC) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop to a square."""
    return cover_crop(image, (size, size), resample)


@dataclass
class Generators:
    with_adapter: Any
    without_adapter: Any
    family: str
    device: str


def build_generators(base: Any, adapter: Any, scheduler: str, device: str) -> Generators:
    """The adapter generator and the plain one, sharing the base model's modules."""
    base.to(device)
    adapter.to(device)
    with_adapter = base.generator(adapter, scheduler=make_scheduler(base.scheduler, scheduler))
    without_adapter = base.generator(None, scheduler=make_scheduler(base.scheduler, scheduler))
    return Generators(with_adapter, without_adapter, base.family, device)


def generate(
    generators: Generators,
    prompts: list[str],
    seeds: list[int],
    resolution: Union[int, tuple[int, int]],
    eval_cfg: Any,
    conditions: Optional[list[Image.Image]] = None,
    scale: Optional[float] = None,
) -> np.ndarray:
    """uint8 images ``[B, H, W, 3]``; with ``conditions`` and ``scale`` through the adapter
    generator, without them through the plain one. ``resolution`` is a square side or a
    bucket's (height, width): one size for the whole batch."""
    import torch

    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    rngs = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    kwargs: dict[str, Any] = dict(
        prompt=list(prompts),
        height=height,
        width=width,
        num_inference_steps=eval_cfg.num_inference_steps,
        guidance_scale=eval_cfg.guidance_scale,
        negative_prompt=[eval_cfg.negative_prompt] * len(prompts) if eval_cfg.negative_prompt else None,
        generator=rngs,
        output_type="np",
    )
    if conditions is not None:
        generator = generators.with_adapter
        kwargs.update(image=list(conditions), adapter_conditioning_scale=float(scale if scale is not None else 1.0))
        if generators.family == "sdxl":
            kwargs["adapter_conditioning_factor"] = eval_cfg.conditioning_factor
    else:
        generator = generators.without_adapter
    with torch.inference_mode():
        images = generator(**kwargs).images
    # The generators' own PIL conversion: (x * 255).round() as uint8.
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)
