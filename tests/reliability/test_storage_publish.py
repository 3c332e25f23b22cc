"""S3 publish is atomic and readers verify what they read (real moto server, real SIGKILL)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import boto3
import pytest

from t2iops import storage
from t2iops.config import load_config

pytestmark = pytest.mark.s3


def _cfg(endpoint, tmp_path):
    return load_config(None, [f"storage.endpoint_url={endpoint}", f"storage.cache_dir={tmp_path / 'cache'}",
                              "storage.max_attempts=2"])


def _publish(uri, cfg, tag: str, count: int) -> None:
    with storage.publish(uri, cfg, extra={"tag": tag}) as staging:
        for i in range(count):
            (staging / f"part-{i:04d}.txt").write_text(f"{tag}-{i}")


def _version_prefixes(client, bucket, prefix) -> set[str]:
    keys = [o["Key"] for p in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/_v/")
            for o in p.get("Contents", [])]
    return {k.split("/")[2] for k in keys}


def test_sigkill_midway_leaves_the_previous_output_whole(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    cfg = _cfg(endpoint, tmp_path)
    uri = f"s3://{bucket}/out"
    _publish(uri, cfg, "old", 5)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    old_versions = _version_prefixes(client, bucket, "out")
    script = textwrap.dedent(f"""
        from t2iops import storage
        from t2iops.config import load_config
        cfg = load_config(None, ["storage.endpoint_url={endpoint}"])
        with storage.publish("{uri}", cfg, extra={{"tag": "new"}}) as staging:
            for i in range(400):
                (staging / f"part-{{i:04d}}.txt").write_text(f"new-{{i}}")
    """)
    scratch = tmp_path / "killed-tmp"  # a killed writer's staging folder stays behind: here, not in /tmp
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            env={**os.environ, "TMPDIR": str(scratch)})
    try:
        deadline = time.monotonic() + 60
        new_objects = 0
        while time.monotonic() < deadline and proc.poll() is None:
            new = _version_prefixes(client, bucket, "out") - old_versions
            if new:
                prefix = f"out/_v/{next(iter(new))}/"
                new_objects = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0)
                if new_objects >= 20:
                    break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert new_objects >= 20, "the kill landed while the new version was being uploaded"
    assert proc.returncode == -signal.SIGKILL
    manifest = storage.read_manifest(uri, cfg)
    assert manifest["tag"] == "old" and len(manifest["files"]) == 5
    assert storage.list_files(uri, cfg) == ["_manifest.json"] + [f"part-{i:04d}.txt" for i in range(5)]
    local = storage.materialize(uri, cfg)
    assert sorted(p.name for p in local.iterdir() if not p.name.startswith((".", "_"))) == \
        [f"part-{i:04d}.txt" for i in range(5)]
    assert (local / "part-0003.txt").read_text() == "old-3"
    assert storage.read_text(f"{uri}/part-0004.txt", cfg) == "old-4"
    # The next publish lands whole over the killed one.
    _publish(uri, cfg, "next", 3)
    assert storage.read_manifest(uri, cfg)["tag"] == "next"
    assert storage.list_files(uri, cfg) == ["_manifest.json", "part-0000.txt", "part-0001.txt", "part-0002.txt"]


def test_two_concurrent_publishers_one_lands_whole_the_other_fails(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    cfg = _cfg(endpoint, tmp_path)
    uri = f"s3://{bucket}/race"
    _publish(uri, cfg, "base", 2)
    both_staged = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def publisher(tag):
        try:
            with storage.publish(uri, cfg, extra={"tag": tag}) as staging:
                for i in range(30):
                    (staging / f"{tag}-{i}.txt").write_text(tag)
                both_staged.wait(timeout=30)  # both read the same manifest, then race
            outcome[tag] = "landed"
        except storage.ConcurrentPublish as exc:
            outcome[tag] = exc

    threads = [threading.Thread(target=publisher, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    landed = [t for t, o in outcome.items() if o == "landed"]
    failed = [o for o in outcome.values() if isinstance(o, storage.ConcurrentPublish)]
    assert len(landed) == 1 and len(failed) == 1, outcome
    assert "withdrawn" in str(failed[0]) and uri in str(failed[0])
    winner = landed[0]
    manifest = storage.read_manifest(uri, cfg)
    assert manifest["tag"] == winner
    local = storage.materialize(uri, cfg)
    assert sorted(p.name for p in local.glob("*.txt")) == sorted(f"{winner}-{i}.txt" for i in range(30))
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    loser_version = set(_version_prefixes(client, bucket, "race")) - {manifest["version"], manifest["previous"]}
    assert loser_version == set(), "the loser removed its version"


def test_a_tampered_object_is_refused_naming_the_key(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    cfg = _cfg(endpoint, tmp_path)
    uri = f"s3://{bucket}/model"
    _publish(uri, cfg, "v1", 3)
    version = storage.read_manifest(uri, cfg)["version"]
    key = f"model/_v/{version}/part-0001.txt"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.put_object(Bucket=bucket, Key=key, Body=b"v1-X")  # same size, other bytes
    with pytest.raises(storage.IntegrityError, match=f"{key}: sha256"):
        storage.materialize(uri, cfg)
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert leftovers == [], "no partial local copy"
    with pytest.raises(storage.IntegrityError, match=key):
        storage.read_bytes(f"{uri}/part-0001.txt", cfg)
    client.put_object(Bucket=bucket, Key=key, Body=b"longer than before")
    with pytest.raises(storage.IntegrityError, match="bytes, the manifest records 4"):
        storage.download_dir(uri, tmp_path / "copy", cfg)


def test_old_versions_are_collected_after_the_manifest_moves(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    cfg = _cfg(endpoint, tmp_path)
    uri = f"s3://{bucket}/gc"
    versions = []
    for n in range(3):
        _publish(uri, cfg, f"v{n}", 2)
        versions.append(storage.read_manifest(uri, cfg)["version"])
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    assert _version_prefixes(client, bucket, "gc") == {versions[1], versions[2]}, "live + previous kept"


def test_checkpoint_style_layout_is_verified_on_read(s3_bucket, tmp_path):
    """A folder uploaded file by file with a manifest written last (the checkpointer's layout):
    materialize reads only what the manifest lists and checks it."""
    import json

    endpoint, bucket = s3_bucket
    cfg = _cfg(endpoint, tmp_path)
    staging = tmp_path / "ckpt"
    (staging / "state").mkdir(parents=True)
    (staging / "state" / "trainer.json").write_text('{"step": 4}')
    (staging / "adapter.safetensors").write_bytes(b"\x00" * 64)
    uri = f"s3://{bucket}/run/checkpoints/step-000004"
    storage.upload_dir(staging, uri, cfg)
    files = {p.relative_to(staging).as_posix(): {"bytes": p.stat().st_size, "sha256": storage.sha256_file(p)}
             for p in staging.rglob("*") if p.is_file()}
    storage.write_bytes(f"{uri}/_manifest.json", json.dumps({"files": files, "step": 4}).encode(), cfg)
    storage.write_bytes(f"{uri}/stray-from-a-killed-writer.bin", b"junk", cfg)
    local = storage.materialize(uri, cfg, kind="checkpoints")
    assert (local / "state" / "trainer.json").read_text() == '{"step": 4}'
    assert not (local / "stray-from-a-killed-writer.bin").exists()
    storage.write_bytes(f"{uri}/state/trainer.json", b'{"step": 9}', cfg)
    fresh = _cfg(endpoint, tmp_path / "other-pod")  # the verified copy above stays valid; a new reader refuses
    with pytest.raises(storage.IntegrityError, match="step-000004/state/trainer.json"):
        storage.materialize(uri, fresh, kind="checkpoints")


def test_local_publish_survives_and_replaces_atomically(tmp_path):
    dest = tmp_path / "out"
    _publish(dest, None, "one", 2)
    _publish(dest, None, "two", 1)
    assert storage.read_manifest(dest)["tag"] == "two"
    assert sorted(p.name for p in dest.iterdir()) == ["_manifest.json", "part-0000.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_files_and_folders_of_a_published_output_are_read_by_their_logical_path(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    cfg = _cfg(endpoint, tmp_path)
    uri = f"s3://{bucket}/cache"
    with storage.publish(uri, cfg) as staging:
        (staging / "latents").mkdir()
        (staging / "latents" / "0.bin").write_bytes(b"l0")
        (staging / "latents" / "1.bin").write_bytes(b"l1")
        (staging / "index.json").write_text("{}")
    assert storage.read_text(f"{uri}/index.json", cfg) == "{}"
    assert storage.exists(f"{uri}/latents/1.bin", cfg) and not storage.exists(f"{uri}/latents/2.bin", cfg)
    assert storage.list_files(f"{uri}/latents", cfg) == ["0.bin", "1.bin"]
    storage.download_dir(f"{uri}/latents", tmp_path / "carried", cfg)
    assert sorted(p.name for p in (tmp_path / "carried").iterdir()) == ["0.bin", "1.bin"]
    assert storage.materialize(f"{uri}/latents/0.bin", cfg).read_bytes() == b"l0"
