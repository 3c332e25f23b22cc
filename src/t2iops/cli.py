"""``t2iops <stage>``: thin argument parsing around the stage functions.

Every stage reads the same typed configuration: ``--params params.yaml`` (default: ./params.yaml
when it exists, else the schema's defaults, a real SDXL run) plus ``-S key.path=value`` overrides,
exactly like ``dvc exp run -S``. Exit codes: 0 ok; 1 the stage failed; 2 usage/configuration error
(nothing was done); 3 the evaluation gate failed. Failures print one line on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Optional

from .config import SDXL_BASE_MODEL, Config, StageConfig, load_config
from .errors import T2IError
from .process import collect_once_at_exit
from .redact import install_logging_redaction, redact_text

# Each module exposes ``register(subparsers, common)`` adding its subcommands; handlers are
# ``func(args, cfg) -> int | None``. Heavy imports (torch, diffusers) stay inside handlers so
# that ``--help`` is instant.
COMMAND_MODULES = [
    "t2iops.data.commands",
    "t2iops.models.commands",
    "t2iops.models.toy_commands",
    "t2iops.encode.commands",
    "t2iops.train.commands",
    "t2iops.export.commands",
    "t2iops.pipelines.commands",
    "t2iops.evaluate.commands",
    "t2iops.serve.commands",  # `generate`: images from an adapter, an export or the registry's champion
    "t2iops.retrain.commands",  # `retrain`, and `registry` with the pipeline settings' default location
    "t2iops.serve.serve_command",  # `serve`: the champion over the Open Inference Protocol
]

DESCRIPTION = """Train, evaluate and export T2I-Adapters for Stable Diffusion XL and 1.5.

The workflow, in order (dvc.yaml runs steps 1-7: `dvc repro export`):
  1. data synth            the toy demo's synthetic circles (or your own dataset; `data annotate`
                           draws conditions for a folder of images)
  2. data validate         check every row, quarantine bad ones, split train/val/test
  3. toy-base              the toy demo's small base model (or a hub id, folder or s3:// base model)
  4. encode                cache latents and text embeddings of the validated rows
  5. train                 train the adapter on the cache
  6. evaluate [--gate]     sample with and without the adapter: fidelity lift, FID/KID, report
  7. export                ONNX adapters for serving, parity-checked
  8. pipeline              the same stages as a Kubeflow pipeline: compile, submit, schedule, or
                           run-local on this machine
  9. registry, retrain     list, promote, roll back published models; retrain on new data or params
 10. generate, serve       images from an adapter, an export or the champion; the champion over HTTP
Any time: config (show, presets, schema), model (tiny, inspect)."""

EPILOG = """exit codes: 0 ok, 1 stage failed, 2 usage or configuration error, 3 evaluation gate failed.
Configuration: --params FILE (default ./params.yaml when present, else the schema's defaults: a real
SDXL run) and -S key.path=value overrides, e.g. -S train.lr=1e-5 -S data.synth.count=200. Run
`t2iops config show --sources` to see every key and where its value came from, `t2iops config presets`
for ready-made params files."""


def common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("configuration")
    g.add_argument(
        "--params",
        default=None,
        help="YAML file with any subset of the configuration (default: ./params.yaml if it exists, else "
        "the schema's defaults, a real SDXL run)",
    )
    g.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one configuration value, e.g. -S train.lr=1e-5 (repeatable)",
    )
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return common


def params_from_args(args: argparse.Namespace) -> Optional[str]:
    """The params file a command reads: --params, else ./params.yaml when it exists, else None
    (every key not set with -S takes the schema's default)."""
    if args.params is None and Path("params.yaml").exists():
        return "params.yaml"
    return args.params


def config_from_args(args: argparse.Namespace) -> Config:
    """The resolved configuration of a command. Outside a project folder (no ./params.yaml and no
    --params) a command that reads it says so once on stderr, after the configuration validated
    (a configuration error stays one line): the schema's defaults are a real SDXL run, which is
    rarely what someone trying the tool in an empty folder meant."""
    params = params_from_args(args)
    cfg = load_config(params, args.overrides)
    if params is None and getattr(args, "config_notice", True):
        from .presets import preset_path

        sys.stderr.write(
            "t2iops: no ./params.yaml here and no --params: using the schema's defaults, a real SDXL run "
            f"({SDXL_BASE_MODEL}, 1024 px, fp16). For the offline toy demo: --params {preset_path('toy')} "
            "(`t2iops config presets` lists every preset).\n"
        )
    return cfg


def stage_config_from_args(args: argparse.Namespace):
    """The resolved configuration; for a stage command (``stage`` in its parser defaults) only
    the sections the stage declares in ``config.STAGE_SECTIONS``."""
    cfg = config_from_args(args)
    stage = getattr(args, "stage", None)
    return StageConfig(cfg, stage) if stage else cfg


def _config_show(args: argparse.Namespace, cfg: Config) -> int:
    if args.sources:
        from .config import config_sources, yaml_with_sources

        sys.stdout.write(yaml_with_sources(cfg, config_sources(params_from_args(args), args.overrides)))
    else:
        sys.stdout.write(cfg.to_yaml())
    return 0


def _config_presets(args: argparse.Namespace, cfg: Config) -> int:
    from .presets import preset_names, preset_path, preset_summary

    for name in preset_names():
        sys.stdout.write(f"{name}\n  {preset_summary(name)}\n  --params {preset_path(name)}\n")
    return 0


def _config_schema(args: argparse.Namespace, cfg: Config) -> int:
    import json

    sys.stdout.write(json.dumps(Config.model_json_schema(), indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = common_parser()
    parser = argparse.ArgumentParser(
        prog="t2iops",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"t2iops {__import__('t2iops').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True

    cfgp = sub.add_parser("config", help="show the resolved configuration or its schema")
    cfgsub = cfgp.add_subparsers(dest="config_command", metavar="<action>")
    cfgsub.required = True
    show = cfgsub.add_parser(
        "show", parents=[common], help="print the resolved configuration (params + overrides) as YAML"
    )
    show.add_argument(
        "--sources", action="store_true",
        help="end each value's line with where it came from: the params file, the -S that set it, or "
        "'schema default' (the output stays a valid params file)",
    )
    show.set_defaults(func=_config_show)
    presets = cfgsub.add_parser(
        "presets", parents=[common], help="list the ready-made configurations and the --params that picks each"
    )
    presets.set_defaults(func=_config_presets, config_notice=False)
    schema = cfgsub.add_parser("schema", parents=[common], help="print the JSON schema of the configuration")
    schema.set_defaults(func=_config_schema, config_notice=False)

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, common)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    collect_once_at_exit()  # ~2 s less at exit once torch and diffusers are loaded
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # -v is for our code: the AWS SDKs print signed headers at DEBUG, and every line is redacted.
    install_logging_redaction()
    func: Callable = args.func
    try:
        cfg = stage_config_from_args(args)
        rc = func(args, cfg)
        return int(rc or 0)
    except T2IError as exc:
        print(f"t2iops {args.command}: error: {redact_text(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except FileNotFoundError as exc:
        print(f"t2iops {args.command}: error: file not found: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"t2iops {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for scripts; the (redacted) traceback with -v
        if getattr(args, "verbose", False) or os.environ.get("T2IOPS_TRACEBACK"):
            import traceback

            sys.stderr.write(redact_text(traceback.format_exc()))
        print(f"t2iops {args.command}: error: {type(exc).__name__}: {redact_text(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
