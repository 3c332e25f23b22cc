"""Base models on S3, through the real loopback S3 server: resolved once into the ETag-keyed
cache, shared safely by processes that start at the same time."""
import json
import os
import subprocess
import sys
import textwrap
from urllib.parse import urlparse

import pytest

from t2iops import storage
from t2iops.config import Config
from t2iops.errors import ModelError
from t2iops.models.resolve import load_base_model


def _config(endpoint: str, bucket: str, cache, prefix: str = "models/tiny-sd15") -> Config:
    cfg = Config()
    cfg.storage.endpoint_url = endpoint
    cfg.storage.cache_dir = str(cache)
    cfg.model.base_model = f"s3://{bucket}/{prefix}"
    return cfg


def _cache_entries(cache) -> list[str]:
    root = cache / "models"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_s3_model_resolves_into_the_cache_once(s3_bucket, tiny_sd15_path, tmp_path):
    endpoint, bucket = s3_bucket
    cfg = _config(endpoint, bucket, tmp_path / "cache")
    storage.upload_dir(tiny_sd15_path, cfg.model.base_model, cfg)

    base = load_base_model(cfg.model, cfg.storage, components=("unet", "text_encoders", "scheduler"))
    assert base.family == "sd15" and base.source == cfg.model.base_model
    assert base.path.startswith(str(tmp_path / "cache" / "models"))
    assert len(base.tokenizers[0]("red circle", add_special_tokens=False).input_ids) == 2
    first = os.stat(os.path.join(base.path, ".complete"))

    again = load_base_model(cfg.model, cfg.storage, components=())
    assert again.path == base.path
    assert os.stat(os.path.join(again.path, ".complete")).st_ino == first.st_ino  # not downloaded again
    assert [e for e in _cache_entries(tmp_path / "cache") if not e.startswith(".")] == [os.path.basename(base.path)]

    # New objects (new ETags) make a new cache entry: an updated model is never served stale.
    storage.write_bytes(cfg.model.base_model + "/README.md", b"updated", cfg)
    updated = load_base_model(cfg.model, cfg.storage, components=())
    assert updated.path != base.path and os.path.exists(os.path.join(updated.path, "README.md"))


def test_missing_s3_prefix_is_a_model_error(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    cfg = _config(endpoint, bucket, tmp_path / "cache", prefix="models/never-uploaded")
    with pytest.raises(ModelError, match=r"s3://.*never-uploaded: nothing found"):
        load_base_model(cfg.model, cfg.storage)


CHILD = textwrap.dedent(
    """
    import json, os, sys
    from t2iops.config import Config
    from t2iops.models.resolve import load_base_model

    cfg = Config()
    cfg.storage.endpoint_url, cfg.storage.cache_dir, cfg.model.base_model = sys.argv[1:4]
    base = load_base_model(cfg.model, cfg.storage, components=("unet", "vae", "text_encoders", "scheduler"))
    print(json.dumps({
        "path": base.path,
        "family": base.family,
        "inode": os.stat(os.path.join(base.path, ".complete")).st_ino,
        "unet_parameters": sum(p.numel() for p in base.unet.parameters()),
    }))
    """
)


def _object_downloads(endpoint: str, run) -> list[str]:
    """Paths of the S3 GET requests the server saw while ``run()`` ran (moto's request recorder;
    it writes its log to the working directory, a temporary one here)."""
    import requests

    requests.post(f"{endpoint}/moto-api/recorder/reset-recording", timeout=30)
    requests.post(f"{endpoint}/moto-api/recorder/start-recording", timeout=30)
    try:
        run()
    finally:
        requests.post(f"{endpoint}/moto-api/recorder/stop-recording", timeout=30)
    log = requests.get(f"{endpoint}/moto-api/recorder/download-recording", timeout=30).text
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    return [urlparse(e["url"]).path for e in entries if e["method"] == "GET" and not urlparse(e["url"]).query]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_processes_resolving_the_same_s3_model_at_once(s3_bucket, tiny_sdxl_path, tmp_path, monkeypatch):
    endpoint, bucket = s3_bucket
    cache = tmp_path / "cache"
    cfg = _config(endpoint, bucket, cache, prefix="models/tiny-sdxl")
    storage.upload_dir(tiny_sdxl_path, cfg.model.base_model, cfg)
    (tmp_path / "moto").mkdir()
    monkeypatch.chdir(tmp_path / "moto")

    args = [sys.executable, "-c", CHILD, endpoint, str(cache), cfg.model.base_model]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the AWS test credentials come from s3_server
    results = []

    def run_both():
        procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for proc in procs:
            out, err = proc.communicate(timeout=540)
            assert proc.returncode == 0, err[-2000:]
            results.append(json.loads(out.strip().splitlines()[-1]))

    downloads = _object_downloads(endpoint, run_both)

    assert {r["family"] for r in results} == {"sdxl"}
    assert results[0]["unet_parameters"] == results[1]["unet_parameters"] > 0
    # One cache entry, written once: both processes read the very same finished copy.
    assert results[0]["path"] == results[1]["path"]
    assert results[0]["inode"] == results[1]["inode"]
    entries = _cache_entries(cache)
    assert [e for e in entries if not e.startswith(".")] == [os.path.basename(results[0]["path"])]
    assert not [e for e in entries if ".tmp-" in e]  # no half-written download left behind
    # The server sent each object once: the second process waited for the first's copy.
    weights = f"/{bucket}/models/tiny-sdxl/unet/diffusion_pytorch_model.safetensors"
    assert downloads.count(weights) == 1, downloads
    # Each process reads the small manifest to learn what to verify; every file is sent once.
    files = [d for d in downloads if not d.endswith("/_manifest.json")]
    listed = storage.list_files(cfg.model.base_model, cfg)
    assert len(files) == len(set(files)) == len([f for f in listed if f != storage.MANIFEST])
    assert len(downloads) - len(files) <= 2
