"""``t2iops encode``."""
from __future__ import annotations

import argparse


def register(subparsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "encode",
        parents=[common],
        help="precompute VAE latents and text embeddings into a sharded cache",
        description="Encode the validated rows of encode.splits (default train, val) once: VAE posteriors "
        "(model.vae overrides the base model's VAE, e.g. madebyollin/sdxl-vae-fp16-fix), text embeddings of "
        "every unique caption (SDXL: both encoders + pooled) and of the empty prompt, conditions as uint8 "
        "pixels at encode.resolution (default 64), per-sample SDXL time ids. Random crop / horizontal flip "
        "(encode.random_crop / encode.random_flip, default off) are applied identically to image and "
        "condition. Writes safetensors shards of encode.shard_size (default 1024) samples plus cache.json to "
        "OUT, published atomically. Re-running re-encodes only the part whose inputs changed (text or "
        "latents); with nothing changed it does nothing.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default=None, help="dataset folder, s3:// prefix or HF dataset id (default: data.root)")
    p.add_argument("--validated", required=True, help="output of `t2iops data validate` (folder or s3://)")
    p.add_argument("--out", required=True, help="cache folder or s3:// prefix")
    p.set_defaults(func=_encode, stage="encode")


def _encode(args: argparse.Namespace, cfg) -> int:
    from .encode import encode_dataset

    encode_dataset(args.data or cfg.data.root, args.validated, args.out, cfg)
    return 0
