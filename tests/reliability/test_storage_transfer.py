"""Prefix copies run in parallel and resume: a materialize killed midway (SIGKILL) continues with
the files it had not verified yet."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from faultproxy import FaultProxy

from t2iops import storage
from t2iops.config import load_config

pytestmark = pytest.mark.s3


@pytest.mark.slow  # a subprocess copying through a 0.2 s/request store, ~20 s
def test_a_killed_materialize_resumes_where_it_stopped(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    cache = tmp_path / "cache"
    uri = f"s3://{bucket}/cache-shards"
    direct = load_config(None, [f"storage.endpoint_url={endpoint}"])
    with storage.publish(uri, direct) as staging:
        for i in range(40):
            (staging / f"shard-{i:03d}.bin").write_bytes(os.urandom(1000 + i))
    with FaultProxy(endpoint, delay_s=0.2) as slow:  # a far-away store: the kill lands midway
        script = textwrap.dedent(f"""
            from t2iops import storage
            from t2iops.config import load_config
            cfg = load_config(None, ["storage.endpoint_url={slow.url}", "storage.cache_dir={cache}",
                                     "storage.max_concurrency=2"])
            storage.materialize("{uri}", cfg)
        """)
        proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            journal = []
            while time.monotonic() < deadline and proc.poll() is None:
                journal = [p for p in (cache / "inputs").glob(".*.journal")] if (cache / "inputs").exists() else []
                if journal and len(journal[0].read_text().splitlines()) >= 10:
                    break
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
    assert journal, "the kill landed while files were being copied"
    copied_before = set(journal[0].read_text().splitlines())
    assert 10 <= len(copied_before) < 40
    with FaultProxy(endpoint) as proxy:
        cfg = load_config(None, [f"storage.endpoint_url={proxy.url}", f"storage.cache_dir={cache}"])
        local = storage.materialize(uri, cfg)
        fetched = [path for method, path in proxy.seen if method == "GET" and "/_v/" in path]
    assert sorted(p.name for p in local.glob("*.bin")) == [f"shard-{i:03d}.bin" for i in range(40)]
    assert len(fetched) == 40 - len(copied_before), "only what the killed copy had not finished"
    assert all(storage.sha256_file(local / name) == meta["sha256"]
               for name, meta in storage.read_manifest(uri, direct)["files"].items())


def test_a_streamed_file_is_one_get_of_its_versioned_key_checked_against_the_manifest(s3_bucket, tmp_path):
    """Streaming reads each shard with the manifest it already holds: one GET per file (no
    lookups of the logical key or of the manifest again), and bytes that differ from the
    manifest never appear under the file's name."""
    endpoint, bucket = s3_bucket
    uri = f"s3://{bucket}/streamed"
    direct = load_config(None, [f"storage.endpoint_url={endpoint}"])
    with storage.publish(uri, direct) as staging:
        (staging / "latents" / "l").mkdir(parents=True)
        for i in range(3):
            (staging / "latents" / "l" / f"shard-{i}.bin").write_bytes(os.urandom(3000 + i))
    manifest = storage.read_manifest(uri, direct)
    rels = [f"latents/l/shard-{i}.bin" for i in range(3)]
    with FaultProxy(endpoint) as proxy:
        cfg = load_config(None, [f"storage.endpoint_url={proxy.url}"])
        sizes = [storage.download_listed(uri, manifest, rel, tmp_path / "local" / rel, cfg) for rel in rels]
    assert sizes == [3000, 3001, 3002]
    assert all(storage.sha256_file(tmp_path / "local" / rel) == manifest["files"][rel]["sha256"] for rel in rels)
    assert [(m, p.split("?")[0]) for m, p in proxy.seen] == [
        ("GET", f"/{bucket}/streamed/{storage.VERSIONS}/{manifest['version']}/{rel}") for rel in rels]

    import boto3  # the stored object changes under the manifest: refused, nothing left behind

    key = f"streamed/{storage.VERSIONS}/{manifest['version']}/{rels[0]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").put_object(Bucket=bucket, Key=key,
                                                                                  Body=os.urandom(3000))
    target = tmp_path / "again" / rels[0]
    with pytest.raises(storage.IntegrityError, match="differs from the manifest"):
        storage.download_listed(uri, manifest, rels[0], target, direct)
    assert not target.exists() and list(target.parent.iterdir()) == []
    with pytest.raises(storage.NotPublished, match="records no size and sha256"):
        storage.download_listed(uri, {**manifest, "files": {}}, rels[0], target, direct)
