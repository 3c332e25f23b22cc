"""``t2iops export``."""
from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """Export a trained T2I-Adapter to ONNX, check it, and publish a serving bundle.

Input: --adapter, a diffusers T2IAdapter folder (config.json + weights) or a training output
folder holding one under adapter/ (its config.resolved.yaml and summary.json then supply the base
model and training data version), local or s3://.

Output (--out, local or s3://, published atomically; nothing is written when a check fails):
  adapter.onnx        fp32 graph: input `condition` float32 [B,3,H,W] RGB in [0,1]; outputs
                      adapter_res_0..N-1 = the UNet's down_intrablock_additional_residuals
  adapter_fp16.onnx   fp16 weights/arithmetic with fp32 input and outputs (export.fp16=true)
  adapter/            the diffusers adapter, for PyTorch users
  export.json         residual shapes per resolution, hashes, parity results, TensorRT audit,
                      shape profiles and trtexec command, provenance (base model, data, git)
  README.md           model card: how to load it and feed the residuals to a UNet

Checks: onnx.checker; onnxruntime vs PyTorch on random and circle conditions at several
batches and sizes (export.fp32_tolerance, default 1e-4, and export.fp16_tolerance, default 1e-2,
relative to the largest output value); the base model's adapter pipeline with ONNX vs PyTorch
residuals on one seed (export.pipeline_check=auto|required|skip, export.pipeline_tolerance);
the TensorRT 10 operator audit (export.require_tensorrt_ready makes it a gate).
Sizes (export.resolutions, default [64], and --parity-sizes) must be multiples of the adapter's
total downscale factor; others are refused with the nearest valid sizes."""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    export = subparsers.add_parser(
        "export",
        parents=[common],
        help="export an adapter to ONNX (fp32 + fp16), validate it, write the serving spec",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("--adapter", required=True, help="adapter folder or training output (local or s3://)")
    export.add_argument("--out", required=True, help="output folder or s3:// prefix")
    export.add_argument("--metrics", default=None, help="evaluation metrics.json to embed in export.json (optional)")
    export.add_argument(
        "--parity-sizes", type=int, nargs="+", default=None, metavar="PX",
        help="square sizes of the parity check (default: export.parity_resolutions, else export.resolutions)",
    )
    export.set_defaults(func=_export, stage="export")


def _export(args: argparse.Namespace, cfg) -> int:
    from .stage import export_adapter

    if args.parity_sizes:
        cfg.export.parity_resolutions = args.parity_sizes
    spec = export_adapter(args.adapter, args.out, cfg, metrics_uri=args.metrics)
    validation = spec["validation"]
    summary = {
        "out": args.out,
        "family": spec["family"],
        "fp32_max_relative_error": validation["fp32_max_relative_error"],
        "fp16_max_relative_error": validation["fp16_max_relative_error"],
        "pipeline_check": validation["pipeline"]["status"],
        "tensorrt_ready": spec["tensorrt"]["audit"]["fp32"]["ready"],
        "tensorrt_engine": spec["tensorrt"]["engine_check"]["status"],
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0
