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
* loader samples/s in one process (what one DataLoader worker delivers: PNG decode included).

Tensors are random (incompressible, as real latents and embeddings are); the share of unique
captions defaults to 0.39, an estimate for fill50k (~19.5k distinct captions in 50k rows).

    python benchmarks/bench_cache_scale.py --quick --json cache_scale.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

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


def write_cache(root: Path, n: int, res: int, shard_size: int, unique: int, synth_cfg, old_format: bool = False):
    """A cache of ``n`` samples (format 2, or format 1's raw conditions when ``old_format``)."""
    g = torch.Generator().manual_seed(0)
    lat, tokens, width, pooled = res // 8, 77, 2048, 1280
    text_dir, latent_dir = root / "text" / "t", root / "latents" / "l"
    text_shard = shard_size if old_format else TEXT_SHARD_SIZE
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
             "force_zeros_for_empty_prompt": True, "resolution": res,
             "text": {"key": "t", "dir": "text/t"}, "latents": {"key": "l", "dir": "latents/l"},
             "samples": {"train": {"ids": [f"{i:06d}" for i in range(n)], "latent_rows": list(range(n)),
                                   "text_rows": text_rows}}}
    (root / INDEX).write_text(json.dumps(index))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def first_batch_seconds(uri: str, cfg) -> float:
    started = time.perf_counter()
    cache = open_cache(uri, cfg)
    reader = CacheReader(cache.root, "train")
    next(iter(train_loader(reader, cfg.train, 0, 1, fetcher=cache.fetcher)))
    elapsed = time.perf_counter() - started
    if cache.fetcher is not None:
        cache.fetcher.close()
    return elapsed


def moto_server():
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    server, endpoint = moto_server()
    try:
        synth = load_config().data.synth
        unique = max(1, math.ceil(args.unique_fraction * args.samples))
        with storage.publish(work / "new") as staging:
            write_cache(staging, args.samples, args.resolution, args.shard_size, unique, synth)
        old_n = min(args.samples, args.shard_size)  # one shard of format 1 is enough to size it
        write_cache(work / "old", old_n, args.resolution, args.shard_size, max(1, math.ceil(args.unique_fraction * old_n)),
                    synth, old_format=True)
        new_bps = folder_bytes(work / "new") / args.samples
        old_bps = folder_bytes(work / "old") / old_n

        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
        uri = "s3://bench/cache"
        base = [f"storage.endpoint_url={endpoint}", "train.batch_size=8", "train.num_workers=0",
                f"train.shuffle_window={args.window}", "train.stream_prefetch=2"]
        cfg = load_config(overrides=base + [f"storage.cache_dir={work / 'c0'}"])
        storage.upload_dir(work / "new", uri, cfg.storage)
        cache_mb = folder_bytes(work / "new") / 1e6

        from bench_transfer import sequential_download  # the copy as it was before the parallel one

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        started = time.perf_counter()
        sequential_download(client, "bench", "cache/", work / "previous")
        previous_s = time.perf_counter() - started
        one_at_a_time = load_config(overrides=base + [f"storage.cache_dir={work / 'c0'}", "storage.max_concurrency=1"])
        started = time.perf_counter()
        storage.download_dir(uri, work / "seq", one_at_a_time.storage)
        seq_s = time.perf_counter() - started
        started = time.perf_counter()
        storage.download_dir(uri, work / "par", cfg.storage)
        par_s = time.perf_counter() - started

        full = first_batch_seconds(uri, load_config(overrides=base + [f"storage.cache_dir={work / 'c1'}", "train.stream=never"]))
        from_local = first_batch_seconds(str(work / "par"), cfg)  # what follows the download
        streamed = first_batch_seconds(uri, load_config(overrides=base + [f"storage.cache_dir={work / 'c2'}", "train.stream=always"]))

        reader = CacheReader(work / "new", "train")
        loader = iter(train_loader(reader, cfg.train, 0, 1))
        next(loader)
        started = time.perf_counter()
        for _ in range(args.loader_batches):
            next(loader)
        per_worker = args.loader_batches * 8 / (time.perf_counter() - started)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "samples": args.samples, "resolution": args.resolution, "shard_size": args.shard_size,
        "unique_caption_fraction": args.unique_fraction, "cache_mb": round(cache_mb, 1),
        "bytes_per_sample_old": round(old_bps), f"bytes_per_sample_{args.resolution}": round(new_bps),
        "size_reduction": round(old_bps / new_bps, 2),
        "first_step_s_full_download": round(full, 2), "first_step_s_streaming": round(streamed, 2),
        "first_step_ratio": round(streamed / full, 3),
        # the whole-cache parallel download, then the first batch from the local copy
        "first_step_s_full_download_parallel": round(par_s + from_local, 2),
        "first_step_ratio_vs_parallel": round(streamed / (par_s + from_local), 3),
        "transfer_mb_s_previous": round(cache_mb / previous_s, 1),
        "transfer_mb_s_one_at_a_time": round(cache_mb / seq_s, 1), "transfer_mb_s_parallel": round(cache_mb / par_s, 1),
        "transfer_speedup": round(previous_s / par_s, 2), "loader_samples_s_per_worker": round(per_worker, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--window", type=int, default=2, help="train.shuffle_window")
    p.add_argument("--unique-fraction", type=float, default=0.39)
    p.add_argument("--loader-batches", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="384 samples in shards of 16 (a few minutes on 2 cores)")
    p.add_argument("--minimal", action="store_true", help="a seconds-long smoke run at 64 px (tests)")
    p.add_argument("--json", default=None, help="write the figures to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.shard_size = 384, 16
    if args.minimal:
        args.samples, args.resolution, args.shard_size, args.loader_batches = 24, 64, 4, 1
    result = run(args)
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
