"""Checkpoints are complete or absent; ``latest`` only moves to complete ones; old ones are pruned."""
import json

import pytest
import torch

from t2iops import storage
from t2iops.errors import UsageError
from t2iops.train.checkpoint import Checkpointer, rng_state, set_rng_state
from t2iops.train.distributed import DistInfo

SOLO = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _writer(value):
    def write(folder):
        (folder / "state").mkdir(parents=True, exist_ok=True)
        (folder / "state" / "trainer.json").write_text(json.dumps({"value": value}))
    return write


def test_save_publishes_manifest_then_moves_latest_and_prunes(tmp_path):
    ck = Checkpointer(str(tmp_path / "run"), SOLO, keep_last=2)
    for step in (10, 20, 30):
        uri = ck.save(step, _writer(step))
        assert storage.is_published(uri)
        assert (tmp_path / "run/checkpoints/latest").read_text() == f"step-{step:06d}"
    assert ck.list_complete() == ["step-000020", "step-000030"]
    assert not (tmp_path / "run/checkpoints/step-000010").exists()
    manifest = storage.read_manifest(ck.resolve("latest"))
    assert manifest["step"] == 30 and "state/trainer.json" in manifest["files"]
    assert not [p for p in (tmp_path / "run/checkpoints").iterdir() if p.name.startswith(".")]  # no staging left


def test_a_failing_write_leaves_the_last_good_checkpoint_in_place(tmp_path):
    ck = Checkpointer(str(tmp_path / "run"), SOLO, keep_last=2)
    ck.save(1, _writer(1))

    def broken(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ck.save(2, broken)
    assert ck.list_complete() == ["step-000001"]
    assert ck.resolve("latest").endswith("step-000001")
    assert not (tmp_path / "run/checkpoints/step-000002").exists()
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir()) == ["latest", "step-000001"]


def test_resolve_latest_without_checkpoints_and_bad_paths(tmp_path):
    ck = Checkpointer(str(tmp_path / "run"), SOLO)
    assert ck.resolve("latest") is None
    (tmp_path / "half").mkdir()
    with pytest.raises(UsageError, match="not a complete checkpoint"):
        ck.resolve(str(tmp_path / "half"))


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


@pytest.mark.s3
def test_checkpoints_on_s3(s3_bucket):
    from t2iops.config import StorageConfig

    endpoint, bucket = s3_bucket
    cfg = StorageConfig(endpoint_url=endpoint)
    ck = Checkpointer(f"s3://{bucket}/runs/a", SOLO, storage_cfg=cfg, keep_last=1)
    ck.save(5, _writer(5))
    ck.save(6, _writer(6))
    assert ck.list_complete() == ["step-000006"]
    uri = ck.resolve("latest")
    assert uri == f"s3://{bucket}/runs/a/checkpoints/step-000006"
    local = ck.materialize(uri)
    assert json.loads((local / "state" / "trainer.json").read_text()) == {"value": 6}
    assert storage.list_files(f"s3://{bucket}/runs/a/checkpoints/step-000005", cfg) == []


@pytest.mark.s3
def test_checkpoints_on_s3_are_versioned_publishes_and_a_failed_write_shows_nothing(s3_bucket):
    import boto3

    from t2iops.config import StorageConfig

    endpoint, bucket = s3_bucket
    cfg = StorageConfig(endpoint_url=endpoint)
    ck = Checkpointer(f"s3://{bucket}/runs/b", SOLO, storage_cfg=cfg, keep_last=2)
    uri = ck.save(1, _writer(1))
    manifest = storage.read_manifest(uri, cfg)
    assert manifest["layout"] == "versioned" and manifest["step"] == 1
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="runs/b/")["Contents"]}
    assert f"runs/b/checkpoints/step-000001/_v/{manifest['version']}/state/trainer.json" in keys

    def broken(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ck.save(2, broken)
    assert ck.list_complete() == ["step-000001"]
    assert not client.list_objects_v2(Bucket=bucket, Prefix="runs/b/checkpoints/step-000002").get("Contents")
    assert storage.read_text(f"s3://{bucket}/runs/b/checkpoints/latest", cfg) == "step-000001"


RANK_SCRIPT = r"""
import json, sys
import torch, torch.distributed as torch_dist
from t2iops.config import StorageConfig
from t2iops.train.checkpoint import Checkpointer
from t2iops.train.distributed import DistInfo

rank, port, out, endpoint = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
dist = DistInfo(rank, 2, rank, torch.device("cpu"))

def write(folder):
    (folder / "state").mkdir(parents=True, exist_ok=True)
    (folder / "state" / f"rank-{rank}.txt").write_text(f"written by rank {rank}")
    if dist.is_main:
        (folder / "state" / "trainer.json").write_text(json.dumps({"step": 3}))

Checkpointer(out, dist, StorageConfig(endpoint_url=endpoint or None)).save(3, write)
torch_dist.destroy_process_group()
"""


def _two_ranks_save(out: str, endpoint: str = "") -> None:
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(rank), port, out, endpoint], env=env,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_two_ranks_publish_one_checkpoint_listing_both_ranks_files(request, tmp_path, where):
    from t2iops.config import StorageConfig

    if where == "s3":
        endpoint, bucket = request.getfixturevalue("s3_bucket")
        out, cfg = f"s3://{bucket}/runs/two", StorageConfig(endpoint_url=endpoint)
    else:
        endpoint, out, cfg = "", str(tmp_path / "run"), None
    _two_ranks_save(out, endpoint)
    ck = Checkpointer(out, SOLO, cfg)
    assert ck.list_complete() == ["step-000003"]
    uri = ck.resolve("latest")
    assert set(storage.read_manifest(uri, cfg)["files"]) == {"state/rank-0.txt", "state/rank-1.txt",
                                                             "state/trainer.json"}
    local = ck.materialize(uri)
    assert (local / "state" / "rank-1.txt").read_text() == "written by rank 1"
    if where == "local":
        assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["latest", "step-000003"]
