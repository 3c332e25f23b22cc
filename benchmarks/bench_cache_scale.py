"""Cache at scale: bytes per sample, time to the first batch, transfer speed, loader throughput.

Builds a fill50k-shaped cache with the real SDXL shapes (latent moments 8x128x128 fp16, text
77x2048 + pooled 1280 fp16 per unique caption, condition 3x1024x1024 drawn by the circles
synthesiser, so PNG sizes are those of real outlines) on a loopback moto S3 server, and prints
side by side:

* bytes per sample: format 1 (raw uint8 conditions) vs format 2 (lossless PNG);
* time to the first training batch: download the whole cache (``storage.materialize``) vs
  streaming (``train.stream``);
* transfer MB/s: the previous copy (``download_file`` one object at a time, as
  ``bench_transfer.sequential_download`` keeps it) vs today's ``storage.download_dir`` (16 objects
  at once, verified against the manifest); the new code at ``storage.max_concurrency=1`` too;
* loader samples/s in one process (what one DataLoader worker delivers: PNG decode included);
* the CPU each side used while copying (100 % = one core busy), to show which side is the limit.

The S3 server runs in its own process by default (``--server process``: moto's server, as a real
endpoint is another process on another machine); ``--server thread`` runs moto's
``ThreadedMotoServer`` inside the benchmark, sharing one GIL with the 16 download threads (the
setup of the first figures); ``--server both`` measures the two side by side in one run.
``--endpoint URL`` measures against an S3 server that is already running instead (MinIO, a real
bucket's region endpoint, any S3-compatible server; credentials from the usual AWS variables),
e.g. one whose request handling costs less CPU than moto's; its CPU is reported when
``--server-pid`` names its process.

Tensors are random (incompressible, as real latents and embeddings are); the share of unique
captions defaults to 0.39, an estimate for fill50k (~19.5k distinct captions in 50k rows).

Shards are scaled down with the cache so that the first streamed batch reads about the share of
the cache it reads at full size: fill50k with the SDXL presets (1,024 samples a shard,
``shuffle_window`` 4) reads 4 of 49 latent shards (8 %); 1,024 samples in shards of 32 with a
window of 2 read 2 of 32 (6 %). The text shards the first batch reads (at most 8 of 2.5 MB) do
not shrink with the cache, so below a few hundred MB they dominate and the streaming ratio says
more about the benchmark's size than about streaming. Every timed path is run ``--repeats`` times,
alternating, and the median is reported (the per-run ratios too): a shared host's slow spells
would otherwise decide a single run.

    python benchmarks/bench_cache_scale.py --quick [--server both] [--repeats 3] --json cache_scale.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from t2iops import storage  # noqa: E402
from t2iops.config import load_config  # noqa: E402
from t2iops.data.synth import render_sample, sample_rng  # noqa: E402
from t2iops.encode.cache import CACHE_FORMAT, EMPTY_PROMPT, INDEX, PART, TEXT_SHARD_SIZE, CacheReader  # noqa: E402
from t2iops.encode.cache import encode_png  # noqa: E402
from t2iops.encode.encode import ShardWriter  # noqa: E402
from t2iops.train.data import train_loader  # noqa: E402
from t2iops.train.streaming import open_cache  # noqa: E402


def conditions(n: int, resolution: int, synth_cfg):
    for i in range(n):
        _, outline, _ = render_sample(sample_rng(0, i), resolution, synth_cfg)
        yield torch.from_numpy(__import__("numpy").asarray(outline, dtype="uint8").copy()).permute(2, 0, 1)


def write_cache(root: Path, n: int, res: int, shard_size: int, unique: int, synth_cfg, old_format: bool = False,
                text_shard_size: int = TEXT_SHARD_SIZE):
    """A cache of ``n`` samples (format 2, or format 1's raw conditions when ``old_format``)."""
    g = torch.Generator().manual_seed(0)
    lat, tokens, width, pooled = res // 8, 77, 2048, 1280
    text_dir, latent_dir = root / "text" / "t", root / "latents" / "l"
    text_shard = shard_size if old_format else text_shard_size
    tw = ShardWriter(text_dir, text_shard)
    for start in range(0, unique, 16):
        k = min(16, unique - start)
        tw.add(prompt_embeds=torch.randn(k, tokens, width, generator=g).half(),
               pooled_prompt_embeds=torch.randn(k, pooled, generator=g).half())
    tw.flush()
    from safetensors.torch import save_file

    save_file({"prompt_embeds": torch.zeros(1, tokens, width).half(), "pooled_prompt_embeds": torch.zeros(1, pooled).half()},
              str(text_dir / EMPTY_PROMPT))
    (text_dir / PART).write_text(json.dumps({"captions": [f"caption {i}" for i in range(unique)], "shard_size": text_shard,
                                             "shards": tw.shards, "pooled": True, "family": "sdxl"}))
    lw = ShardWriter(latent_dir, shard_size)
    for i, cond in enumerate(conditions(n, res, synth_cfg)):
        tensors = {"latent_moments": torch.randn(1, 8, lat, lat, generator=g).half(),
                   "time_ids": torch.tensor([[res, res, 0, 0, res, res]], dtype=torch.int32)}
        if old_format:
            lw.add(conditions=cond[None], **tensors)
        else:
            lw.add(blobs={"conditions_png": [encode_png(cond)]}, **tensors)
    lw.flush()
    aug = {"random_crop": False, "random_flip": False, "crop_seed": None}
    (latent_dir / PART).write_text(json.dumps({"ids": [f"{i:06d}" for i in range(n)], "shard_size": shard_size,
                                               "shards": lw.shards, "resolution": res, "augmentation": aug,
                                               "latents": "sample", "scaling_factor": 0.13025, "shift_factor": None}))
    text_rows = [int(torch.randint(unique, (1,), generator=g)) for _ in range(n)]
    index = {"format": 1 if old_format else CACHE_FORMAT, "family": "sdxl", "dataset_version": "bench",
             "force_zeros_for_empty_prompt": True, "resolution": res, "buckets": [[res, res]],
             "text": {"key": "t", "dir": "text/t"}, "latents": {"key": "l", "dir": "latents/l"},
             "samples": {"train": {"ids": [f"{i:06d}" for i in range(n)], "latent_rows": list(range(n)),
                                   "text_rows": text_rows, "buckets": [0] * n}}}
    (root / INDEX).write_text(json.dumps(index))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def first_batch_seconds(uri: str, cfg) -> tuple[float, int]:
    """(seconds from opening the cache to the first batch in hand, bytes streamed before it)."""
    started = time.perf_counter()
    cache = open_cache(uri, cfg)
    reader = CacheReader(cache.root, "train")
    next(iter(train_loader(reader, cfg.train, 0, 1, fetcher=cache.fetcher)))
    elapsed = time.perf_counter() - started
    fetched = 0
    if cache.fetcher is not None:
        fetched = cache.fetcher.fetched_bytes
        cache.fetcher.close()
    return elapsed, fetched


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def loopback_s3(mode: str) -> Iterator[tuple[str, Optional[int]]]:
    """(endpoint, server pid or None) of a moto S3 server on 127.0.0.1.

    ``process`` (default): moto's own server in a separate process, as a real endpoint is, so its
    request handling does not share the benchmark's GIL with the download threads. ``thread``:
    ``ThreadedMotoServer`` inside this process (the setup of the first figures)."""
    import logging

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    if mode == "thread":
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield endpoint, None
        finally:
            server.stop()
        return
    log_file = tempfile.TemporaryFile()  # its request log: a pipe nobody reads would fill and stall it
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_until_answering(endpoint, proc, log_file)
        yield endpoint, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()


@contextlib.contextmanager
def s3_server(mode: str, endpoint: Optional[str], pid: Optional[int] = None) -> Iterator[tuple[str, Optional[int]]]:
    """The given ``endpoint`` (a server already running, on this machine when its ``pid`` is
    given, so that its CPU can be read) or a loopback moto."""
    if endpoint:
        yield endpoint, pid
        return
    with loopback_s3(mode) as answer:
        yield answer


def _create_bucket(client, bucket: str) -> None:
    """Create ``bucket`` unless it is there (servers differ in the error a second create gets)."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)


def _wait_until_answering(endpoint: str, proc: subprocess.Popen, log_file, timeout_s: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log_file.seek(0)
            raise RuntimeError(f"moto server exited with {proc.returncode}: {log_file.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(endpoint + "/", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # an S3 error reply is an answer
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto server at {endpoint} did not answer within {timeout_s:g} s")


def cpu_seconds(pid: Optional[int]) -> float:
    """User + system CPU seconds used so far by ``pid`` (this process when None)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn, server_pid: Optional[int]) -> tuple[float, float, Optional[float]]:
    """(wall s, CPU % of this process, CPU % of the server process) while ``fn()`` runs
    (100 % = one core busy the whole time; with the in-process server both count as this process)."""
    cpu0, srv0, started = cpu_seconds(None), cpu_seconds(server_pid) if server_pid else 0.0, time.perf_counter()
    fn()
    wall = time.perf_counter() - started
    client_pct = 100 * (cpu_seconds(None) - cpu0) / wall
    server_pct = 100 * (cpu_seconds(server_pid) - srv0) / wall if server_pid else None
    return wall, client_pct, server_pct


def build_caches(args, work: Path) -> dict:
    """Write the format 2 cache (published, to upload) and one shard of format 1; their sizes."""
    synth = load_config().data.synth
    unique = max(1, math.ceil(args.unique_fraction * args.samples))
    with storage.publish(work / "new") as staging:
        write_cache(staging, args.samples, args.resolution, args.shard_size, unique, synth,
                    text_shard_size=args.text_shard_size)
    old_n = min(args.samples, args.shard_size)  # one shard of format 1 is enough to size it
    write_cache(work / "old", old_n, args.resolution, args.shard_size, max(1, math.ceil(args.unique_fraction * old_n)),
                synth, old_format=True)
    new_bps = folder_bytes(work / "new") / args.samples
    old_bps = folder_bytes(work / "old") / old_n
    return {"cache_mb": round(folder_bytes(work / "new") / 1e6, 1), "bytes_per_sample_old": round(old_bps),
            f"bytes_per_sample_{args.resolution}": round(new_bps), "size_reduction": round(old_bps / new_bps, 2)}


def measure_against(args, work: Path, mode: str, cache_mb: float) -> dict:
    """Transfers and time to the first batch against one loopback server (``mode``)."""
    import boto3

    from bench_transfer import sequential_download  # the copy as it was before the parallel one

    runs = work / mode
    with s3_server(mode, args.endpoint, args.server_pid) as (endpoint, pid):
        _create_bucket(boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1"), args.bucket)
        key = f"cache-{os.urandom(4).hex()}" if args.endpoint else "cache"  # a fresh prefix on a shared server
        uri = f"s3://{args.bucket}/{key}"
        base = [f"storage.endpoint_url={endpoint}", "train.batch_size=8", "train.num_workers=0",
                f"train.shuffle_window={args.window}", "train.stream_prefetch=2"]
        cfg = load_config(overrides=base + [f"storage.cache_dir={runs / 'c0'}"])
        storage.upload_dir(work / "new", uri, cfg.storage)

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        one_at_a_time = load_config(overrides=base + [f"storage.cache_dir={runs / 'c0'}", "storage.max_concurrency=1"])
        full_cfg = load_config(overrides=base + [f"storage.cache_dir={runs / 'c1'}", "train.stream=never"])
        stream_cfg = load_config(overrides=base + [f"storage.cache_dir={runs / 'c2'}", "train.stream=always"])
        runs_of: dict[str, list] = {}
        for rep in range(args.repeats):  # the paths alternate, so a slow spell of a shared host hits each
            dest = runs / f"rep{rep}"
            runs_of.setdefault("previous", []).append(
                timed(lambda: sequential_download(client, args.bucket, key + "/", dest / "previous"), pid))
            runs_of.setdefault("one_at_a_time", []).append(
                timed(lambda: storage.download_dir(uri, dest / "seq", one_at_a_time.storage), pid))
            runs_of.setdefault("parallel", []).append(timed(lambda: storage.download_dir(uri, dest / "par", cfg.storage), pid))
            runs_of.setdefault("full", []).append(first_batch_seconds(uri, full_cfg))
            runs_of.setdefault("from_local", []).append(first_batch_seconds(str(dest / "par"), cfg))
            runs_of.setdefault("streamed", []).append(first_batch_seconds(uri, stream_cfg))
            shutil.rmtree(dest)
            for c in ("c1", "c2"):  # a fresh local cache each time: nothing is reused between repeats
                shutil.rmtree(runs / c, ignore_errors=True)
        if args.endpoint:  # leave someone else's server as it was
            storage.delete(uri, cfg.storage)
    shutil.rmtree(runs, ignore_errors=True)
    med = (lambda name, field=0: statistics.median(r[field] for r in runs_of[name]))
    pct = (lambda v: None if v is None else round(v))
    previous_s, seq_s, par_s = med("previous"), med("one_at_a_time"), med("parallel")
    full, streamed, from_local = med("full"), med("streamed"), med("from_local")
    return {
        "server": mode, "repeats": args.repeats,
        "first_step_s_full_download": round(full, 2), "first_step_s_streaming": round(streamed, 2),
        "first_step_ratio": round(streamed / full, 3),
        "first_step_ratio_runs": [round(s[0] / f[0], 3) for s, f in zip(runs_of["streamed"], runs_of["full"])],
        "first_step_mb_streaming": round(med("streamed", 1) / 1e6, 1),
        # the whole-cache parallel download, then the first batch from the local copy
        "first_step_s_full_download_parallel": round(par_s + from_local, 2),
        "first_step_ratio_vs_parallel": round(streamed / (par_s + from_local), 3),
        "transfer_mb_s_previous": round(cache_mb / previous_s, 1),
        "transfer_mb_s_one_at_a_time": round(cache_mb / seq_s, 1), "transfer_mb_s_parallel": round(cache_mb / par_s, 1),
        "transfer_speedup": round(previous_s / par_s, 2),
        "transfer_speedup_runs": [round(p[0] / n[0], 2) for p, n in zip(runs_of["previous"], runs_of["parallel"])],
        # CPU while copying (100 = one core): which side is the limit
        "cpu_pct_previous_client": pct(med("previous", 1)),
        "cpu_pct_previous_server": pct(med("previous", 2)) if pid else None,
        "cpu_pct_parallel_client": pct(med("parallel", 1)),
        "cpu_pct_parallel_server": pct(med("parallel", 2)) if pid else None,
    }


def loader_samples_per_s(args, work: Path) -> float:
    cfg = load_config(overrides=["train.batch_size=8", "train.num_workers=0", f"train.shuffle_window={args.window}"])
    loader = iter(train_loader(CacheReader(work / "new", "train"), cfg.train, 0, 1))
    next(loader)
    started = time.perf_counter()
    for _ in range(args.loader_batches):
        next(loader)
    return args.loader_batches * 8 / (time.perf_counter() - started)


def run(args) -> dict:
    """The figures against the first server mode; with ``--server both`` the thread server's
    under ``by_server`` too."""
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    modes = ["external"] if args.endpoint else ["process", "thread"] if args.server == "both" else [args.server]
    try:
        sizes = build_caches(args, work)
        by_server = {mode: measure_against(args, work, mode, sizes["cache_mb"]) for mode in modes}
        per_worker = loader_samples_per_s(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    head = {"samples": args.samples, "resolution": args.resolution, "shard_size": args.shard_size,
            "text_shard_size": args.text_shard_size,
            "unique_caption_fraction": args.unique_fraction, **sizes}
    return {**head, **by_server[modes[0]], "loader_samples_s_per_worker": round(per_worker, 1),
            "by_server": by_server}


def print_table(result: dict) -> None:
    by_server = result["by_server"]
    rows = {k: v for k, v in result.items() if k != "by_server" and not any(k in r for r in by_server.values())}
    keys = list(rows) + list(next(iter(by_server.values())))
    width = max(len(k) for k in keys)
    for k in rows:
        print(f"{k:<{width}}  {rows[k]}")
    for k in next(iter(by_server.values())):
        print(f"{k:<{width}}  " + "  ".join(f"{str(r[k]):>9}" for r in by_server.values()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=4096, help="samples in the cache (4096: 1.6 GB at 1024 px)")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--shard-size", type=int, default=32, help="samples per latent shard")
    p.add_argument("--window", type=int, default=2, help="train.shuffle_window")
    p.add_argument("--text-shard-size", type=int, default=TEXT_SHARD_SIZE,
                   help="captions per text shard (the cache's TEXT_SHARD_SIZE by default)")
    p.add_argument("--unique-fraction", type=float, default=0.39)
    p.add_argument("--loader-batches", type=int, default=8)
    p.add_argument("--server", choices=("process", "thread", "both"), default="process",
                   help="loopback S3: moto in its own process (as a real endpoint), moto's ThreadedMotoServer "
                        "inside this process (sharing its GIL; the first figures), or both side by side")
    p.add_argument("--endpoint", default=None, metavar="URL",
                   help="an S3 server already running (MinIO, a cloud endpoint...) instead of a loopback moto; "
                        "the cache is uploaded under a fresh prefix of --bucket")
    p.add_argument("--server-pid", type=int, default=None,
                   help="with --endpoint on this machine: the server's process id, to report its CPU too")
    p.add_argument("--bucket", default="bench", help="the bucket to use (created when missing)")
    p.add_argument("--repeats", type=int, default=3,
                   help="times each transfer and first batch is measured (alternating); medians are reported")
    p.add_argument("--quick", action="store_true",
                   help="1024 samples (400 MB) in shards of 32, 3 repeats: about 1 minute on 2 cores")
    p.add_argument("--minimal", action="store_true", help="a seconds-long smoke run at 64 px (tests)")
    p.add_argument("--json", default=None, help="write the figures to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.shard_size = 1024, 32
    if args.minimal:
        args.samples, args.resolution, args.shard_size, args.loader_batches, args.repeats = 24, 64, 4, 1, 2
    result = run(args)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
