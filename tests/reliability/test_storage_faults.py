"""Failures are bounded: through a faulty store every stage completes by retrying; with the store
down for good each fails within a stated bound and publishes nothing.

Bound per S3 call (storage/client.py): retry_deadline + back-off (≤ 20 s, here ≤ 2 s) +
connect_timeout + read_timeout. These tests set 1 s / 1 s / 1 s, so a call gives up within
about 5 s; the asserts allow 40 s for a whole CLI process on a busy machine (with the defaults
the bound is 90 s).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from faultproxy import FaultProxy, black_hole

from t2iops import storage
from t2iops.config import load_config

pytestmark = pytest.mark.s3

FLAKY = ("500", "503", "reset", "slow")
STAGE_BOUND_S = 40


def _cfg(endpoint, tmp_path, *extra):
    return load_config(None, [f"storage.endpoint_url={endpoint}", f"storage.cache_dir={tmp_path / 'cache'}",
                              "storage.connect_timeout=1", "storage.read_timeout=1", *extra])


def _cli(*args, cwd):
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "t2iops.cli", *args], capture_output=True, text=True, timeout=300,
                         cwd=cwd)
    return run, time.monotonic() - started


@pytest.fixture(scope="module")
def circles(tmp_path_factory):
    from t2iops.data.synth import synthesize

    out = tmp_path_factory.mktemp("circles") / "ds"
    synthesize(str(out), load_config(None, ["data.synth.count=6", "data.synth.resolution=32"]))
    return out


def _upload_raw(local: Path, endpoint: str, bucket: str, prefix: str) -> None:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for path in local.rglob("*"):
        if path.is_file() and path.name != storage.MANIFEST:
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")


@pytest.mark.slow  # a CLI process through injected faults and timeouts, ~20-30 s
def test_dataset_read_and_publish_complete_through_faults(s3_bucket, tmp_path, circles):
    endpoint, bucket = s3_bucket
    _upload_raw(circles, endpoint, bucket, "ds")
    with FaultProxy(endpoint, fraction=0.3, faults=FLAKY, slow_s=1.5, seed=1) as proxy:
        run, _ = _cli("data", "validate", "--root", f"s3://{bucket}/ds", "--out", f"s3://{bucket}/verdict",
                      "-S", f"storage.endpoint_url={proxy.url}", "-S", f"storage.cache_dir={tmp_path / 'cache'}",
                      "-S", "storage.connect_timeout=1", "-S", "storage.read_timeout=1",
                      "-S", "storage.max_attempts=10", cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        assert sum(proxy.injected.values()) >= 3, proxy.injected
    direct = _cfg(endpoint, tmp_path / "direct")
    assert storage.read_manifest(f"s3://{bucket}/verdict", direct)["status"] == "passed"


@pytest.mark.slow  # several slow answers waited out, ~15-30 s
def test_export_style_publish_and_read_complete_through_faults(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    uri = f"s3://{bucket}/export"
    with FaultProxy(endpoint, fraction=0.3, faults=FLAKY, slow_s=1.5, seed=2) as proxy:
        cfg = _cfg(proxy.url, tmp_path, "storage.max_attempts=10")
        with storage.publish(uri, cfg, extra={"stage": "export"}) as staging:
            for i in range(6):
                (staging / f"onnx/part-{i}.bin").parent.mkdir(exist_ok=True)
                (staging / f"onnx/part-{i}.bin").write_bytes(os.urandom(20_000 + i))
        local = storage.materialize(uri, cfg)
        assert len(list((local / "onnx").iterdir())) == 6
        assert sum(proxy.injected.values()) >= 3, proxy.injected
    assert storage.read_manifest(uri, _cfg(endpoint, tmp_path))["stage"] == "export"


@pytest.mark.slow  # imports torch; several slow answers waited out, ~20 s
def test_checkpoint_write_and_resume_complete_through_faults(s3_bucket, tmp_path):
    import torch

    from t2iops.train.checkpoint import Checkpointer
    from t2iops.train.distributed import DistInfo

    endpoint, bucket = s3_bucket
    with FaultProxy(endpoint, fraction=0.3, faults=FLAKY, slow_s=1.5, seed=3) as proxy:
        cfg = _cfg(proxy.url, tmp_path, "storage.max_attempts=10")
        ckpt = Checkpointer(f"s3://{bucket}/run", DistInfo(0, 1, 0, torch.device("cpu")), cfg.storage)
        for step in (1, 2):
            ckpt.save(step, lambda folder, s=step: (folder / "state.json").write_text(json.dumps({"step": s})))
        uri = ckpt.resolve("latest")
        assert json.loads((ckpt.materialize(uri) / "state.json").read_text()) == {"step": 2}
        assert sum(proxy.injected.values()) >= 2, proxy.injected


def _dvc(*args, cwd, env):
    return subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_dvc_pull_completes_through_faults(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    for i in range(8):
        (repo / "data" / f"{i}.bin").write_bytes(os.urandom(5000))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    for args in (("init", "-q"), ("remote", "add", "-d", "store", f"s3://{bucket}/dvcstore"),
                 ("remote", "modify", "store", "endpointurl", endpoint), ("add", "-q", "data"), ("push", "-q")):
        done = _dvc(*args, cwd=repo, env=env)
        assert done.returncode == 0, done.stderr
    expected = {p.name: p.read_bytes() for p in (repo / "data").iterdir()}
    subprocess.run(["rm", "-rf", str(repo / "data"), str(repo / ".dvc" / "cache")], check=True)
    with FaultProxy(endpoint, fraction=0.3, faults=("500", "503", "reset"), seed=4) as proxy:
        assert _dvc("remote", "modify", "--local", "store", "endpointurl", proxy.url, cwd=repo, env=env).returncode == 0
        pulled = _dvc("pull", "-q", cwd=repo, env=env)
        assert pulled.returncode == 0, pulled.stderr
        assert sum(proxy.injected.values()) >= 1, proxy.injected
    assert {p.name: p.read_bytes() for p in (repo / "data").iterdir()} == expected


@pytest.fixture(params=["never-answers", "always-503"])
def dead_store(request, s3_server):
    if request.param == "never-answers":
        with black_hole() as hole:
            yield hole.url
    else:
        with FaultProxy(s3_server, fraction=1.0, faults=("503",)) as proxy:
            yield proxy.url


def test_dataset_read_fails_within_the_bound_when_the_store_is_down(dead_store, tmp_path):
    run, elapsed = _cli("data", "validate", "--root", "s3://deadbucket/ds/train", "--out", str(tmp_path / "verdict"),
                        "-S", f"storage.endpoint_url={dead_store}", "-S", f"storage.cache_dir={tmp_path / 'cache'}",
                        "-S", "storage.connect_timeout=1", "-S", "storage.read_timeout=1",
                        "-S", "storage.retry_deadline=1", "-S", "storage.max_attempts=50", cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert elapsed < STAGE_BOUND_S, f"took {elapsed:.0f} s"
    message = run.stderr.strip().splitlines()[-1]
    assert "deadbucket" in message and "ds/train" in message and dead_store in message, message
    assert "gave up after" in message
    assert not (tmp_path / "verdict").exists()


def test_publish_fails_within_the_bound_and_publishes_nothing(dead_store, s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    cfg = _cfg(dead_store, tmp_path, "storage.retry_deadline=1", "storage.max_attempts=50")
    started = time.monotonic()
    with pytest.raises(storage.StorageError) as exc:
        with storage.publish(f"s3://{bucket}/out", cfg) as staging:
            (staging / "model.onnx").write_bytes(b"x" * 1000)
    assert time.monotonic() - started < STAGE_BOUND_S
    assert bucket in str(exc.value) and dead_store in str(exc.value)
    assert storage.list_files(f"s3://{bucket}/out", _cfg(endpoint, tmp_path)) == []
