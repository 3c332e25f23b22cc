"""Storage against a real S3 server on loopback (moto's ThreadedMotoServer)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from t2iops import storage
from t2iops.config import load_config

pytestmark = pytest.mark.s3


def _cfg(endpoint):
    return load_config(None, [f"storage.endpoint_url={endpoint}", "storage.max_attempts=2"])


def test_publish_to_s3_and_read_back(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    cfg = _cfg(endpoint)
    uri = f"s3://{bucket}/runs/exp1"
    with storage.publish(uri, cfg, extra={"stage": "s3"}) as staging:
        (staging / "model.bin").write_bytes(b"w" * 1000)
        (staging / "nested").mkdir()
        (staging / "nested" / "cfg.yaml").write_text("a: 1\n")
    manifest = storage.read_manifest(uri, cfg)
    assert set(manifest["files"]) == {"model.bin", "nested/cfg.yaml"}
    assert storage.read_bytes(f"{uri}/model.bin", cfg) == b"w" * 1000
    assert storage.list_files(uri, cfg) == ["_manifest.json", "model.bin", "nested/cfg.yaml"]


def test_failed_s3_publish_publishes_nothing(s3_bucket):
    endpoint, bucket = s3_bucket
    cfg = _cfg(endpoint)
    uri = f"s3://{bucket}/runs/broken"
    with pytest.raises(ValueError):
        with storage.publish(uri, cfg) as staging:
            (staging / "x").write_text("1")
            raise ValueError("boom")
    assert storage.list_files(uri, cfg) == []
    assert not storage.is_published(uri, cfg)


def test_republish_removes_stale_objects(s3_bucket):
    endpoint, bucket = s3_bucket
    cfg = _cfg(endpoint)
    uri = f"s3://{bucket}/out"
    with storage.publish(uri, cfg) as s:
        (s / "old.txt").write_text("1")
    with storage.publish(uri, cfg) as s:
        (s / "new.txt").write_text("2")
    assert storage.list_files(uri, cfg) == ["_manifest.json", "new.txt"]


def test_materialize_caches_by_etag_and_refreshes_on_change(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    cfg = load_config(None, [f"storage.endpoint_url={endpoint}", f"storage.cache_dir={tmp_path / 'cache'}"])
    uri = f"s3://{bucket}/model"
    storage.write_bytes(f"{uri}/weights.bin", b"v1", cfg)
    first = storage.materialize(uri, cfg)
    assert (first / "weights.bin").read_bytes() == b"v1"
    assert storage.materialize(uri, cfg) == first, "unchanged objects reuse the cache"
    storage.write_bytes(f"{uri}/weights.bin", b"v2", cfg)
    second = storage.materialize(uri, cfg)
    assert second != first and (second / "weights.bin").read_bytes() == b"v2"
    single = storage.materialize(f"{uri}/weights.bin", cfg)
    assert single.read_bytes() == b"v2"


def test_materialize_from_two_processes_at_once(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    cfg = _cfg(endpoint)
    uri = f"s3://{bucket}/shared"
    for i in range(20):
        storage.write_bytes(f"{uri}/part-{i}.bin", bytes([i]) * 50_000, cfg)
    script = textwrap.dedent(
        f"""
        from t2iops import storage
        from t2iops.config import load_config
        cfg = load_config(None, ["storage.endpoint_url={endpoint}", "storage.cache_dir={tmp_path / 'cache'}"])
        p = storage.materialize("{uri}", cfg)
        assert len(list(p.glob("part-*.bin"))) == 20
        print(p)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert outs[0][0].strip() == outs[1][0].strip()
    assert len([d for d in (tmp_path / "cache" / "inputs").iterdir() if not d.name.startswith(".")]) == 1


def test_missing_s3_input_is_a_clear_error(s3_bucket):
    endpoint, bucket = s3_bucket
    with pytest.raises(FileNotFoundError, match="nothing found"):
        storage.materialize(f"s3://{bucket}/does/not/exist", _cfg(endpoint))
