"""Impossible combinations fail before any work, naming the option."""
import pytest
import torch

from t2iops.config import ConfigError
from t2iops.presets import preset_config
from t2iops.train.preflight import check_training_config

CPU = torch.device("cpu")


def _cfg(*overrides):
    return preset_config("toy", list(overrides))  # CPU-sized: fp32, batch 8


@pytest.mark.parametrize("overrides, world, key", [
    (["train.mixed_precision=fp16"], 1, "train.mixed_precision"),
    (["train.batch_size=6"], 4, "train.batch_size"),
    (["train.zero_stage=3", "train.ema_decay=0.999"], 2, "train.ema_decay"),
    (["train.offload_optimizer=true"], 1, "train.offload_optimizer"),
    (["train.warmup_steps=20", "train.max_steps=10"], 1, "train.warmup_steps"),
])
def test_impossible_combinations_name_the_option(overrides, world, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_training_config(_cfg(*overrides), world, CPU)


def test_sizes_of_the_cache_are_checked():
    with pytest.raises(ConfigError, match="train.batch_size=8 is larger"):
        check_training_config(_cfg(), 1, CPU, train_samples=5)
    with pytest.raises(ConfigError, match="train.validate_every"):
        check_training_config(_cfg("train.validate_every=10"), 1, CPU, train_samples=50, val_samples=0)
    check_training_config(_cfg("train.zero_stage=2", "train.ema_decay=0.99"), 2, CPU, train_samples=50, val_samples=0)


def test_zero3_without_ema_passes():
    check_training_config(_cfg("train.zero_stage=3", "train.batch_size=4"), 2, CPU)

