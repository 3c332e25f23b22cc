"""The DeepSpeed configuration, generated from our typed config or checked against it.

Our config is the source of truth for batch sizes, precision, clipping and accumulation: a
user JSON (``train.deepspeed_config``) may add DeepSpeed-only settings (bucket sizes, offload
details, ...) and may repeat ours, but a value that disagrees is an error naming both keys.
``"auto"`` values are filled from our config, as the HF integrations do.
"""
from __future__ import annotations

import json
from typing import Any

from ..config import ConfigError

# Sections we build ourselves: the optimizer is AdamW from train.* and the learning rate is
# set every step from train.lr_schedule, so a DeepSpeed optimizer or scheduler would fight it.
_FORBIDDEN = {
    "optimizer": "t2iops builds AdamW from train.lr / train.weight_decay / train.adam_*",
    "scheduler": "t2iops sets the learning rate from train.lr_schedule and train.warmup_steps",
}


def generated_config(train_cfg, world_size: int) -> dict[str, Any]:
    micro = train_cfg.batch_size // world_size
    zero: dict[str, Any] = {"stage": train_cfg.zero_stage}
    if train_cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if train_cfg.zero_stage == 3:
        # The adapter is small; gather it whole in forward rather than keeping a few
        # persistent pieces, so every rank sees the same module during validation/export.
        zero["stage3_param_persistence_threshold"] = 0
    return {
        "train_batch_size": micro * world_size * train_cfg.grad_accum,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": train_cfg.grad_accum,
        "gradient_clipping": float(train_cfg.max_grad_norm or 0.0),
        "zero_optimization": zero,
        "bf16": {"enabled": train_cfg.mixed_precision == "bf16"},
        "fp16": {"enabled": train_cfg.mixed_precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _load_user_json(path: str, storage_cfg: Any = None) -> dict:
    from .. import storage

    try:
        data = json.loads(storage.read_text(path, storage_cfg))
    except FileNotFoundError:
        raise ConfigError(f"train.deepspeed_config: {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"train.deepspeed_config: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"train.deepspeed_config: {path} must hold a JSON object")
    return data


def merged_config(user: dict, ours: dict, origin: str) -> dict:
    """``user`` with ``auto``/missing values filled from ``ours``; any conflicting value raises
    a ConfigError naming the DeepSpeed key and the t2iops key it conflicts with."""
    for key, reason in _FORBIDDEN.items():
        if key in user:
            raise ConfigError(f"{origin}: remove the {key!r} section ({reason})")
    checks = [
        (("train_batch_size",), "train.batch_size x train.grad_accum"),
        (("train_micro_batch_size_per_gpu",), "train.batch_size / world size"),
        (("gradient_accumulation_steps",), "train.grad_accum"),
        (("gradient_clipping",), "train.max_grad_norm"),
        (("bf16", "enabled"), "train.mixed_precision"),
        (("fp16", "enabled"), "train.mixed_precision"),
    ]
    merged = json.loads(json.dumps(user))
    for path, ours_key in checks:
        have = _get(user, path)
        want = _get(ours, path)
        if have is None or have == "auto":
            _set(merged, path, want)
        elif have != want and not (isinstance(have, (int, float)) and isinstance(want, (int, float))
                                   and float(have) == float(want)):
            raise ConfigError(f"{origin}: {'.'.join(path)}={have!r} conflicts with {ours_key} "
                              f"(which gives {want!r}); remove it from the JSON or change the t2iops setting")
    for section in ("bf16", "fp16"):  # carry our loss-scaling defaults into a partial section
        for k, v in ours[section].items():
            merged.setdefault(section, {}).setdefault(k, v)
    zero = merged.setdefault("zero_optimization", {})
    ours_zero = ours["zero_optimization"]
    if zero.get("stage") in (None, "auto"):
        zero["stage"] = ours_zero["stage"]
    elif ours_zero["stage"] and zero["stage"] != ours_zero["stage"]:
        raise ConfigError(f"{origin}: zero_optimization.stage={zero['stage']} conflicts with "
                          f"train.zero_stage={ours_zero['stage']}")
    if "offload_optimizer" in ours_zero:
        device = (zero.get("offload_optimizer") or {}).get("device", "none")
        if device in ("none", None):
            zero["offload_optimizer"] = ours_zero["offload_optimizer"]
    for k, v in ours.items():
        merged.setdefault(k, v)
    return merged


def deepspeed_config(train_cfg, world_size: int, storage_cfg: Any = None) -> dict:
    ours = generated_config(train_cfg, world_size)
    if not train_cfg.deepspeed_config:
        return ours
    user = _load_user_json(train_cfg.deepspeed_config, storage_cfg)
    return merged_config(user, ours, f"train.deepspeed_config ({train_cfg.deepspeed_config})")


def _get(data: dict, path: tuple):
    cur: Any = data
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def _set(data: dict, path: tuple, value) -> None:
    cur = data
    for p in path[:-1]:
        cur = cur.setdefault(p, {})
    cur[path[-1]] = value
