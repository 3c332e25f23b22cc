"""``t2iops train``."""
from __future__ import annotations

import argparse


def register(subparsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "train",
        parents=[common],
        help="train a T2I-Adapter from an encode cache",
        description="Train only the adapter on the frozen base model (model.base_model) from the cache written "
        "by `t2iops encode`. Global batch train.batch_size (default 8) per micro-step across all processes, "
        "train.grad_accum micro-steps per optimizer step, train.max_steps optimizer steps (default 1000). "
        "Several processes: `torchrun --nproc_per_node N -m t2iops.cli train ...` (or `deepspeed --no_local_rank --module t2iops.cli train ...`); "
        "train.zero_stage 1-3 or train.deepspeed_config use DeepSpeed ZeRO for the adapter's optimizer state, "
        "gradients (2) and parameters (3).\n\n"
        "Writes OUT/checkpoints/step-N/ every train.checkpoint_every steps (default 100; the newest "
        "train.keep_last kept, OUT/checkpoints/latest names the newest complete one), OUT/logs/ (TensorBoard, "
        "DVCLive), OUT/validation/*.png every train.validate_every steps, and at the end OUT/adapter/ "
        "(diffusers T2IAdapter; EMA weights when train.ema_decay is set), OUT/summary.json, "
        "OUT/config.resolved.yaml and OUT/_manifest.json (last). OUT may be an s3:// prefix.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cache", required=True, help="encode cache (folder or s3:// prefix)")
    p.add_argument("--out", required=True, help="run folder or s3:// prefix")
    p.add_argument("--resume", default=None, metavar="latest|auto|PATH",
                   help="continue from OUT's newest checkpoint ('latest'; a new run when there is none), "
                   "'auto': the same but only when that checkpoint was written for the same run specification "
                   "(model and train config, cache), otherwise remove OUT's checkpoints and start a new run "
                   "(the DVC stage uses it), or a checkpoint folder/URI; adapter, optimizer, EMA, step, RNGs "
                   "and data order are restored, every checkpoint file verified against its manifest first")
    p.set_defaults(func=_train, stage="train")


def _train(args: argparse.Namespace, cfg) -> int:
    from .distributed import shutdown
    from .trainer import train

    try:
        train(args.cache, args.out, cfg, resume=args.resume)
    finally:
        shutdown()
    return 0
