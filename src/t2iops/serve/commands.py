"""``t2iops generate``."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

GENERATE_DESCRIPTION = """Generate images with a trained adapter: prompt(s) + condition image(s) -> images.

The adapter (--adapter): an export folder (export.json, adapter.onnx, adapter/), a training output
(adapter/), an adapter folder (config.json + safetensors), registry:champion (what serving serves)
or registry:<version> (from --registry, default `defaults.registry_uri` of the pipeline settings).
Every file is checked against the _manifest.json it was published with (a registry version whole,
as promote does) and loaded from a checked copy; a file that does not match is refused, naming it.
--runtime onnxruntime runs the exported adapter.onnx instead of the PyTorch weights (an export or
a registry version). The base model is the one the adapter records (export.json or the training
run's summary.json), else model.base_model.

The conditions, one way: --condition FILE (repeatable), --conditions FOLDER (every image, in name
order) or --validated DIR (a validated dataset split: each row's caption and condition, by id).
Prompts pair with conditions in order; one --prompt goes with every condition. The condition's size
is the image's: each side a multiple of the adapter's size multiple (--size HxW cover-crops every
condition to one size, as the evaluation does).

The sampler is the evaluation's, from the configuration (-S evaluate.KEY=VALUE) unless a flag says
otherwise: evaluate.scheduler, num_inference_steps, guidance_scale, negative_prompt,
conditioning_factor, seed (image i uses seed + i). The conditioning scale: --scale, else the
export's recommended usage.adapter_conditioning_scale, else evaluate.conditioning_scales[0].

Output (a folder or s3:// prefix, published atomically): NNNN-<name>.png per image and
generation.json (base model, adapter version and weights sha256, runtime, settings; per image its
prompt, condition, seed and size). Limits: a prompt of at most 2,000 characters, at most 2048x2048
pixels, 1-200 steps, scale 0-10, guidance 0-50."""


def _default_registry(settings: Optional[str]) -> str:
    """``defaults.registry_uri`` of the pipeline settings (as ``t2iops registry`` finds it)."""
    from ..pipelines.settings import load_settings

    return load_settings(settings).defaults.registry_uri


def register(subparsers, common: argparse.ArgumentParser) -> None:
    from ..registry.commands import location_arguments

    gen = subparsers.add_parser(
        "generate", parents=[common], help="images from prompts + condition images with an adapter, an export "
        "or the registry's champion", description=GENERATE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument("--adapter", required=True,
                     help="export folder, training output, adapter folder (or s3:// prefix), registry:champion "
                          "or registry:<version>")
    gen.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch",
                     help="run the adapter with PyTorch (default) or the exported adapter.onnx with onnxruntime")
    gen.add_argument("--out", required=True, help="output folder or s3:// prefix")
    inputs = gen.add_argument_group("inputs")
    inputs.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                        help="a prompt (repeatable: one per condition, in order; once: for every condition)")
    inputs.add_argument("--condition", action="append", default=[], metavar="FILE",
                        help="a condition image (repeatable)")
    inputs.add_argument("--conditions", metavar="FOLDER", help="every image file of a folder, in name order")
    inputs.add_argument("--validated", metavar="DIR",
                        help="output of `t2iops data validate`: generate for its rows of --split")
    inputs.add_argument("--data", default=None, help="with --validated: the dataset (default: data.root)")
    inputs.add_argument("--split", default=None, choices=("train", "val", "test"),
                        help="with --validated: the split (default: evaluate.split)")
    inputs.add_argument("--limit", type=int, default=None, metavar="N", help="at most N images (the first N)")
    inputs.add_argument("--size", default=None, metavar="HxW",
                        help="cover-crop every condition to this size (default: each condition's own size)")
    sampler = gen.add_argument_group("sampler (default: the evaluate.* settings)")
    sampler.add_argument("--scale", type=float, default=None,
                         help="adapter conditioning scale (default: the export's recommended, else "
                              "evaluate.conditioning_scales[0])")
    sampler.add_argument("--steps", type=int, default=None, help="denoising steps (evaluate.num_inference_steps)")
    sampler.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (evaluate.guidance_scale)")
    sampler.add_argument("--seed", type=int, default=None, help="seed of the first image; image i uses seed + i "
                         "(evaluate.seed)")
    sampler.add_argument("--negative-prompt", default=None, help="negative prompt (evaluate.negative_prompt)")
    sampler.add_argument("--scheduler", default=None, choices=("default", "ddim", "euler", "dpmsolver"),
                         help="scheduler (evaluate.scheduler)")
    registry = gen.add_argument_group("registry (for registry:champion / registry:<version>)")
    location_arguments(registry, _default_registry)
    gen.set_defaults(func=_generate)


def _generate(args: argparse.Namespace, cfg) -> int:
    from ..errors import UsageError
    from ..registry.actions import registry_uri
    from .generate import Options, gather, generate_images, parse_size

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: give at least 1")
    if args.data and not args.validated:
        raise UsageError("--data goes with --validated (the rows to generate for)")
    registry = registry_uri(args) if args.adapter.startswith("registry:") else None
    options = Options(runtime=args.runtime, scale=args.scale, steps=args.steps, guidance=args.guidance, seed=args.seed,
                      negative_prompt=args.negative_prompt, scheduler=args.scheduler,
                      size=parse_size(args.size) if args.size else None, registry=registry,
                      model_name=args.model_name)
    items = gather(cfg, args.prompt, args.condition, args.conditions, args.validated, args.data, args.split,
                   args.limit)
    record = generate_images(args.adapter, items, args.out, cfg, options)
    adapter = record["adapter"]
    sys.stdout.write(json.dumps({"out": args.out, "images": len(record["images"]), "adapter": adapter["version"],
                                 "sha256": adapter["sha256"], "runtime": record["runtime"]}) + "\n")
    return 0
