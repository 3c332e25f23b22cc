"""The export stage with aspect-ratio buckets: parity at wide, tall and square shapes through
real onnxruntime sessions, TensorRT profiles that admit every bucket, and the bucket list in
export.json. The adapter is a small random SD1.5-shaped T2I-Adapter (total downscale 16)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from t2iops.config import load_config
from t2iops.errors import UsageError
from t2iops.export.parity import bucket_parity_shapes
from t2iops.export.stage import export_adapter
from t2iops.export.trt_readiness import shape_profiles

BUCKETS = ["48x48", "32x80", "80x32", "48x64"]  # square, wide, tall, a milder wide (height x width)


def save_adapter(folder: Path) -> Path:
    from diffusers import T2IAdapter

    torch.manual_seed(0)
    T2IAdapter(adapter_type="full_adapter", channels=[32, 64], downscale_factor=8, num_res_blocks=1).save_pretrained(
        str(folder))
    return folder


def cfg_for(*overrides: str):
    return load_config(None, ["export.pipeline_check=skip", "export.resolutions=[32]", "encode.resolution=48",
                              *overrides])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    work = tmp_path_factory.mktemp("export-buckets")
    save_adapter(work / "a")
    spec = export_adapter(str(work / "a"), str(work / "out"), cfg_for(f"encode.buckets=[{','.join(BUCKETS)}]"),
                          cwd=work)
    return work / "out", spec


def test_parity_runs_at_the_square_widest_and_tallest_bucket(exported):
    _, spec = exported
    cases = spec["validation"]["parity"]
    shapes = {(c["batch"], c["height"], c["width"]) for c in cases}
    # today's cases from export.resolutions, then the buckets
    assert shapes == {(1, 32, 32), (2, 32, 48), (1, 48, 48), (1, 32, 80), (1, 80, 32)}
    for shape in ((1, 32, 80), (1, 80, 32)):
        found = {(c["model"], c["condition"]) for c in cases if (c["batch"], c["height"], c["width"]) == shape}
        assert found == {("fp32", "random"), ("fp32", "circle"), ("fp16", "random"), ("fp16", "circle")}
    assert all(c["passed"] for c in cases)


def test_export_json_lists_the_training_buckets(exported):
    out, spec = exported
    from t2iops.data.buckets import bucket_list

    recorded = json.loads((out / "export.json").read_text())["buckets"]
    assert recorded == {"setting": BUCKETS, "resolution": 48, "multiple_of": 16, "order": "height, width",
                        "sizes": [list(b) for b in bucket_list(BUCKETS, 48, 16)],
                        "sizes_from": "encode.buckets at encode.resolution (no training summary.json lists the buckets)"}
    assert recorded["sizes"][:2] == [[48, 48], [48, 64]]  # square first, then by aspect
    # the residual shapes a server needs, measured at each bucket
    session = ort.InferenceSession(str(out / "adapter.onnx"), providers=["CPUExecutionProvider"])
    for key, (h, w) in {"32": (32, 32), "32x80": (32, 80), "80x32": (80, 32), "48x64": (48, 64)}.items():
        outputs = session.run(None, {"condition": np.zeros((1, 3, h, w), np.float32)})
        assert spec["residual_shapes"][key] == {o.name: list(v.shape) for o, v in zip(session.get_outputs(), outputs)}
    assert spec["residual_shapes"]["80x32"][session.get_outputs()[0].name][2:] == [10, 4]
    assert "aspect-ratio buckets (height x width): 48x48, 48x64" in (out / "README.md").read_text()


def test_tensorrt_profiles_cover_every_bucket(exported):
    _, spec = exported
    profiles = {p["name"]: p for p in spec["tensorrt"]["profiles"]}
    spanning = profiles["all"]
    for h, w in [(48, 48), (48, 64), (32, 80), (80, 32), (32, 32)]:
        assert spanning["min"][2] <= h <= spanning["max"][2] and spanning["min"][3] <= w <= spanning["max"][3]
    assert spanning["min"] == [1, 3, 32, 32] and spanning["max"] == [4, 3, 80, 80]
    assert spanning["min"][2:] <= spanning["opt"][2:] <= spanning["max"][2:]
    assert profiles["32x80"] == {"name": "32x80", "min": [1, 3, 32, 80], "opt": [1, 3, 32, 80], "max": [4, 3, 32, 80],
                                 "trtexec": profiles["32x80"]["trtexec"]}
    assert "--minShapes=condition:1x3x32x80" in profiles["32x80"]["trtexec"]
    assert set(profiles) == {"all", "32", "48x48", "48x64", "32x80", "80x32"}


def test_square_buckets_keep_the_shapes_export_resolutions_give(tmp_path):
    save_adapter(tmp_path / "a")
    spec = export_adapter(str(tmp_path / "a"), str(tmp_path / "out"), cfg_for("encode.buckets=square"), cwd=tmp_path)
    assert {(c["batch"], c["height"], c["width"]) for c in spec["validation"]["parity"]} == {(1, 32, 32), (2, 32, 48)}
    assert [p["name"] for p in spec["tensorrt"]["profiles"]] == ["all"]
    assert list(spec["residual_shapes"]) == ["32"]
    assert spec["buckets"]["sizes"] == [[48, 48]] and spec["buckets"]["setting"] == "square"
    assert "aspect-ratio buckets" not in (tmp_path / "out" / "README.md").read_text()


def test_profiles_and_parity_shapes_from_buckets():
    profiles = shape_profiles([1024], 2, [(1024, 1024), (832, 1216), (1216, 832), (640, 1536), (1536, 640)])
    assert profiles[0] == {"name": "all", "min": [1, 3, 640, 640], "opt": [1, 3, 1024, 1024], "max": [2, 3, 1536, 1536]}
    assert [p["name"] for p in profiles] == ["all", "1024", "832x1216", "1216x832", "640x1536", "1536x640"]
    assert shape_profiles([64], 2, []) == shape_profiles([64], 2)
    existing = [(1, 1024, 1024), (2, 1024, 1088)]
    assert bucket_parity_shapes([(1024, 1024), (832, 1216), (640, 1536), (1536, 640)], existing) == [
        (1, 640, 1536), (1, 1536, 640)]


def test_a_bucket_that_does_not_fit_the_adapter_is_refused(tmp_path):
    save_adapter(tmp_path / "a")
    with pytest.raises(UsageError, match=r"40x48 is not a multiple of 16"):
        export_adapter(str(tmp_path / "a"), str(tmp_path / "out"), cfg_for("encode.buckets=[48x48,40x48]"))
    assert not (tmp_path / "out").exists()


def test_export_lists_only_the_buckets_the_run_trained_on(tmp_path):
    """A training run folder (adapter/ + summary.json): a configured bucket no training sample fell
    into is neither listed in export.json nor checked nor profiled; the others keep their order."""
    run = tmp_path / "run"
    save_adapter(run / "adapter")
    rows = [{"bucket": name, "height": int(name.split("x")[0]), "width": int(name.split("x")[1]),
             "samples": n, "samples_seen": 8 * n} for name, n in (("48x48", 5), ("32x80", 0), ("80x32", 3), ("48x64", 2))]
    (run / "summary.json").write_text(json.dumps({"buckets": rows}))
    spec = export_adapter(str(run), str(tmp_path / "out"), cfg_for(f"encode.buckets=[{','.join(BUCKETS)}]"), cwd=tmp_path)
    recorded = json.loads((tmp_path / "out" / "export.json").read_text())["buckets"]
    assert recorded["sizes"] == [[48, 48], [48, 64], [80, 32]]
    assert recorded["sizes_from"].startswith("the training run's summary.json")
    assert "32x80" not in spec["residual_shapes"]
    shapes = {(c["height"], c["width"]) for c in spec["validation"]["parity"]}
    assert (80, 32) in shapes and (32, 80) not in shapes
