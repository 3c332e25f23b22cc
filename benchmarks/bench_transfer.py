"""Prefix download: the sequential copy (one object after the other, as storage did before)
vs storage.download_dir (parallel, verified), side by side on the loopback moto S3 server.

Real S3 answers each request after tens of milliseconds; loopback answers at once. ``--latency-ms``
puts the test suite's proxy (tests/reliability/faultproxy.py) in front of moto, adding that delay
to every request, so both paths see the same round-trip time. Prints one row per latency and the
ratio old/new (target >= 4x).

    python benchmarks/bench_transfer.py [--objects 200] [--kb 256] [--latency-ms 0 30] [--concurrency 16]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reliability"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sequential_download(client, bucket: str, prefix: str, target: Path) -> None:
    """The previous storage.download_dir: list, then download_file one object at a time."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for obj in (o for page in pages for o in page.get("Contents", [])):
        path = target / obj["Key"][len(prefix):]
        path.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, obj["Key"], str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=200)
    ap.add_argument("--kb", type=int, default=256, help="size of each object")
    ap.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 30.0])
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()

    import boto3
    from faultproxy import FaultProxy
    from moto.server import ThreadedMotoServer

    from t2iops import storage
    from t2iops.config import load_config

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    port = _port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    try:
        bucket = "bench-transfer"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        src = work / "src"
        for i in range(args.objects):
            path = src / f"shard-{i // 50:03d}" / f"{i:06d}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(args.kb * 1024))
        storage.upload_dir(src, f"s3://{bucket}/data", load_config(None, [f"storage.endpoint_url={endpoint}"]))
        total_mb = args.objects * args.kb / 1024
        print(f"{args.objects} objects x {args.kb} KB = {total_mb:.1f} MB; concurrency {args.concurrency}")
        print("| latency ms | sequential s | parallel s | sequential MB/s | parallel MB/s | speed-up |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for latency in args.latency_ms:
            with FaultProxy(endpoint, delay_s=latency / 1000) as proxy:
                client = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1")
                old_dir, new_dir = work / "old", work / "new"
                started = time.perf_counter()
                sequential_download(client, bucket, "data/", old_dir)
                old_s = time.perf_counter() - started
                cfg = load_config(None, [f"storage.endpoint_url={proxy.url}",
                                         f"storage.max_concurrency={args.concurrency}"])
                started = time.perf_counter()
                storage.download_dir(f"s3://{bucket}/data", new_dir, cfg)
                new_s = time.perf_counter() - started
                assert sorted(p.name for p in new_dir.rglob("*.bin")) == sorted(p.name for p in old_dir.rglob("*.bin"))
                shutil.rmtree(old_dir)
                shutil.rmtree(new_dir)
            print(f"| {latency:g} | {old_s:.2f} | {new_s:.2f} | {total_mb / old_s:.1f} | {total_mb / new_s:.1f} "
                  f"| **{old_s / new_s:.2f}x** |")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
