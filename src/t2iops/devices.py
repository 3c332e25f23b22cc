"""Where tensors run and in which precision: the one device choice and the one dtype map.

Config names (``model.dtype``: fp32/fp16/bf16; ``train.mixed_precision``: no/fp16/bf16) map to
torch dtypes here and nowhere else. Half precision on CPU is slow or missing for convolutions,
so inference on CPU always runs in fp32 (:func:`inference_dtype`).
"""
from __future__ import annotations

from typing import Any

from .errors import ModelError

DTYPE_NAMES = {"fp32": "float32", "no": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_dtype(name: Any):
    """The torch dtype for a config name (fp32, fp16, bf16, ``no`` = fp32), a torch name
    (``float16``) or a torch dtype."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    value = getattr(torch, DTYPE_NAMES.get(str(name), str(name).replace("torch.", "")), None)
    if not isinstance(value, torch.dtype):
        raise ModelError(f"dtype {name!r} is not one of {', '.join(DTYPE_NAMES)}")
    return value


def default_device(local_rank: int = 0):
    """The accelerator when there is one (``cuda:<local_rank>``), else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def inference_dtype(name: Any, device: Any):
    """``name``'s dtype on an accelerator; fp32 on the CPU."""
    import torch

    if torch.device(device).type == "cpu":
        return torch.float32
    return torch_dtype(name)
