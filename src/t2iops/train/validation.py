"""Validation during training: the same val-split samples, seeds and noise every time.

Each round reports

* ``val_loss``: the training objective on fixed batches of val samples with fixed noise and
  timesteps, so rounds are directly comparable (a paired comparison, not a fresh draw). A batch
  holds one aspect-ratio bucket (its latents share a shape): each bucket of the val split gives
  one, of up to ``train.validation_samples`` samples, and ``val_loss`` is the mean over all their
  samples. With several buckets each one's mean is reported too (``val_loss_<H>x<W>``);
* a grid PNG (condition | generated, one row per sample) made with the diffusers adapter
  generator from the cached prompt embeddings and conditions, with fixed seeds; each sample is
  generated at its own bucket's size and each row keeps that size on a black canvas as wide as
  the widest row (nothing squashed);
* the condition-fidelity metric of ``evaluate.condition_kind`` (the one ``t2iops evaluate``
  reports, e.g. edge F1 for circle outlines): how well the images follow their conditions,
  scored per sample at its own size and averaged.

Rank 0 does the work on a private fp32 copy of the adapter's (gathered) weights.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..data.buckets import bucket_name
from ..encode.cache import CacheReader
from .data import EpochBatches, MicroBatches, uncond_embeddings
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


def loss_batches(reader: CacheReader, samples: int, seed: int, uncond: dict) -> dict[str, dict]:
    """The fixed loss batches of validation, one per bucket of ``reader``'s split (in the cache's
    bucket order), keyed by the bucket's name: each holds the bucket's first ``samples`` samples
    in the permutation of epoch :data:`VAL_EPOCH`, with the draws of their places in it, exactly
    as training would draw them there. With one bucket this is the first micro-batch of that
    epoch at a global batch of ``samples``."""
    # A global batch of one: every sample is a micro-batch, and batch k is the k-th sample
    # reached in the epoch's permutation, whatever its bucket.
    order = EpochBatches(reader, 1, seed)
    dataset = MicroBatches(reader, 1, rank=0, world_size=1, seed=seed, caption_dropout=0.0, uncond=uncond,
                           flip=False, batches=order)
    chosen: dict[int, list[int]] = {}
    for batch, bucket in enumerate(order.epoch(VAL_EPOCH)[2].tolist()):
        members = chosen.setdefault(bucket, [])
        if len(members) < samples:
            members.append(batch)
    batches = {}
    for bucket in sorted(chosen):
        items = [dataset[(VAL_EPOCH, batch)] for batch in chosen[bucket]]
        batches[bucket_name(order.buckets[bucket])] = {
            k: torch.cat([item[k] for item in items]) for k, v in items[0].items() if isinstance(v, torch.Tensor)}
    return batches


def make_grid(conditions: list[Image.Image], images: list[Image.Image]) -> Image.Image:
    """Rows of condition | generated, each at its image's own size: the conditions in a column as
    wide as the widest image, the images in the next, on a black canvas."""
    width = max(i.width for i in images)
    grid = Image.new("RGB", (2 * width, sum(i.height for i in images)))
    top = 0
    for c, i in zip(conditions, images):
        grid.paste(c.resize(i.size), (0, top))
        grid.paste(i, (width, top))
        top += i.height
    return grid


def fidelity_scores(metric, conditions: list[Image.Image], images: list[Image.Image]) -> np.ndarray:
    """``metric`` of every image against its condition (resized to the image), in their order:
    images of one size are scored together, each at its own size."""
    parts, rows = [], []
    for size in dict.fromkeys(i.size for i in images):
        same = [k for k, i in enumerate(images) if i.size == size]
        parts.append(np.asarray(metric.compute(_uint8_batch([images[k] for k in same]),
                                               _uint8_batch([conditions[k].resize(size) for k in same]), None)))
        rows += same
    return np.concatenate(parts)[np.argsort(rows, kind="stable")]  # the metric's own dtype, in image order


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
        self.loss_batches = loss_batches(reader, n, cfg.train.seed, self.uncond)
        self.metric = fidelity_metric(cfg.evaluate.condition_kind)

    @torch.no_grad()
    def losses(self, adapter) -> dict[str, float]:
        """``val_loss``, the mean over every sample of the loss batches; with several buckets also
        ``val_loss_<bucket>``, the mean over that bucket's batch."""
        per_bucket = {}
        for name, loss_batch in self.loss_batches.items():
            batch = {k: v.to(self.device) for k, v in loss_batch.items()}
            with torch.autocast(self.device.type, dtype=self.compute_dtype,
                                enabled=self.compute_dtype != torch.float32):
                per_bucket[name] = adapter_loss(self.unet, adapter, batch, self.objective, self.compute_dtype)
        out = {"val_loss": float(torch.cat(list(per_bucket.values())).mean())}
        if len(per_bucket) > 1:
            out.update({f"val_loss_{name}": float(loss.mean()) for name, loss in per_bucket.items()})
        return out

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
        metrics = self.losses(adapter)
        conditions, images = self.images(adapter)
        if self.metric is not None:
            metrics[self.metric.name] = float(np.mean(fidelity_scores(self.metric, conditions, images)))
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
