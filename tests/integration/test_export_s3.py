"""Export from s3:// to s3:// through the loopback S3 server."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from t2iops import storage
from t2iops.config import load_config
from t2iops.errors import ModelError
from t2iops.export.stage import ExportCheckFailed, export_adapter

pytestmark = pytest.mark.s3


@pytest.mark.slow
def test_export_s3_in_and_out(s3_bucket, tmp_path, monkeypatch):
    from diffusers import T2IAdapter

    endpoint, bucket = s3_bucket
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [
        f"storage.endpoint_url={endpoint}", f"storage.cache_dir={tmp_path / 'cache'}",
        "export.pipeline_check=skip", "export.resolutions=[64]", "encode.buckets=square",
    ])
    # A training output on S3: adapter/ plus the run's resolved config.
    torch.manual_seed(0)
    run = tmp_path / "run"
    T2IAdapter(adapter_type="light_adapter", channels=[32, 64], downscale_factor=8, num_res_blocks=1).save_pretrained(
        str(run / "adapter")
    )
    load_config(None, ["model.base_model=s3://models/base", "model.revision=r1"]).write(run)
    storage.upload_dir(run, f"s3://{bucket}/runs/r1", cfg)
    (tmp_path / "metrics.json").write_text(json.dumps({"fid": 3.0}))
    storage.write_bytes(f"s3://{bucket}/eval/metrics.json", (tmp_path / "metrics.json").read_bytes(), cfg)

    out = f"s3://{bucket}/exports/r1"
    spec = export_adapter(f"s3://{bucket}/runs/r1", out, cfg, metrics_uri=f"s3://{bucket}/eval/metrics.json")

    published = storage.read_manifest(out, cfg)  # written last by publish
    for name in ("adapter.onnx", "adapter_fp16.onnx", "export.json", "README.md", "adapter/config.json"):
        assert name in published["files"], name
    remote = json.loads(storage.read_text(storage.join(out, "export.json"), cfg))
    assert remote == spec
    assert remote["adapter"]["source"] == f"s3://{bucket}/runs/r1" and remote["adapter"]["type"] == "light_adapter"
    assert remote["base_model"]["id"] == "s3://models/base" and remote["base_model"]["revision"] == "r1"
    assert remote["metrics"] == {"fid": 3.0}

    local = storage.materialize(out, cfg)
    assert storage.sha256_file(local / "adapter.onnx") == remote["files"]["onnx_fp32"]["sha256"]
    session = ort.InferenceSession(str(local / "adapter.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"condition": np.zeros((1, 3, 64, 64), np.float32)})
    assert [list(o.shape) for o in outputs] == list(remote["residual_shapes"]["64"].values())


def test_s3_failures_publish_nothing(s3_bucket, tmp_path):
    from diffusers import T2IAdapter

    endpoint, bucket = s3_bucket
    cfg = load_config(None, [f"storage.endpoint_url={endpoint}", f"storage.cache_dir={tmp_path / 'cache'}",
                             "export.pipeline_check=skip", "export.fp32_tolerance=1e-12"])
    with pytest.raises(ModelError, match="does not exist"):
        export_adapter(f"s3://{bucket}/no/such/adapter", f"s3://{bucket}/exports/x", cfg)
    torch.manual_seed(0)
    T2IAdapter(adapter_type="full_adapter", channels=[32, 64], downscale_factor=8, num_res_blocks=1).save_pretrained(
        str(tmp_path / "a")
    )
    storage.upload_dir(tmp_path / "a", f"s3://{bucket}/adapters/a", cfg)
    with pytest.raises(ExportCheckFailed):
        export_adapter(f"s3://{bucket}/adapters/a", f"s3://{bucket}/exports/x", cfg)
    assert storage.list_files(f"s3://{bucket}/exports/x", cfg) == []
    assert not storage.is_published(f"s3://{bucket}/exports/x", cfg)
