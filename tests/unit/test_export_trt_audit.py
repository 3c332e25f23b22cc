"""TensorRT 10 readiness: the operator list, the audit (incl. planted problems), profiles."""
from __future__ import annotations

import importlib.util

import onnx
import pytest
import torch
from onnx import helper

from t2iops.export.onnx_export import export_fp32
from t2iops.export.trt_readiness import (
    EngineReference,
    audit_graph,
    build_and_compare,
    load_supported_ops,
    readiness_report,
    shape_profiles,
    trtexec_command,
)


@pytest.fixture(scope="module")
def graph_path(tmp_path_factory):
    from diffusers import T2IAdapter

    torch.manual_seed(0)
    adapter = T2IAdapter(adapter_type="full_adapter", channels=[32, 64], downscale_factor=8, num_res_blocks=1)
    return export_fp32(adapter.eval(), tmp_path_factory.mktemp("trt") / "adapter.onnx", opset=17, sample_size=64)


def test_supported_list_names_its_source_and_core_ops():
    text = (__import__("t2iops.export.trt_readiness", fromlist=["x"]).SUPPORTED_OPS_FILE).read_text()
    assert "onnx/onnx-tensorrt" in text and "operators.md" in text and "TensorRT 10" in text
    ops, opsets = load_supported_ops()
    assert opsets == (9, 20)
    for op in ("Conv", "Relu", "Add", "AveragePool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Cast"):
        assert op in ops
    for op in ("Unique", "STFT", "SequenceAt", "ConvInteger"):  # marked unsupported upstream
        assert op not in ops
    assert "dilations" in ops["AveragePool"]


def test_exported_adapter_is_ready(graph_path):
    report = audit_graph(graph_path)
    assert report["ready"], report["problems"]
    assert report["opset"] == 17
    assert report["ops"]["Conv"] >= 4 and "AveragePool" in report["ops"]


def _planted(graph_path, node):
    model = onnx.load(str(graph_path))
    model.graph.node.append(node)
    return model


def test_audit_flags_a_planted_unsupported_op(graph_path):
    node = helper.make_node("Unique", ["adapter_res_1"], ["planted_unique"], name="planted/Unique")
    report = audit_graph(_planted(graph_path, node))
    assert not report["ready"]
    assert report["ops"]["Unique"] == 1
    (problem,) = report["problems"]
    assert problem["node"] == "planted/Unique" and problem["op"] == "Unique"


def test_audit_flags_custom_domain_and_restrictions(graph_path):
    custom = helper.make_node("FancyAttention", ["adapter_res_1"], ["x"], name="custom", domain="com.example")
    pool1d = helper.make_node("AveragePool", ["adapter_res_1"], ["y"], name="pool1d", kernel_shape=[2])
    runtime_axes = helper.make_node("Shape", ["adapter_res_1"], ["axes_at_runtime"], name="shape")
    squeeze = helper.make_node("Squeeze", ["adapter_res_1", "axes_at_runtime"], ["z"], name="squeeze_dyn")
    dilated = helper.make_node("MaxPool", ["adapter_res_1"], ["w"], name="dilated", kernel_shape=[2, 2], dilations=[2, 2])
    model = onnx.load(str(graph_path))
    model.graph.node.extend([custom, pool1d, runtime_axes, squeeze, dilated])
    report = audit_graph(model)
    by_node = {p["node"]: p["reason"] for p in report["problems"]}
    assert "plugin" in by_node["custom"]
    assert "1-D pooling" in by_node["pool1d"]
    assert "computed at run time" in by_node["squeeze_dyn"]
    assert "dilations" in by_node["dilated"]
    assert "shape" not in by_node  # Shape itself is fine


def test_audit_flags_opset_outside_range(graph_path):
    model = onnx.load(str(graph_path))
    model.opset_import[0].version = 21
    report = audit_graph(model)
    assert not report["ready"] and "opset 21" in report["problems"][0]["reason"]


def test_profiles_and_trtexec_command():
    profiles = shape_profiles([512, 1024], max_batch=4)
    assert profiles[0] == {"name": "all", "min": [1, 3, 512, 512], "opt": [1, 3, 1024, 1024], "max": [4, 3, 1024, 1024]}
    assert [p["name"] for p in profiles] == ["all", "512", "1024"]
    cmd = trtexec_command("adapter.onnx", profiles[0])
    assert cmd == (
        "trtexec --onnx=adapter.onnx --minShapes=condition:1x3x512x512 --optShapes=condition:1x3x1024x1024 "
        "--maxShapes=condition:4x3x1024x1024 --fp16 --saveEngine=adapter_all_fp16.plan"
    )
    assert len(shape_profiles([64], 2)) == 1


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_engine_step_says_why_it_was_skipped(graph_path):
    result = build_and_compare(graph_path, shape_profiles([64], 2)[0], EngineReference())
    assert result["status"] == "skipped" and "tensorrt" in result["reason"]
    report = readiness_report(graph_path, None, [64], 2)
    assert report["engine_check"]["status"] == "skipped"
    assert report["profiles"][0]["trtexec"].startswith("trtexec --onnx=adapter.onnx")
