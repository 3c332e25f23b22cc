"""An onnxruntime-backed T2I-Adapter that diffusers' adapter pipelines accept in place of the
PyTorch module.

``StableDiffusionAdapterPipeline`` and ``StableDiffusionXLAdapterPipeline`` (diffusers 0.3x/0.4x)
use their ``adapter`` component like this:

* ``register_modules`` / ``pipe.to(...)`` / ``pipe.device`` / ``pipe.dtype`` treat every
  ``torch.nn.Module`` component alike: they call ``.to(device, dtype)`` and read ``.device`` and
  ``.dtype``. A zero-size buffer carries both here, so ``pipe.to("cuda", torch.float16)`` keeps
  working and residuals come back on that device and in that dtype.
* ``_default_height_width`` reads ``adapter.downscale_factor`` (the pixel-unshuffle factor);
  the adapter input is moved with ``.to(device=..., dtype=adapter.dtype)``.
* the denoising setup calls ``adapter(condition)`` once and expects a list of tensors, which it
  scales, repeats for ``num_images_per_prompt`` and doubles for classifier-free guidance.

The graph accepts heights and widths that are multiples of the adapter's *total* downscale
factor (pixel unshuffle times every 2x pooling); other sizes would give residuals that do not
line up with the UNet's feature maps, so they are refused with the nearest valid sizes named.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import UsageError
from .serving_spec import SERVING_SPEC_FILE


class InvalidConditionSize(UsageError, ValueError):
    """A condition height/width the exported adapter cannot take."""


def nearest_valid_sizes(size: int, multiple: int) -> list[int]:
    """The multiples of ``multiple`` just below and above ``size`` (the lower one only when > 0)."""
    below = (size // multiple) * multiple
    above = below + multiple
    return [s for s in (below, above) if s > 0 and s != size]


def check_condition_size(height: int, width: int, multiple: int, what: str = "condition") -> None:
    """Raise :class:`InvalidConditionSize` unless both sides are positive multiples of ``multiple``."""
    problems = []
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple:
            choices = " or ".join(str(s) for s in nearest_valid_sizes(value, multiple))
            problems.append(f"{name} {value} (nearest valid: {choices})")
    if problems:
        raise InvalidConditionSize(
            f"{what}: " + "; ".join(problems)
            + f" is not a multiple of the adapter's total downscale factor {multiple}"
        )


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available] or available


def make_session(onnx_path: str | Path, providers: Optional[Sequence] = None, threads: Optional[int] = None):
    """An InferenceSession with full graph optimization (Conv+Relu/Add fusion, NCHWc layout on
    x86). ``threads`` sets intra-op threads (default: onnxruntime's, one per physical core).

    Spinning is off: in a pipeline the adapter runs once and PyTorch's UNet runs right after;
    onnxruntime's default busy-waiting threads would keep burning the cores the UNet needs
    (measured: a following PyTorch call ran up to 30x slower on a 2-core machine)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=list(providers or default_providers()))


class OrtT2IAdapter(torch.nn.Module):
    """Runs an exported adapter graph with onnxruntime behind the ``T2IAdapter`` interface.

    Example::

        adapter = OrtT2IAdapter.from_export("exports/circles")       # reads export.json
        pipe = StableDiffusionAdapterPipeline.from_pretrained(base, adapter=adapter)
    """

    def __init__(
        self,
        onnx_path: str | Path,
        total_downscale_factor: int,
        downscale_factor: int,
        providers: Optional[Sequence] = None,
        threads: Optional[int] = None,
    ):
        super().__init__()
        self.onnx_path = str(onnx_path)
        self.session = make_session(onnx_path, providers, threads)
        self.total_downscale_factor = int(total_downscale_factor)
        self.downscale_factor = int(downscale_factor)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        # Carries device and dtype through pipe.to(...); holds no data.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    @classmethod
    def from_export(
        cls,
        export_dir: str | Path,
        fp16: bool = False,
        providers: Optional[Sequence] = None,
        threads: Optional[int] = None,
    ) -> "OrtT2IAdapter":
        """Load ``adapter.onnx`` (or ``adapter_fp16.onnx``) from a ``t2iops export`` folder."""
        export_dir = Path(export_dir)
        spec = json.loads((export_dir / SERVING_SPEC_FILE).read_text())
        name = spec["files"]["onnx_fp16" if fp16 else "onnx_fp32"]["path"]
        return cls(
            export_dir / name,
            total_downscale_factor=spec["adapter"]["total_downscale_factor"],
            downscale_factor=spec["adapter"]["downscale_factor"],
            providers=providers,
            threads=threads,
        )

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    def forward(self, condition: torch.Tensor) -> list[torch.Tensor]:
        if condition.ndim != 4 or condition.shape[1] != 3:
            raise InvalidConditionSize(
                f"condition must be [batch, 3, height, width] (RGB, NCHW); got {list(condition.shape)}"
            )
        check_condition_size(condition.shape[2], condition.shape[3], self.total_downscale_factor)
        feed = condition.detach().to("cpu", torch.float32).contiguous().numpy()
        outputs = self.session.run(self.output_names, {self.input_name: feed})
        return [torch.from_numpy(np.ascontiguousarray(o)).to(self.device, self.dtype) for o in outputs]

    def extra_repr(self) -> str:
        return (
            f"onnx_path={self.onnx_path!r}, providers={self.session.get_providers()}, "
            f"total_downscale_factor={self.total_downscale_factor}"
        )
