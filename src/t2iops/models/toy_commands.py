"""``t2iops toy-base --out DIR``: train the offline toy SDXL base model."""
from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """Train, from scratch and offline, a small text-to-image model with SDXL's architecture on the
synthetic circles ("red circle with blue background") at toy_base.resolution (default 64 px):
a VAE (AutoencoderKL, downscale 4), a UNet2DConditionModel with text_time conditioning, two CLIP text
encoders with their tokenizers and a zero-terminal-SNR v-prediction scheduler.

Output (folder or s3:// prefix, published atomically with _manifest.json last): a diffusers folder
that StableDiffusionXLPipeline.from_pretrained(OUT) and StableDiffusionXLAdapterPipeline load
(model_index.json, unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/,
scheduler/), samples.png (generated samples with their prompts; green bar = colours right),
toy_base_report.json (colour accuracy, steps, wall and CPU time, parameter counts) and
config.resolved.yaml. Settings: toy_base.* (vae_steps, unet_steps, batch_size, lr, ...); see
`t2iops config show`. Default output location used by the rest of the workflow: model.base_model
(models/toy-base)."""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "toy-base",
        parents=[common],
        help="train the offline toy SDXL base model on synthetic circles",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default=None, help="output folder or s3:// prefix (default: model.base_model)")
    parser.set_defaults(func=_toy_base, stage="toy_base")


def _toy_base(args, cfg) -> int:
    from ..config import SDXL_BASE_MODEL, TOY_BASE_MODEL
    from ..errors import UsageError
    from .toy_base import train_toy_base

    if args.out is None and cfg.model.base_model == SDXL_BASE_MODEL:
        # The schema's default base is a hub id: a folder of that name would shadow it afterwards.
        raise UsageError(f"model.base_model is the hub id {SDXL_BASE_MODEL}, not a folder to write the toy base "
                         f"to: give --out (e.g. --out {TOY_BASE_MODEL}) or the toy preset's --params")
    out = args.out or cfg.model.base_model
    report = train_toy_base(out, cfg)
    summary = {k: report[k] for k in ("colour_accuracy", "circle_accuracy", "background_accuracy", "steps", "parameters")}
    summary["train_wall_s"] = report["times"]["train_wall_s"]
    summary["train_cpu_s"] = report["times"]["train_cpu_s"]
    summary["out"] = str(out)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
