"""Large objects are copied as parallel byte ranges (downloads) and in parts (uploads): every
range is asked of the same object version (If-Match its ETag), the file is checked against the
manifest, an object replaced mid-copy is refused, and small objects stay one GET."""
from __future__ import annotations

import hashlib
import os
import threading
import time

import boto3
import pytest
from faultproxy import FaultProxy

from t2iops import storage
from t2iops.config import load_config
from t2iops.storage.uris import StorageError

pytestmark = pytest.mark.s3
MB = 1 << 20
RANGED = ["storage.multipart_threshold_mb=2", "storage.multipart_chunk_mb=1", "storage.part_concurrency=4"]


def _range_gets(proxy: FaultProxy, name: str) -> list[str]:
    return [rng for method, path, rng in proxy.ranges if method == "GET" and path.split("?")[0].endswith(name)]


def test_a_large_file_comes_in_ranges_and_matches_the_manifest(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    uri = f"s3://{bucket}/model"
    big, small = os.urandom(5 * MB + 123), os.urandom(1000)
    direct = load_config(None, [f"storage.endpoint_url={endpoint}", *RANGED])
    with storage.publish(uri, direct) as staging:
        (staging / "unet").mkdir()
        (staging / "unet" / "weights.bin").write_bytes(big)
        (staging / "config.json").write_bytes(small)
    manifest = storage.read_manifest(uri, direct)
    with FaultProxy(endpoint) as proxy:
        cfg = load_config(None, [f"storage.endpoint_url={proxy.url}", f"storage.cache_dir={tmp_path / 'c'}", *RANGED])
        local = storage.materialize(uri, cfg)
        streamed = tmp_path / "streamed.bin"
        storage.download_listed(uri, manifest, "unet/weights.bin", streamed, cfg)
        copied = storage.download_dir(uri, tmp_path / "copy", cfg)
    for folder in (local, copied):
        assert (folder / "unet" / "weights.bin").read_bytes() == big
        assert (folder / "config.json").read_bytes() == small
    assert streamed.read_bytes() == big
    # 6 ranges of 1 MB (the last one short) per copy, each its own GET; the small file one plain GET
    expected = sorted(f"bytes={s}-{min(s + MB, len(big)) - 1}" for s in range(0, len(big), MB))
    ranges = _range_gets(proxy, "weights.bin")
    assert sorted(ranges) == sorted(expected * 3)
    assert _range_gets(proxy, "config.json") == [None, None]  # materialize and download_dir
    # nothing but the files: no temp file left behind
    assert sorted(p.name for p in (tmp_path / "copy").rglob("*") if p.is_file()) == ["_manifest.json", "config.json",
                                                                                       "weights.bin"]


def test_a_large_upload_goes_in_parts(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(12 * MB)
    (src / "big.bin").write_bytes(data)
    cfg = load_config(None, [f"storage.endpoint_url={endpoint}", "storage.multipart_threshold_mb=8",
                             "storage.multipart_chunk_mb=1"])
    storage.upload_dir(src, f"s3://{bucket}/up", cfg)
    head = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").head_object(Bucket=bucket, Key="up/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # 3 parts: S3's 5 MB minimum part, not the 1 MB asked
    assert storage.read_bytes(f"s3://{bucket}/up/big.bin", cfg) == data


def test_an_object_replaced_mid_copy_is_refused_and_nothing_is_left(s3_bucket, tmp_path):
    """An unpublished object (no manifest to check against) overwritten between two of its
    ranges: the later ranges ask If-Match the first one's ETag, the store answers 412, the copy
    stops naming the object, and no file appears."""
    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    original = os.urandom(4 * MB)
    client.put_object(Bucket=bucket, Key="loose/big.bin", Body=original)
    with FaultProxy(endpoint, delay_s=0.3) as proxy:  # each request waits 0.3 s before the store sees it

        def replace_after_the_second_range_is_asked():
            deadline = time.monotonic() + 60
            while len(_range_gets(proxy, "big.bin")) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            client.put_object(Bucket=bucket, Key="loose/big.bin", Body=os.urandom(4 * MB))

        replacer = threading.Thread(target=replace_after_the_second_range_is_asked)
        replacer.start()
        cfg = load_config(None, [f"storage.endpoint_url={proxy.url}", *RANGED[:2], "storage.part_concurrency=1"])
        with pytest.raises(StorageError, match=r"loose/big.bin changed while it was being copied"):
            storage.download_dir(f"s3://{bucket}/loose", tmp_path / "out", cfg)
        replacer.join()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_ranges_through_a_store_that_drops_connections(s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    uri = f"s3://{bucket}/flaky"
    data = os.urandom(6 * MB)
    direct = load_config(None, [f"storage.endpoint_url={endpoint}"])
    with storage.publish(uri, direct) as staging:
        (staging / "big.bin").write_bytes(data)
    with FaultProxy(endpoint, fraction=0.3, faults=("reset", "503"), seed=3) as proxy:
        cfg = load_config(None, [f"storage.endpoint_url={proxy.url}", *RANGED])
        out = storage.download_dir(uri, tmp_path / "out", cfg)
    assert sum(proxy.injected.values()) >= 1
    assert hashlib.sha256((out / "big.bin").read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_store_that_sends_more_than_a_range_is_refused(s3_bucket, tmp_path):
    """An unpublished object (only its listed size to check): a range answered with extra bytes
    is never written past its end; the copy stops naming the object and leaves no file."""
    endpoint, bucket = s3_bucket
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").put_object(
        Bucket=bucket, Key="loose2/big.bin", Body=os.urandom(3 * MB))
    with FaultProxy(endpoint, fraction=1.0, faults=("overlong",)) as proxy:
        cfg = load_config(None, [f"storage.endpoint_url={proxy.url}", *RANGED])
        with pytest.raises(StorageError, match=r"loose2/big.bin: the store sent more than bytes 0-1048575"):
            storage.download_dir(f"s3://{bucket}/loose2", tmp_path / "out", cfg)
    assert [rng for _, _, rng in proxy.ranges if rng] == ["bytes=0-1048575"]  # stopped at the first range
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_a_large_file_shows_progress_while_its_ranges_land(s3_bucket, tmp_path, caplog, monkeypatch):
    """Without a terminal the copy logs a line every storage.transfer.LOG_EVERY_S (0 here): a
    single large file reports each range as it lands, not only when it is complete."""
    import logging

    from t2iops.storage import transfer

    endpoint, bucket = s3_bucket
    data = os.urandom(5 * MB)
    direct = load_config(None, [f"storage.endpoint_url={endpoint}"])
    with storage.publish(f"s3://{bucket}/weights", direct) as staging:
        (staging / "unet.bin").write_bytes(data)
    monkeypatch.setattr(transfer, "LOG_EVERY_S", 0.0)
    cfg = load_config(None, [f"storage.endpoint_url={endpoint}", f"storage.cache_dir={tmp_path / 'c'}", *RANGED])
    with caplog.at_level(logging.INFO, logger="t2iops.storage.transfer"):
        local = storage.materialize(f"s3://{bucket}/weights/unet.bin", cfg)
    assert local.read_bytes() == data
    lines = [r.getMessage() for r in caplog.records if "unet.bin" in r.getMessage()]
    partial = [line for line in lines if ": 0/1 files, " in line]
    assert len(partial) >= 4, lines  # 5 of its 6 ranges land before the file is complete
    assert all(f"/{len(data) / 1e6:.1f} MB" in line and "MB/s" in line for line in partial)
    assert any(line.startswith(f"download s3://{bucket}/weights/unet.bin: 1/1 files, {len(data) / 1e6:.1f}/")
               for line in lines), lines
