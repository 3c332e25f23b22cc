"""ONNX export of tiny T2I-Adapters: graph contract, fp32/fp16 parity with PyTorch, external data."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from t2iops.export.onnx_export import check_graph, convert_fp16, export_fp32, model_files
from t2iops.export.parity import check_parity, circle_condition, parity_shapes, relative_error

# Small configurations of each adapter layout diffusers ships.
ADAPTERS = {
    "sd15_full": dict(adapter_type="full_adapter", channels=[32, 64], downscale_factor=8, num_res_blocks=1),
    "sd15_light": dict(adapter_type="light_adapter", channels=[32, 64], downscale_factor=8, num_res_blocks=1),
    "sdxl": dict(adapter_type="full_adapter_xl", channels=[32, 64, 64, 64], downscale_factor=16, num_res_blocks=1),
}


def tiny_adapter(name: str, seed: int = 0):
    from diffusers import T2IAdapter

    torch.manual_seed(seed)
    return T2IAdapter(**ADAPTERS[name]).eval().requires_grad_(False)


@pytest.fixture(scope="module", params=sorted(ADAPTERS))
def exported(request, tmp_path_factory):
    adapter = tiny_adapter(request.param)
    out = tmp_path_factory.mktemp(request.param)
    fp32 = export_fp32(adapter, out / "adapter.onnx", opset=17, sample_size=64)
    fp16 = convert_fp16(fp32, out / "adapter_fp16.onnx")
    return request.param, adapter, fp32, fp16


def test_graph_contract_and_checker(exported):
    name, adapter, fp32, fp16 = exported
    check_graph(fp32)
    check_graph(fp16)
    n = len(adapter(torch.zeros(1, 3, 64, 64)))
    for path in (fp32, fp16):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (inp,) = session.get_inputs()
        assert inp.name == "condition" and inp.type == "tensor(float)"
        assert inp.shape == ["batch", 3, "height", "width"]
        assert [o.name for o in session.get_outputs()] == [f"adapter_res_{i}" for i in range(n)]
        # fp16 graphs keep fp32 I/O so callers feed both files the same tensors
        assert all(o.type == "tensor(float)" for o in session.get_outputs())
    model16 = onnx.load(str(fp16))
    conv_weights = [t for t in model16.graph.initializer if t.name.endswith("weight")]
    assert conv_weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in conv_weights)


def test_pixel_unshuffle_keeps_pytorch_channel_order(exported):
    """SpaceToDepth orders channels differently from torch's pixel_unshuffle; the export must
    not use it, and the outputs must match in order and shape, level by level."""
    name, adapter, fp32, _ = exported
    ops = {n.op_type for n in onnx.load(str(fp32)).graph.node}
    assert "SpaceToDepth" not in ops
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((1, 3, 64, 96), dtype=np.float32)
    ref = [r.numpy() for r in adapter(torch.from_numpy(x))]
    got = session.run(None, {"condition": x})
    assert [r.shape for r in ref] == [g.shape for g in got]
    for r, g in zip(ref, got):
        assert np.max(np.abs(r - g)) <= 1e-5 * np.max(np.abs(r))


def test_parity_at_several_sizes_and_batches(exported):
    name, adapter, fp32, fp16 = exported
    multiple = adapter.total_downscale_factor
    sessions = {
        "fp32": ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]),
        "fp16": ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"]),
    }
    shapes = parity_shapes([64, 128], max_batch=3, multiple=multiple) + [(3, 2 * multiple, 3 * multiple)]
    cases = check_parity(adapter, sessions, {"fp32": 1e-4, "fp16": 1e-2}, shapes)
    assert len(cases) == len(shapes) * 2 * 2  # shapes x (random, circle) x (fp32, fp16)
    assert {(c.batch, c.height, c.width) for c in cases} == set(shapes)
    assert all(c.output_scale > 0 for c in cases)
    for c in cases:
        assert c.passed, c
    fp32_worst = max(c.relative_error for c in cases if c.model == "fp32")
    fp16_worst = max(c.relative_error for c in cases if c.model == "fp16")
    assert fp32_worst < 1e-5
    assert fp16_worst < 5e-3
    # fp16 really computes in half precision: its error is well above fp32's
    assert fp16_worst > 10 * fp32_worst


def test_parity_detects_a_different_model(exported, tmp_path):
    """The check can fail: a graph exported from other weights is caught."""
    name, adapter, fp32, _ = exported
    other = export_fp32(tiny_adapter(name, seed=1), tmp_path / "other.onnx", opset=17, sample_size=64)
    sessions = {"fp32": ort.InferenceSession(str(other), providers=["CPUExecutionProvider"])}
    cases = check_parity(adapter, sessions, {"fp32": 1e-4}, [(1, 64, 64)])
    assert cases and not any(c.passed for c in cases)


def test_relative_error_reports_shape_mismatch_as_failure():
    err, scale, rel = relative_error([np.ones((1, 4, 2, 2))], [np.ones((1, 4, 2, 3))])
    assert rel == float("inf")


def test_circle_condition_is_an_outline_in_unit_range():
    x = circle_condition(64, 96, seed=0)
    assert x.shape == (3, 64, 96) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    lit = (x > 0.5).mean()
    assert 0.005 < lit < 0.3  # thin lines on a dark background


def test_external_data_layout(tmp_path):
    adapter = tiny_adapter("sd15_full")
    path = export_fp32(adapter, tmp_path / "adapter.onnx", opset=17, sample_size=64, external_data_threshold=0)
    files = model_files(path)
    assert [f.name for f in files] == ["adapter.onnx", "adapter.onnx.data"]
    assert files[1].stat().st_size > files[0].stat().st_size  # the weights live in .data
    check_graph(path)
    fp16 = convert_fp16(path, tmp_path / "adapter_fp16.onnx", external_data_threshold=0)
    assert (tmp_path / "adapter_fp16.onnx.data").exists()
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    ref = [r.numpy() for r in adapter(torch.from_numpy(x))]
    for p, tol in ((path, 1e-5), (fp16, 1e-2)):
        got = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"condition": x})
        assert relative_error(ref, got)[2] <= tol
