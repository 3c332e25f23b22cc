"""PyTorch T2IAdapter -> ONNX (fp32 and fp16).

The graph has one input, ``condition`` (float32 [B, 3, H, W], RGB in [0, 1]), and one output per
adapter level, ``adapter_res_0 .. adapter_res_{N-1}``, in the order the UNet pops them from
``down_intrablock_additional_residuals``. Batch, height and width are dynamic.

We use the TorchScript exporter (``dynamo=False``): it lowers ``pixel_unshuffle`` to
Reshape/Transpose/Reshape with the exact channel order of PyTorch. ONNX ``SpaceToDepth`` would
be shorter but orders channels differently, so the first convolution would read scrambled input.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ..errors import ModelError

logger = logging.getLogger(__name__)

INPUT_NAME = "condition"
OUTPUT_PREFIX = "adapter_res_"
# protobuf refuses to serialize messages of 2 GiB or more; keep a margin for the graph itself.
PROTOBUF_LIMIT_BYTES = 2**31 - 64 * 2**20


def output_names(n: int) -> list[str]:
    return [f"{OUTPUT_PREFIX}{i}" for i in range(n)]


def external_data_name(onnx_path: Path) -> str:
    return onnx_path.name + ".data"


def export_fp32(
    adapter,
    onnx_path: Path,
    opset: int,
    sample_size: int,
    external_data_threshold: int = PROTOBUF_LIMIT_BYTES,
) -> Path:
    """Export ``adapter`` to ``onnx_path``. Weights go to ``<name>.data`` beside it when they
    exceed ``external_data_threshold`` bytes (the protobuf limit by default)."""
    import onnx
    import torch

    adapter = adapter.float().eval()
    sample = torch.rand(1, 3, sample_size, sample_size)
    with torch.no_grad():
        n_outputs = len(adapter(sample))
    names = output_names(n_outputs)
    dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    for i, name in enumerate(names):
        dynamic_axes[name] = {0: "batch", 2: f"res{i}_height", 3: f"res{i}_width"}

    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter may spill weights next to its output on its own; export into a scratch
    # folder and re-save with our own policy so the file layout is always the documented one.
    with tempfile.TemporaryDirectory(prefix="t2iops-onnx-") as scratch:
        raw = Path(scratch) / "raw.onnx"
        with torch.no_grad():
            torch.onnx.export(
                adapter,
                (sample,),
                str(raw),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        model = onnx.load(str(raw), load_external_data=True)
    model.producer_name = "t2iops"
    save_model(model, onnx_path, external_data_threshold)
    return onnx_path


def convert_fp16(
    fp32_path: Path, fp16_path: Path, external_data_threshold: int = PROTOBUF_LIMIT_BYTES
) -> Path:
    """fp16 weights and arithmetic, fp32 ``condition`` in and residuals out (Cast nodes at the
    edges), so a caller feeds both files the same tensors."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path), load_external_data=True)
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    # The converter appends its input/output Cast nodes at the end of the node list; ONNX
    # requires topological order (onnx.checker rejects the graph otherwise).
    _topological_sort(half.graph)
    half.producer_name = "t2iops"
    save_model(half, Path(fp16_path), external_data_threshold)
    return Path(fp16_path)


def save_model(model, path: Path, external_data_threshold: int = PROTOBUF_LIMIT_BYTES) -> None:
    import onnx

    path = Path(path)
    data_file = path.parent / external_data_name(path)
    if data_file.exists():
        data_file.unlink()
    weight_bytes = sum(_tensor_bytes(t) for t in model.graph.initializer)
    if weight_bytes > external_data_threshold:
        logger.info("%s: %.1f MB of weights, writing them to %s", path.name, weight_bytes / 1e6, data_file.name)
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_file.name,
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(path))


def model_files(onnx_path: Path) -> list[Path]:
    """The .onnx file and its external-data file, when it has one."""
    files = [Path(onnx_path)]
    data = Path(onnx_path).parent / external_data_name(Path(onnx_path))
    if data.exists():
        files.append(data)
    return files


def check_graph(onnx_path: Path) -> None:
    """``onnx.checker`` with full shape inference; raises ModelError naming the file."""
    import onnx

    try:
        # The path form handles external data and models over 2 GB.
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except Exception as exc:
        raise ModelError(f"{Path(onnx_path).name}: onnx.checker failed: {exc}") from None


# ---------------------------------------------------------------------------------------
def _tensor_bytes(tensor) -> int:
    import numpy as np
    from onnx import helper

    n = 1
    for d in tensor.dims:
        n *= d
    return n * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def _topological_sort(graph) -> None:
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            missing = sorted({n for node in rest for n in node.input if n not in available})[:5]
            raise ModelError(f"fp16 graph has a cycle or dangling inputs: {missing}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
