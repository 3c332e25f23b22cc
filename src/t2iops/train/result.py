"""The run's result: the adapter to ship and ``summary.json``, published beside the checkpoints.

``O/adapter/``, ``O/summary.json`` and ``O/config.resolved.yaml`` go out through
:func:`t2iops.storage.publishing.publish_shared` like every output with a file list: whole or not
at all, ``O/_manifest.json`` last, the checkpoints and logs under ``O`` left as they are.
"""
from __future__ import annotations

import json
import math

import torch

from ..storage.publishing import publish_shared


def export_weights(opt, ema) -> dict[str, torch.Tensor]:
    """Collective: the weights to ship (EMA when on), gathered whole."""
    full = opt.full_state_dict()
    return ema.weights(full) if ema is not None else full


def adapter_from(weights: dict, adapter_config: dict):
    """A diffusers T2IAdapter holding ``weights``."""
    from diffusers import T2IAdapter

    adapter = T2IAdapter.from_config(adapter_config)
    adapter.load_state_dict(weights)
    return adapter


def publish_result(out: str, weights: dict, adapter_config: dict, summary: dict, cfg) -> None:
    extra = {"kind": "t2iops-adapter", "steps": summary["steps"], "data_version": summary["data_version"]}
    with publish_shared(out, cfg.storage, extra, beside=True) as staging:
        adapter_from(weights, adapter_config).save_pretrained(str(staging / "adapter"))
        (staging / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
        cfg.write(staging)


def _json_default(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return str(obj)
