"""Impossible combinations, refused before any model is loaded, each naming the option."""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch

from ..config import Config, ConfigError


def uses_deepspeed(cfg: Config) -> bool:
    return cfg.train.zero_stage > 0 or bool(cfg.train.deepspeed_config)


def check_training_config(cfg: Config, world_size: int, device: torch.device, zero_stage: Optional[int] = None,
                          train_samples: Optional[int] = None, val_samples: Optional[int] = None) -> None:
    """Raise ConfigError for a run that cannot work. ``zero_stage`` is the effective stage
    (a user DeepSpeed JSON may set it)."""
    t = cfg.train
    stage = t.zero_stage if zero_stage is None else zero_stage
    if t.mixed_precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.mixed_precision=fp16 needs a GPU (CPU kernels for fp16 training are missing "
                          "or very slow); use bf16 or no on CPU")
    if t.batch_size % world_size:
        raise ConfigError(f"train.batch_size={t.batch_size} is the global micro-batch and must be divisible by "
                          f"the world size ({world_size} processes); each rank takes batch_size / world_size")
    if uses_deepspeed(cfg) and importlib.util.find_spec("deepspeed") is None:
        key = "train.deepspeed_config" if t.deepspeed_config else "train.zero_stage"
        raise ConfigError(f"{key} needs DeepSpeed, which is not installed (pip install 't2iops[distributed]')")
    if t.offload_optimizer and stage == 0:
        raise ConfigError("train.offload_optimizer needs ZeRO (train.zero_stage 1, 2 or 3): offloading lives in "
                          "DeepSpeed's ZeRO optimizer")
    if stage == 3 and t.ema_decay is not None:
        raise ConfigError("train.ema_decay cannot be combined with train.zero_stage=3: ZeRO-3 splits the adapter's "
                          "parameters across ranks, while the EMA needs the whole adapter on a rank every step; "
                          "use zero_stage 2 (the adapter's optimizer state and gradients are still partitioned)")
    if train_samples is not None and train_samples < t.batch_size:
        raise ConfigError(f"train.batch_size={t.batch_size} is larger than the cache's train split "
                          f"({train_samples} samples)")
    if t.validate_every and val_samples is not None and val_samples == 0:
        raise ConfigError("train.validate_every needs a val split in the cache; encode it "
                          "(encode.splits includes val) or set train.validate_every=0")
    if t.warmup_steps > t.max_steps:
        raise ConfigError(f"train.warmup_steps={t.warmup_steps} exceeds train.max_steps={t.max_steps}")

