"""Validation during training: the same val-split samples, seeds and noise every time.

Each round reports

* ``val_loss``: the training objective on a fixed batch of val samples with fixed noise and
  timesteps, so rounds are directly comparable (a paired comparison, not a fresh draw);
* a grid PNG (condition | generated, one row per sample) made with the diffusers adapter
  generator from the cached prompt embeddings and conditions, with fixed seeds;
* the condition-fidelity metric of ``evaluate.condition_kind`` (the one ``t2iops evaluate``
  reports, e.g. edge F1 for circle outlines): how well the images follow their conditions.

Rank 0 does the work on a private fp32 copy of the adapter's (gathered) weights.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..encode.cache import CacheReader
from .data import MicroBatches, uncond_embeddings
from .diffusion import Objective, adapter_loss

log = logging.getLogger("t2iops.train")

VAL_EPOCH = -1  # the draws of validation use an epoch no training run reaches


def fidelity_metric(condition_kind: str):
    """The evaluation stage's primary condition-fidelity metric for ``evaluate.condition_kind``,
    so training and evaluation report the same number; None when the kind needs an estimator
    that is not registered (validation then reports the loss and the grid only)."""
    from ..errors import T2IError
    from ..evaluate.condition_fidelity import metrics_for

    try:
        return metrics_for(condition_kind)[0]
    except T2IError as exc:
        log.warning("validation: no fidelity metric (%s)", exc)
        return None


def _uint8_batch(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(i.convert("RGB"), dtype=np.uint8) for i in images])).permute(0, 3, 1, 2)


def make_grid(conditions: list[Image.Image], images: list[Image.Image]) -> Image.Image:
    w, h = images[0].size
    grid = Image.new("RGB", (2 * w, h * len(images)))
    for row, (c, i) in enumerate(zip(conditions, images)):
        grid.paste(c.resize((w, h)), (0, row * h))
        grid.paste(i, (w, row * h))
    return grid


class Validator:
    def __init__(self, reader: CacheReader, cfg, unet, vae, scheduler_config: dict, objective: Objective,
                 device: torch.device, compute_dtype: torch.dtype):
        self.reader = reader
        self.cfg = cfg
        self.unet, self.vae = unet, vae
        self.scheduler_config = scheduler_config
        self.objective = objective
        self.device, self.compute_dtype = device, compute_dtype
        n = min(cfg.train.validation_samples, len(reader))
        self.indices = list(range(n))  # val ids in sorted order: the same samples every round
        self.uncond = uncond_embeddings(reader)
        batches = MicroBatches(reader, n, rank=0, world_size=1, seed=cfg.train.seed, caption_dropout=0.0,
                               uncond=self.uncond, flip=False)
        self.loss_batch = batches[(VAL_EPOCH, 0)]
        self.metric = fidelity_metric(cfg.evaluate.condition_kind)

    @torch.no_grad()
    def loss(self, adapter) -> float:
        batch = {k: v.to(self.device) for k, v in self.loss_batch.items() if isinstance(v, torch.Tensor)}
        with torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32):
            return float(adapter_loss(self.unet, adapter, batch, self.objective, self.compute_dtype).mean())

    @torch.no_grad()
    def images(self, adapter) -> tuple[list[Image.Image], list[Image.Image]]:
        generator = self._generator(adapter)
        conditions, images = [], []
        for i in self.indices:
            cached = self.reader.sample(i)
            condition = Image.fromarray(cached["condition"].permute(1, 2, 0).numpy())
            kwargs = self._embeddings(cached)
            rng = torch.Generator(device="cpu").manual_seed(self.cfg.evaluate.seed + i)
            image = generator(
                image=condition,
                num_inference_steps=self.cfg.train.validation_inference_steps,
                guidance_scale=self.cfg.evaluate.guidance_scale,
                generator=rng,
                height=condition.height,
                width=condition.width,
                adapter_conditioning_scale=self.cfg.train.conditioning_scale,
                **kwargs,
            ).images[0]
            conditions.append(condition)
            images.append(image)
        return conditions, images

    def run(self, adapter) -> tuple[dict, Optional[Image.Image]]:
        adapter.eval()
        metrics = {"val_loss": self.loss(adapter)}
        conditions, images = self.images(adapter)
        if self.metric is not None:
            size = images[0].size
            conditions_at_size = [c.resize(size) for c in conditions]
            scores = self.metric.compute(_uint8_batch(images), _uint8_batch(conditions_at_size), None)
            metrics[self.metric.name] = float(np.mean(scores))
        return metrics, make_grid(conditions, images)

    # -----------------------------------------------------------------------------------
    def _embeddings(self, cached: dict) -> dict:
        dtype = self.compute_dtype
        out = {
            "prompt_embeds": cached["prompt_embeds"][None].to(self.device, dtype),
            "negative_prompt_embeds": self.uncond["prompt_embeds"][None].to(self.device, dtype),
        }
        if "pooled_prompt_embeds" in cached:
            out["pooled_prompt_embeds"] = cached["pooled_prompt_embeds"][None].to(self.device, dtype)
            out["negative_pooled_prompt_embeds"] = self.uncond["pooled_prompt_embeds"][None].to(self.device, dtype)
        return out

    def _generator(self, adapter):
        import diffusers

        from ..models.generator import build_generator

        # Sample with the base model's own scheduler class (DDPM when it is not a diffusers one).
        cls = getattr(diffusers, str(self.scheduler_config.get("_class_name")), diffusers.DDPMScheduler)
        return build_generator(
            self.reader.family, unet=self.unet, vae=self.vae, scheduler=cls.from_config(self.scheduler_config),
            adapter=adapter, force_zeros_for_empty_prompt=bool(self.reader.index.get("force_zeros_for_empty_prompt")))
