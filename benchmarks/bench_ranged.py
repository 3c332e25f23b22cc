"""One large object (a model's weights file): a single GET stream vs parallel byte ranges, side
by side in one run, on the loopback moto S3 server behind the test suite's proxy.

A real store serves each stream at a bounded rate (S3: tens of MB/s to ~100 MB/s per connection),
which is what ranges in parallel overcome; loopback has no such bound. ``--stream-mb-s`` makes the
proxy (tests/reliability/faultproxy.py) pace every response body at that rate; 0 leaves loopback
as it is. Prints one row per rate with both times and the ratio.

    python benchmarks/bench_ranged.py [--mb 256] [--stream-mb-s 0 50] [--part-mb 16] [--parts 8] [--repeats 3]
        [--endpoint URL]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reliability"))
sys.path.insert(0, str(ROOT / "src"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=256, help="size of the object")
    ap.add_argument("--stream-mb-s", type=float, nargs="+", default=[0.0, 50.0],
                    help="pace of each response body (0 = loopback as it is)")
    ap.add_argument("--part-mb", type=float, default=16)
    ap.add_argument("--parts", type=int, default=8, help="storage.part_concurrency")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--endpoint", default=None, metavar="URL",
                    help="an S3 server already running instead of moto (moto copies the whole object for every "
                         "range request, so ranges cost it far more than a real store); credentials from the "
                         "usual AWS variables; the bucket is created when missing and the object deleted after")
    args = ap.parse_args(argv)

    import boto3
    from faultproxy import FaultProxy
    from moto.server import ThreadedMotoServer

    from t2iops import storage
    from t2iops.config import load_config

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    server = None
    if args.endpoint:
        endpoint = args.endpoint
    else:
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        endpoint = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="bench-ranged-"))
    bucket = "bench-ranged"
    uri = f"s3://{bucket}/model-{os.urandom(4).hex()}"
    direct = load_config(None, [f"storage.endpoint_url={endpoint}"])
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        try:
            client.head_bucket(Bucket=bucket)
        except Exception:  # noqa: BLE001 - missing (servers differ in the error)
            client.create_bucket(Bucket=bucket)
        with storage.publish(uri, direct) as staging:
            (staging / "weights.bin").write_bytes(os.urandom(args.mb << 20))
        print(f"one object of {args.mb} MB; ranges of {args.part_mb:g} MB, {args.parts} at a time; "
              f"median of {args.repeats}, alternating")
        print("| stream cap MB/s | one GET s | ranges s | one GET MB/s | ranges MB/s | speed-up |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for rate in args.stream_mb_s:
            with FaultProxy(endpoint, stream_mb_s=rate) as proxy:
                common = [f"storage.endpoint_url={proxy.url}", f"storage.multipart_chunk_mb={args.part_mb}",
                          f"storage.part_concurrency={args.parts}"]
                single = load_config(None, common + [f"storage.multipart_threshold_mb={args.mb * 2}"])
                ranged = load_config(None, common + [f"storage.multipart_threshold_mb={args.part_mb * 2}"])
                times: dict[str, list[float]] = {"single": [], "ranged": []}
                for rep in range(args.repeats):
                    for label, cfg in (("single", single), ("ranged", ranged)):
                        dest = work / f"{label}-{rep}"
                        started = time.perf_counter()
                        storage.download_dir(uri, dest, cfg)
                        times[label].append(time.perf_counter() - started)
                        shutil.rmtree(dest)
            one, many = statistics.median(times["single"]), statistics.median(times["ranged"])
            print(f"| {rate:g} | {one:.2f} | {many:.2f} | {args.mb * 1.048576 / one:.1f} | "
                  f"{args.mb * 1.048576 / many:.1f} | **{one / many:.2f}x** |")
    finally:
        if server is not None:
            server.stop()
        else:
            storage.delete(uri, direct)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
