"""Impossible combinations fail before any work, naming the option."""
import pytest
import torch

from t2iops.config import ConfigError
from t2iops.presets import preset_config
from t2iops.train.preflight import check_training_config, learning_rate

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


def test_learning_rate_schedules():
    t = _cfg("train.lr=1.0", "train.warmup_steps=4", "train.max_steps=14", "train.lr_schedule=linear").train
    assert [learning_rate(s, t) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate(4, t) == 1.0 and learning_rate(9, t) == 0.5
    assert learning_rate(13, t) == pytest.approx(0.1)
    t = _cfg("train.lr=0.5", "train.max_steps=10", "train.lr_schedule=cosine").train
    assert learning_rate(0, t) == 0.5 and learning_rate(5, t) == pytest.approx(0.25)
    t = _cfg("train.lr=0.5", "train.warmup_steps=2", "train.lr_schedule=constant").train
    assert [learning_rate(s, t) for s in (0, 1, 2, 400)] == [0.25, 0.5, 0.5, 0.5]
