"""``t2iops model ...``: build tiny test models, inspect a base model's family and adapter shapes."""
from __future__ import annotations

import argparse
import json
import sys


def register(subparsers, common: argparse.ArgumentParser) -> argparse._SubParsersAction:
    parser = subparsers.add_parser(
        "model",
        help="base models: build tiny test models, inspect family and adapter shapes",
        description="Base-model tools. A base model (model.base_model) is a hub id, a local diffusers "
        "folder or an s3:// prefix.",
    )
    sub = parser.add_subparsers(dest="model_command", metavar="<action>")
    sub.required = True

    tiny = sub.add_parser(
        "tiny",
        parents=[common],
        help="build a tiny random SD1.5- or SDXL-shaped base model (for tests and smoke runs)",
        description="Build a tiny random base model with the real architecture's components and folder "
        "layout (model_index.json, unet/, vae/, text_encoder(_2)/, tokenizer(_2)/, scheduler/), load it "
        "back through the normal resolution path to check it, and publish it to --out (folder or s3:// "
        "prefix; _manifest.json written last). Weights are random: images are noise.",
    )
    tiny.add_argument("--family", choices=["sd15", "sdxl"], required=True, help="architecture to mimic")
    tiny.add_argument("--out", required=True, help="output folder or s3:// prefix")
    tiny.add_argument("--seed", type=int, default=None, help="weight seed (default: the config's seed)")
    tiny.set_defaults(func=_tiny)

    inspect = sub.add_parser(
        "inspect",
        parents=[common],
        help="print a base model's family, derived adapter arguments and residual shapes",
        description="Read a base model's configs (no weights) and print its family, the T2IAdapter "
        "arguments derived from its UNet (model.adapter_type, model.adapter_channels, "
        "model.num_res_blocks) and the residual shapes the UNet takes and the adapter produces at "
        "encode.resolution (or --resolution).",
    )
    inspect.add_argument("base", nargs="?", default=None, help="hub id, folder or s3:// prefix (default: model.base_model)")
    inspect.add_argument("--resolution", type=int, default=None, help="image side in pixels (default: encode.resolution)")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.set_defaults(func=_inspect)
    return sub


def _tiny(args, cfg) -> int:
    from .. import storage
    from ..config import ModelConfig
    from .family import build_adapter, check_adapter_fits
    from .resolve import load_base_model
    from .tiny import TINY_RESOLUTION, build_tiny_model

    seed = cfg.seed if args.seed is None else args.seed
    with storage.publish(args.out, cfg, extra={"kind": "tiny-base-model", "family": args.family}) as staging:
        build_tiny_model(args.family, staging, seed=seed)
        # Loaded back in fp32 whatever model.dtype says: a check of the folder, on the CPU.
        base = load_base_model(ModelConfig(base_model=str(staging), dtype="fp32"),
                               components=("unet", "vae", "text_encoders", "scheduler"))
        if base.family != args.family:
            raise RuntimeError(f"built a {args.family} model but it loads as {base.family}")
        check_adapter_fits(build_adapter(base, cfg.model), base, resolution=TINY_RESOLUTION)
        cfg.write(staging)
    print(f"tiny {args.family} model written to {args.out}")
    return 0


def _inspect(args, cfg) -> int:
    from .family import residual_report
    from .resolve import load_base_model

    model_cfg = cfg.model.model_copy(update={"base_model": args.base}) if args.base else cfg.model
    base = load_base_model(model_cfg, cfg.storage, components=())
    resolution = args.resolution or cfg.encode.resolution
    report = residual_report(base, resolution, model_cfg)
    report = {"base_model": model_cfg.base_model, "path": base.path, **report}
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0
    lines = [
        f"base model        {report['base_model']}",
        f"family            {report['family']} ({report['generator']})",
        f"VAE downscale     {report['vae_scale_factor']}",
        f"adapter kwargs    {json.dumps(report['adapter_kwargs'])}",
        f"at {resolution}x{resolution} px:",
        f"  UNet residuals  {report['unet_residual_shapes']} (+ mid {report['unet_mid_shape']})",
        f"  adapter output  {report['adapter_feature_shapes']}",
    ]
    if "problem" in report:
        lines.append(f"problem           {report['problem']}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if "problem" not in report else 1
