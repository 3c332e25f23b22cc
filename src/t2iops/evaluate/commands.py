"""``t2iops evaluate`` and ``t2iops evaluate merge``."""
from __future__ import annotations

import argparse
import json
import sys

OUTPUTS = """Outputs (folder or s3:// prefix, published atomically): metrics.json (a DVC metric: fidelity
with/without adapter and lift, FID, KID, CLIP score, gate), samples.csv (one row per sample),
grid.png (the best and the worst samples: condition | without adapter | with adapter),
loss_curve.png (the adapter's training loss, when --adapter is a training output), sweep.png
(metrics vs conditioning scale, with several scales), report.md, report.html (self-contained:
every image embedded), images/, conditions/, real_images/, config.resolved.yaml.

Settings (evaluate.*): split (test), num_samples (64; the first N rows by id), scheduler (default |
ddim | euler | dpmsolver), num_inference_steps (20), guidance_scale (5.0), negative_prompt, batch_size
(16), conditioning_scales ([1.0]; more values add a sweep), conditioning_factor (SDXL, 1.0), seed
(1234; image i uses seed + i), condition_kind (circle_outline), fid (optional | required | off),
inception_weights (local file, s3:// or URL; default torch-fidelity's pt_inception release),
clip_model (unset: no CLIP score), gate.* thresholds."""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    ev = subparsers.add_parser(
        "evaluate",
        parents=[common],
        help="sample with and without the adapter; FID/KID, condition fidelity, CLIP score, report, gate",
        description="Generate the evaluation split with the trained adapter and, with the same seeds and "
        "prompts, with the plain base pipeline; measure condition fidelity (and its lift), FID, KID and "
        "CLIP score; write a report; optionally gate on evaluate.gate thresholds (exit 3 on failure).\n\n"
        "Sharding: --shard i/n evaluates a slice and writes partial results to --out; combine them with "
        "`t2iops evaluate merge --shards E0 E1 ... --out E`. Without --shard the run is one shard plus "
        "the same merge.\n\n" + OUTPUTS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("--adapter", help="training output O (with O/adapter/) or an adapter folder / s3:// prefix")
    ev.add_argument("--data", default=None, help="dataset folder, s3:// prefix or HF id (default: data.root)")
    ev.add_argument("--validated", help="output of `t2iops data validate` (only its rows are used)")
    ev.add_argument("--out", help="output folder or s3:// prefix")
    ev.add_argument("--shard", default=None, metavar="i/n", help="evaluate shard i of n (partial results; merge later)")
    ev.add_argument("--gate", action="store_true", help="exit 3 when a configured evaluate.gate threshold is missed")
    ev.set_defaults(func=_evaluate, stage="evaluate")

    sub = ev.add_subparsers(dest="evaluate_command", metavar="[merge]")
    merge = sub.add_parser(
        "merge",
        parents=[common],
        help="combine shard outputs into the final metrics and report",
        description="Combine the partial results of `t2iops evaluate --shard i/n` (every i once, same "
        "settings) into the final outputs. FID statistics add exactly (float64 sums), so the result "
        "equals a single-process run.\n\n" + OUTPUTS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    merge.add_argument("--shards", nargs="+", required=True, help="shard outputs (folders or s3:// prefixes)")
    merge.add_argument("--out", required=True, help="output folder or s3:// prefix")
    merge.add_argument("--gate", action="store_true", help="exit 3 when a configured evaluate.gate threshold is missed")
    merge.set_defaults(func=_merge, stage="evaluate")


def _summary(metrics: dict) -> str:
    return json.dumps({k: v for k, v in metrics.items() if k != "sweep"}) + "\n"


def _evaluate(args: argparse.Namespace, cfg) -> int:
    from ..errors import UsageError

    missing = [f"--{n}" for n in ("adapter", "validated", "out") if not getattr(args, n)]
    if missing:
        raise UsageError(f"evaluate needs {', '.join(missing)} (or use `t2iops evaluate merge`)")
    data = args.data or cfg.data.root
    from ..encode.sharded import parse_shard
    from .stage import evaluate, evaluate_shard

    if args.shard:
        index, count = parse_shard(args.shard)
        if count > 1:
            if args.gate:
                raise UsageError("--gate applies to the merged result: pass it to `t2iops evaluate merge`")
            info = evaluate_shard(args.adapter, data, args.validated, args.out, cfg, (index, count))
            sys.stdout.write(json.dumps({"shard": f"{index}/{count}", "range": info["range"], "out": args.out}) + "\n")
            return 0
    metrics = evaluate(args.adapter, data, args.validated, args.out, cfg, gate=args.gate)
    sys.stdout.write(_summary(metrics))
    return 0


def _merge(args: argparse.Namespace, cfg) -> int:
    from .stage import merge_shards

    metrics = merge_shards(args.shards, args.out, cfg, gate=args.gate)
    sys.stdout.write(_summary(metrics))
    return 0
