"""The whole training pipeline under kfp.local (SubprocessRunner, this environment, CPU): synthetic
data, a tiny SD1.5 model, a moto S3 server for the run prefix and the registry. Every stage runs
for real, tiny: pull -> validate -> 2 encode shards -> merge -> train -> 2 evaluation shards ->
merge + gate -> export -> publish. The circles are drawn on 3:2, 2:3 and square canvases and
encoded into three aspect-ratio buckets (multiples of 64: the SD1.5 adapter's factor), which the
trained adapter's export lists."""
from __future__ import annotations

import json

import pytest

from t2iops.pipelines.local import run_local
from t2iops.presets import preset_config


@pytest.mark.slow
@pytest.mark.s3
def test_pipeline_runs_end_to_end_under_kfp_local(tmp_path):
    sha = "5eed" * 10
    sizes = {"resolution": ["data.synth.resolution=128", "encode.resolution=128"],
             "shapes": ["data.synth.aspect_ratios=[1.5,0.6667,1.0]", "encode.buckets=[128x128,128x192,192x128]"]}
    cfg = preset_config("toy", ["train.timestep_sampling=cubic", "evaluate.guidance_scale=5.0",
                                "evaluate.conditioning_scales=[1.0]", "evaluate.gate.min_circle_iou=null",
                                *sizes["resolution"], *sizes["shapes"]])
    outcome = run_local(tmp_path / "work", cfg, s3="moto", base_model="tiny-sd15", smoke=True,
                        parameters={"encode_shards": [0, 1], "git_sha": sha},
                        explicit=[item.split("=")[0] for item in sizes["resolution"]])
    assert outcome.gate_passed is True
    assert outcome.registry_uri == "s3://t2iops-local/registry"
    copy = tmp_path / "work" / "registry-copy" / "t2i-adapter"
    (version,) = [p for p in copy.iterdir() if p.is_dir()]
    manifest = json.loads((version / "_manifest.json").read_text())
    assert {"adapter.onnx", "export.json", "metrics.json", "lineage.json"} <= set(manifest["files"])
    assert json.loads((copy / "latest.json").read_text())["version"] == version.name
    metrics = json.loads((version / "metrics.json").read_text())
    assert metrics["gate"]["passed"] is True
    lineage = json.loads((version / "lineage.json").read_text())
    assert lineage["run_id"] == version.name and lineage["dataset"]["source"] == "synth" and lineage["git_sha"] == sha
    buckets = json.loads((version / "export.json").read_text())["buckets"]
    assert buckets["sizes"] == [[128, 128], [128, 192], [192, 128]], buckets
    assert buckets["sizes_from"].startswith("the training run"), buckets
