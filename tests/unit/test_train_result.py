"""The run's result (adapter, summary, resolved config) is published whole, beside the checkpoints
and logs of the same folder, which it leaves alone; the manifest moves last."""
import json
from pathlib import Path

import boto3
import pytest
import torch

from t2iops import storage
from t2iops.config import load_config
from t2iops.train.result import publish_result

RESULT = {"adapter/config.json", "adapter/diffusion_pytorch_model.safetensors", "summary.json",
          "config.resolved.yaml"}


def _adapter():
    from diffusers import T2IAdapter

    torch.manual_seed(0)
    adapter = T2IAdapter(in_channels=3, channels=[8, 8], num_res_blocks=1, downscale_factor=2,
                         adapter_type="full_adapter")
    return {k: v.clone() for k, v in adapter.state_dict().items()}, dict(adapter.config)


def _summary(steps):
    return {"steps": steps, "data_version": "d1", "losses": [1.0, 0.5]}


def _run_folder(out: Path) -> None:
    """What a run folder holds besides its result, plus the result of an earlier publish with a
    file that the new adapter does not have."""
    (out / "checkpoints" / "step-000002").mkdir(parents=True)
    (out / "checkpoints" / "step-000002" / "_manifest.json").write_text("{}")
    (out / "checkpoints" / "latest").write_text("step-000002")
    (out / "logs").mkdir()
    (out / "logs" / "events").write_text("log")
    (out / "adapter").mkdir()
    (out / "adapter" / "stale.bin").write_bytes(b"old")
    (out / "summary.json").write_text("{}")


def test_the_result_is_published_beside_the_checkpoints(tmp_path):
    out = tmp_path / "run"
    _run_folder(out)
    weights, config = _adapter()
    publish_result(str(out), weights, config, _summary(2), load_config())

    manifest = storage.read_manifest(str(out))
    assert set(manifest["files"]) == RESULT
    assert (manifest["kind"], manifest["steps"], manifest["data_version"]) == ("t2iops-adapter", 2, "d1")
    for rel, entry in manifest["files"].items():
        assert storage.sha256_file(out / rel) == entry["sha256"], rel
    assert not (out / "adapter" / "stale.bin").exists()  # the adapter folder is replaced whole
    assert json.loads((out / "summary.json").read_text())["losses"] == [1.0, 0.5]
    assert (out / "checkpoints" / "latest").read_text() == "step-000002"
    assert (out / "logs" / "events").read_text() == "log"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging left


def test_a_failed_publish_leaves_the_previous_result_published(tmp_path):
    out = tmp_path / "run"
    weights, config = _adapter()
    publish_result(str(out), weights, config, _summary(1), load_config())
    before = {rel: (out / rel).read_bytes() for rel in RESULT | {"_manifest.json"}}

    broken = {k: v for k, v in weights.items() if not k.endswith(".bias")}  # the adapter cannot be built
    with pytest.raises(RuntimeError, match="Missing key"):
        publish_result(str(out), broken, config, _summary(2), load_config())
    assert {rel: (out / rel).read_bytes() for rel in before} == before
    assert storage.read_manifest(str(out))["steps"] == 1
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.s3
def test_the_result_on_s3_is_a_versioned_publish_that_replaces_an_older_layout(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    cfg = load_config(overrides=[f"storage.endpoint_url={endpoint}", f"storage.cache_dir={tmp_path / 'cache'}"])
    out = f"s3://{bucket}/runs/a"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    # Left by an older layout: plain keys at the result's names (whose manifest a new run withdrew),
    # and a checkpoint, which must stay.
    for key in ("adapter/stale.bin", "summary.json", "checkpoints/latest"):
        client.put_object(Bucket=bucket, Key=f"runs/a/{key}", Body=b"old")
    weights, config = _adapter()
    publish_result(out, weights, config, _summary(1), cfg)
    publish_result(out, weights, config, _summary(2), cfg)

    manifest = storage.read_manifest(out, cfg)
    assert manifest["layout"] == "versioned" and set(manifest["files"]) == RESULT
    assert json.loads(storage.read_text(storage.join(out, "summary.json"), cfg))["steps"] == 2
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="runs/a/")["Contents"]}
    assert not {"runs/a/adapter/stale.bin", "runs/a/summary.json"} & keys
    assert "runs/a/checkpoints/latest" in keys
    assert set(storage.list_files(out, cfg)) == RESULT | {"_manifest.json", "checkpoints/latest"}
