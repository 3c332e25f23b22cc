"""No S3 key and no symlink leads outside its destination (real moto server, real symlinks)."""
from __future__ import annotations

import subprocess
import sys

import boto3
import pytest

from t2iops import storage
from t2iops.config import load_config
from t2iops.errors import DataError
from t2iops.pipelines.sources import copy_dataset

pytestmark = pytest.mark.s3

EVIL_KEYS = ["data/../../escaped.txt", "data//tmp/escaped-abs.txt", "data/sub/../../../escaped2.txt"]


def _cfg(endpoint, tmp_path):
    return load_config(None, [f"storage.endpoint_url={endpoint}", f"storage.cache_dir={tmp_path / 'cache'}",
                              "storage.max_attempts=2"])


@pytest.mark.parametrize("evil", EVIL_KEYS)
def test_download_refuses_a_key_leading_outside_and_writes_nothing(s3_bucket, tmp_path, evil):
    endpoint, bucket = s3_bucket
    cfg = _cfg(endpoint, tmp_path)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.put_object(Bucket=bucket, Key="data/good.txt", Body=b"fine")
    client.put_object(Bucket=bucket, Key=evil, Body=b"escaped")
    dest = tmp_path / "deep" / "a" / "dest"
    with pytest.raises(storage.UnsafePath, match="refusing") as exc:
        storage.download_dir(f"s3://{bucket}/data", dest, cfg)
    assert evil in str(exc.value), "the error names the key"
    assert not dest.exists() or not any(p.is_file() for p in dest.rglob("*")), "nothing written, not even good.txt"
    with pytest.raises(storage.UnsafePath):
        storage.materialize(f"s3://{bucket}/data", cfg)
    cache_files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert cache_files == []
    assert not list(tmp_path.rglob("escaped*")) and not (tmp_path.parent / "escaped.txt").exists()


def test_data_validate_from_s3_refuses_an_escaping_key(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.put_object(Bucket=bucket, Key="ds/metadata.jsonl", Body=b"")
    client.put_object(Bucket=bucket, Key="ds/../../pwned.txt", Body=b"x")
    run = subprocess.run(
        [sys.executable, "-m", "t2iops.cli", "data", "validate", "--root", f"s3://{bucket}/ds",
         "--out", str(tmp_path / "verdict"), "-S", f"storage.endpoint_url={endpoint}",
         "-S", f"storage.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert run.returncode == 1, run.stderr
    assert "ds/../../pwned.txt" in run.stderr and "outside" in run.stderr
    assert not (tmp_path / "verdict").exists()
    assert not list(tmp_path.parent.rglob("pwned.txt"))


def test_pull_step_refuses_a_symlink_leading_outside_the_dataset(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of the dataset")
    root = tmp_path / "dataset"
    (root / "images").mkdir(parents=True)
    (root / "images" / "0.png").write_bytes(b"png")
    (root / "images" / "1.png").symlink_to(secret)
    out = tmp_path / "pulled"
    with pytest.raises(DataError, match="images/1.png is a link to .*secret.txt, outside"):
        copy_dataset(str(root), str(out), load_config(None, []))
    assert not out.exists() and not list(tmp_path.glob(".pulled*"))


def test_pull_step_refuses_a_linked_folder_leading_outside(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.txt").write_text("x")
    root = tmp_path / "dataset"
    root.mkdir()
    (root / "metadata.jsonl").write_text("")
    (root / "more").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match="more is a link"):
        copy_dataset(str(root), str(tmp_path / "pulled"), load_config(None, []))


def test_pull_step_copies_a_symlink_inside_the_dataset(tmp_path):
    root = tmp_path / "dataset"
    root.mkdir()
    (root / "a.txt").write_text("a")
    (root / "b.txt").symlink_to(root / "a.txt")
    copy_dataset(str(root), str(tmp_path / "pulled"), load_config(None, []))
    assert (tmp_path / "pulled" / "b.txt").read_text() == "a"
    assert not (tmp_path / "pulled" / "b.txt").is_symlink()
