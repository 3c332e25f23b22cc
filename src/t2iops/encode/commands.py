"""``t2iops encode`` and ``t2iops encode merge``."""
from __future__ import annotations

import argparse
import json
import sys


def register(subparsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "encode",
        parents=[common],
        help="precompute VAE latents and text embeddings into a sharded cache",
        description="Encode the validated rows of encode.splits (default train, val) once: VAE posteriors "
        "(model.vae overrides the base model's VAE, e.g. madebyollin/sdxl-vae-fp16-fix), text embeddings of "
        "every unique caption (SDXL: both encoders + pooled) and of the empty prompt, conditions as lossless "
        "PNG, per-sample SDXL time ids. Each sample is resized to cover its aspect-ratio bucket (encode.buckets: "
        "square, auto or a list of HxW; sides multiples of the base model's VAE and adapter downscale) and "
        "cropped to it; every shard holds one bucket. Random crop / horizontal flip "
        "(encode.random_crop / encode.random_flip, default off) are applied identically to image and "
        "condition. Writes safetensors shards of encode.shard_size (default 1024) samples plus cache.json to "
        "OUT, published atomically. Re-running re-encodes only the part whose inputs changed (text or "
        "latents); with nothing changed it does nothing.\n\n"
        "Sharding: --shard i/n encodes slice i of n (whole shards) into --out; join the slices with "
        "`t2iops encode merge --shards S0 S1 ... --out CACHE`, which equals a one-process encode.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default=None, help="dataset folder, s3:// prefix or hf://owner/name (default: data.root)")
    p.add_argument("--validated", help="output of `t2iops data validate` (folder or s3://)")
    p.add_argument("--out", help="cache folder or s3:// prefix (with --shard: this slice's output)")
    p.add_argument("--shard", default=None, metavar="i/n", help="encode slice i of n (merge later)")
    p.set_defaults(func=_encode, stage="encode")

    sub = p.add_subparsers(dest="encode_command", metavar="[merge]")
    merge = sub.add_parser(
        "merge",
        parents=[common],
        help="join the slices of a sharded encode into one cache",
        description="Join the outputs of `t2iops encode --shard i/n` (every i once, same inputs and "
        "settings) into one cache, file for file what a one-process encode writes; published atomically.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    merge.add_argument("--shards", nargs="+", required=True, help="slice outputs (folders or s3:// prefixes)")
    merge.add_argument("--out", required=True, help="cache folder or s3:// prefix")
    merge.set_defaults(func=_merge, stage="encode")


def _encode(args: argparse.Namespace, cfg) -> int:
    from ..errors import UsageError

    missing = [f"--{n}" for n in ("validated", "out") if not getattr(args, n)]
    if missing:
        raise UsageError(f"encode needs {', '.join(missing)} (or use `t2iops encode merge`)")
    data = args.data or cfg.data.root
    if args.shard:
        from .sharded import encode_shard, parse_shard

        index, count = parse_shard(args.shard)
        info = encode_shard(data, args.validated, args.out, cfg, (index, count))
        sys.stdout.write(json.dumps({"shard": f"{index}/{count}", "rows": info["rows"], "out": args.out}) + "\n")
        return 0
    from .encode import encode_dataset

    encode_dataset(data, args.validated, args.out, cfg)
    return 0


def _merge(args: argparse.Namespace, cfg) -> int:
    from .sharded import merge_shards

    merge_shards(args.shards, args.out, cfg)
    return 0
