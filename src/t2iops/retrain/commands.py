"""``t2iops retrain``, and ``t2iops registry`` with the location it defaults to.

Both find the registry, when ``--registry`` is not given, as ``defaults.registry_uri`` of the
pipeline settings (``--settings``). The registry package sits below the pipelines and does not
read their settings, so its commands are declared from here with that default handed to them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ..pipelines.settings import load_settings
from ..registry import commands as registry_commands
from ..registry.actions import registry_uri
from .loop import EXIT_CODES, RetrainRequest, print_result, retrain


def settings_registry(settings: Optional[str]) -> str:
    """``defaults.registry_uri`` of the pipeline settings file (default: pipelines/settings.yaml)."""
    return load_settings(settings).defaults.registry_uri


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """``t2iops registry`` then ``t2iops retrain`` (the order of ``t2iops --help``)."""
    registry_commands.register(subparsers, common, default_location=settings_registry)
    _register_retrain(subparsers, common)


RETRAIN_DESCRIPTION = """Retrain and decide: compile the pipeline -> submit it (the run's parameters carry the
resolved params, the data revision and model_version <UTC yyyymmdd-HHMMSS>-<git sha7>; the run
name carries the git SHA) -> wait -> compare the published challenger with the champion
(`registry` section of params.yaml) -> promote it or keep the champion.

--local runs the identical flow through kfp.local on this machine (as `t2iops pipeline run-local`).
--dry-run (pull requests) trains, evaluates and compares, and writes nothing to the registry: the
run publishes its challenger to a scratch registry in its work area (<run_root>/dry-run-registry;
with --local <work>/dry-run-registry), the champion is only read, nothing is promoted and the
decision is not recorded there. Written to --out: decision.json, decision.md (append it to
$GITHUB_STEP_SUMMARY), retrain.json and the compiled pipeline.yaml; the last stdout line is
retrain.json on one line."""


def _register_retrain(subparsers, common: argparse.ArgumentParser) -> None:
    ret = subparsers.add_parser("retrain", parents=[common], help="run the pipeline, compare, promote or keep",
                                description=RETRAIN_DESCRIPTION, epilog=EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    registry_commands.location_arguments(ret, settings_registry)
    where = ret.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", default=None, help="KFP API endpoint (token from $T2IOPS_KFP_TOKEN)")
    where.add_argument("--local", action="store_true", help="run under kfp.local on this machine")
    ret.add_argument("--image", default=None, help="container image of every step (default: settings or $T2IOPS_IMAGE)")
    ret.add_argument("--package", default=None,
                     help="compiled pipeline to submit, e.g. the CI artifact (default: compile the checkout now)")
    ret.add_argument("--version", default=None, help="model version to publish (default <UTC yyyymmdd-HHMMSS>-<git sha7>)")
    ret.add_argument("--data-rev", default=None,
                     help="git revision of the DVC-tracked data (-> dvc_rev; default: HEAD when -p data_source=dvc)")
    ret.add_argument("-p", "--param", dest="run_params", action="append", default=[], metavar="NAME=VALUE",
                     help="pipeline parameter, e.g. -p data_source=dvc -p dvc_repo=https://... (repeatable)")
    ret.add_argument("--dry-run", action="store_true", help="compare but never promote nor record the decision")
    ret.add_argument("--out", default="retrain-out", help="folder for decision.json/.md, retrain.json (default retrain-out)")
    cluster = ret.add_argument_group("cluster (--host)")
    cluster.add_argument("--namespace", default=None, help="Kubeflow profile namespace")
    cluster.add_argument("--experiment", default="t2iops", help="experiment name (default t2iops)")
    cluster.add_argument("--service-account", default=None, help="Kubernetes service account of the run's pods")
    cluster.add_argument("--no-cache", action="store_true", help="run every step even when a cached result exists")
    cluster.add_argument("--timeout-hours", type=float, default=48.0, help="give up waiting after this long (default 48)")
    cluster.add_argument("--poll-seconds", type=float, default=20.0, help="seconds between status checks (default 20)")
    local = ret.add_argument_group("local (--local)")
    local.add_argument("--work", default="runs/retrain-local", help="working folder (default runs/retrain-local)")
    local.add_argument("--base-model", default="tiny-sd15",
                       help="tiny-sd15 | tiny-sdxl | config (model.base_model) | a path (default tiny-sd15)")
    size = local.add_mutually_exclusive_group()
    size.add_argument("--smoke", dest="smoke", action="store_true", default=True,
                      help="shrink every stage to a few samples and steps (default)")
    size.add_argument("--full", dest="smoke", action="store_false", help="the configuration as given")
    ret.set_defaults(func=_retrain)


def _retrain(args, cfg) -> int:
    req = RetrainRequest(
        registry=registry_uri(args), model_name=args.model_name, version=args.version, run_params=args.run_params,
        data_rev=args.data_rev, dry_run=args.dry_run, out=args.out, settings=args.settings, image=args.image, package=args.package,
        local=args.local, host=args.host, namespace=args.namespace, experiment=args.experiment,
        service_account=args.service_account, no_cache=args.no_cache, timeout_hours=args.timeout_hours,
        poll_seconds=args.poll_seconds, work=args.work, base_model=args.base_model, smoke=args.smoke,
    )
    result = retrain(req, cfg)
    print_result(result, Path(args.out))
    if result.exit_code:
        print(f"t2iops retrain: {result.outcome}: {result.message}", file=sys.stderr)
    return result.exit_code
