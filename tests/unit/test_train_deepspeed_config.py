"""DeepSpeed settings come from our config; a user JSON may add to them, never contradict them."""
import json

import pytest

from t2iops.config import ConfigError, TrainConfig
from t2iops.train.deepspeed_config import deepspeed_config, generated_config, merged_config


def test_generated_config_counts_batches_across_ranks_and_accumulation():
    t = TrainConfig(batch_size=8, grad_accum=4, zero_stage=2, mixed_precision="bf16", max_grad_norm=0.5)
    ds = generated_config(t, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 8 * 4  # micro x world x accumulation
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["gradient_clipping"] == 0.5


def test_offload_and_stage3_settings():
    ds = generated_config(TrainConfig(zero_stage=3, offload_optimizer=True), 1)
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["stage"] == 3


def test_user_json_fills_auto_and_keeps_extras(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": 2,
        "zero_optimization": {"stage": 2, "reduce_bucket_size": 12345},
    }))
    t = TrainConfig(batch_size=4, grad_accum=2, deepspeed_config=str(path))
    ds = deepspeed_config(t, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 12345}
    assert ds["train_batch_size"] == 8
    assert ds["gradient_clipping"] == 1.0


@pytest.mark.parametrize("user, key", [
    ({"train_micro_batch_size_per_gpu": 3}, "train_micro_batch_size_per_gpu"),
    ({"train_batch_size": 64}, "train_batch_size"),
    ({"gradient_accumulation_steps": 8}, "gradient_accumulation_steps"),
    ({"bf16": {"enabled": True}}, "bf16.enabled"),
    ({"gradient_clipping": 5.0}, "gradient_clipping"),
    ({"zero_optimization": {"stage": 3}}, "zero_optimization.stage"),
])
def test_conflicting_user_values_name_the_key(user, key):
    ours = generated_config(TrainConfig(batch_size=4, zero_stage=2), 2)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        merged_config(user, ours, "ds.json")


def test_user_optimizer_section_is_refused():
    with pytest.raises(ConfigError, match="optimizer"):
        merged_config({"optimizer": {"type": "Adam"}}, generated_config(TrainConfig(), 1), "ds.json")


def test_missing_or_broken_json_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        deepspeed_config(TrainConfig(deepspeed_config=str(tmp_path / "nope.json")), 1)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        deepspeed_config(TrainConfig(deepspeed_config=str(bad)), 1)
