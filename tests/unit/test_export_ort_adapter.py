"""OrtT2IAdapter: the onnxruntime adapter behind the T2IAdapter interface, and its size checks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from t2iops.errors import UsageError
from t2iops.export.onnx_export import export_fp32
from t2iops.export.ort_adapter import (
    InvalidConditionSize,
    OrtT2IAdapter,
    check_condition_size,
    nearest_valid_sizes,
)


@pytest.fixture(scope="module")
def adapter_and_graph(tmp_path_factory):
    from diffusers import T2IAdapter

    torch.manual_seed(0)
    adapter = T2IAdapter(adapter_type="full_adapter", channels=[32, 64], downscale_factor=8, num_res_blocks=1)
    adapter = adapter.eval().requires_grad_(False)
    path = export_fp32(adapter, tmp_path_factory.mktemp("ort") / "adapter.onnx", opset=17, sample_size=64)
    return adapter, path


def test_nearest_valid_sizes():
    assert nearest_valid_sizes(70, 16) == [64, 80]
    assert nearest_valid_sizes(10, 16) == [16]  # nothing valid below
    assert nearest_valid_sizes(1000, 64) == [960, 1024]


def test_check_condition_size_names_side_and_nearest_sizes():
    check_condition_size(64, 128, 16)  # valid: no error
    with pytest.raises(InvalidConditionSize) as exc:
        check_condition_size(72, 64, 16)
    msg = str(exc.value)
    assert "height 72" in msg and "64 or 80" in msg and "16" in msg and "width" not in msg
    assert isinstance(exc.value, UsageError) and isinstance(exc.value, ValueError)


def test_forward_matches_torch_and_keeps_the_adapter_interface(adapter_and_graph):
    adapter, path = adapter_and_graph
    ort_adapter = OrtT2IAdapter(path, adapter.total_downscale_factor, adapter.downscale_factor, providers=["CPUExecutionProvider"])
    assert isinstance(ort_adapter, torch.nn.Module)
    assert ort_adapter.total_downscale_factor == 16 and ort_adapter.downscale_factor == 8
    assert ort_adapter.dtype == torch.float32 and ort_adapter.device.type == "cpu"
    x = torch.rand(2, 3, 64, 80)
    ref = adapter(x)
    got = ort_adapter(x)
    assert isinstance(got, list) and len(got) == len(ref)
    for r, g in zip(ref, got):
        assert g.shape == r.shape and g.dtype == torch.float32
        assert torch.max(torch.abs(r - g)) <= 1e-5 * torch.max(torch.abs(r))


def test_to_dtype_converts_outputs_like_a_torch_module(adapter_and_graph):
    adapter, path = adapter_and_graph
    ort_adapter = OrtT2IAdapter(path, 16, 8, providers=["CPUExecutionProvider"]).to(torch.float64)
    assert ort_adapter.dtype == torch.float64
    out = ort_adapter(torch.rand(1, 3, 64, 64, dtype=torch.float64))
    assert all(o.dtype == torch.float64 for o in out)


def test_refuses_sizes_that_are_not_multiples(adapter_and_graph):
    _, path = adapter_and_graph
    ort_adapter = OrtT2IAdapter(path, 16, 8, providers=["CPUExecutionProvider"])
    with pytest.raises(InvalidConditionSize, match=r"width 70 \(nearest valid: 64 or 80\)"):
        ort_adapter(torch.rand(1, 3, 64, 70))
    with pytest.raises(InvalidConditionSize, match=r"\[batch, 3, height, width\]"):
        ort_adapter(torch.rand(1, 1, 64, 64))


def test_from_export_reads_the_serving_spec(adapter_and_graph, tmp_path):
    adapter, path = adapter_and_graph
    (tmp_path / "adapter.onnx").write_bytes(path.read_bytes())
    (tmp_path / "export.json").write_text(json.dumps({
        "adapter": {"total_downscale_factor": 16, "downscale_factor": 8},
        "files": {"onnx_fp32": {"path": "adapter.onnx"}, "onnx_fp16": {"path": "missing.onnx"}},
    }))
    ort_adapter = OrtT2IAdapter.from_export(tmp_path, providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 32, 32)
    np.testing.assert_allclose(ort_adapter(x)[1].numpy(), adapter(x)[1].numpy(), rtol=1e-4, atol=1e-5)
