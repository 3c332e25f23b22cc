"""``t2iops pipeline compile | submit | schedule | run-local``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .parameters import run_parameters_help

DEFAULT_PACKAGE = "t2iops-training.yaml"


class _TableEpilogFormatter(argparse.HelpFormatter):
    """Wraps descriptions as argparse does; keeps text with indented lines (the run parameters'
    table) as written."""

    def _fill_text(self, text, width, indent):
        if "\n  " in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

DESCRIPTION = """The Kubeflow Pipelines training pipeline (pipelines/training.py):
pull -> validate -> encode -> train -> evaluate (parallel shards) -> merge + gate -> export -> publish.

Cluster settings (image, GPU node pool, resources, retries, caching, train launcher) come from
pipelines/settings.yaml (--settings another file; T2IOPS_IMAGE overrides the image). Run
parameters go with -p name=value (each action's --help lists them). The configuration
(params.yaml or --params, plus -S overrides) is resolved once: `compile` bakes it in as the
defaults of the config_<stage> parameters (each step gets only the sections its stage reads, so
changing train.lr re-runs train, evaluate and export and reuses the cached pull, validate and
encode); `submit` and `schedule` send it. Before anything is sent, compile/submit/schedule
refuse (exit 2) a model.base_model or data.root that is a folder on this machine (use a hub id
or s3://), a bad cron and a bad shard list.
The compiled YAML also works with the stock kfp CLI:
  kfp pipeline create -p t2iops-training t2iops-training.yaml
  kfp run create -e t2iops -r my-run -f t2iops-training.yaml data_source=synth"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    pipe = subparsers.add_parser(
        "pipeline", help="compile, submit, schedule or locally run the KFP training pipeline",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = pipe.add_subparsers(dest="pipeline_command", metavar="<action>")
    sub.required = True
    # Every action that builds or starts a run lists the run parameters (derived from
    # parameters.RUN_PARAMETERS; a test keeps it equal to the pipeline's inputs).
    listed = {"epilog": run_parameters_help(), "formatter_class": _TableEpilogFormatter}

    settings = _settings_parser()
    comp = sub.add_parser(
        "compile", parents=[common, settings], **listed, help="write the pipeline's IR YAML",
        description="Compile pipelines/training.py to KFP IR YAML (the package `submit` and `kfp run create` take). "
        "The resolved configuration (--params, -S) becomes the defaults of the config_<stage> parameters; the "
        "default run parameters are checked; nothing is sent anywhere. A model.base_model or data.root that is a "
        "folder on this machine is refused (exit 2), as no pod can see it: the toy preset's params.yaml names "
        "models/toy-base, so give -S model.base_model=s3://... (or a hub id) with it.",
    )
    comp.add_argument("--output", "-o", default=DEFAULT_PACKAGE, help=f"output file (default {DEFAULT_PACKAGE})")
    comp.set_defaults(func=_compile)

    client = _client_parser()

    subm = sub.add_parser(
        "submit", parents=[common, settings, client], **listed, help="start a run on a KFP endpoint",
        description="Validate the run parameters against the package, then create a run with kfp.Client. "
        "The token comes from $T2IOPS_KFP_TOKEN when the endpoint needs one. With --wait, follow the run "
        "and exit 1 when it fails, 3 when it succeeded but the evaluation gate stopped the export.",
    )
    subm.add_argument("--run-name", default=None, help="display name of the run (default: pipeline name + time)")
    subm.add_argument("--wait", action="store_true", help="stream the run's state until it ends")
    subm.add_argument("--timeout-hours", type=float, default=48.0, help="give up waiting after this long (default 48)")
    subm.add_argument("--poll-seconds", type=float, default=20.0, help="seconds between status checks (default 20)")
    subm.set_defaults(func=_submit)

    sched = sub.add_parser(
        "schedule", parents=[common, settings, client], **listed, help="create a recurring run",
        description="Create a recurring run of the pipeline on a cron schedule (5 fields, or KFP's 6 with seconds first).",
    )
    sched.add_argument("--cron", required=True, help="e.g. '0 3 * * 1' (Mondays 03:00)")
    sched.add_argument("--name", default="t2iops-training-weekly", help="recurring run name")
    sched.add_argument("--max-concurrency", type=int, default=1, help="runs at once (default 1)")
    sched.add_argument("--catchup", action="store_true", help="run the missed intervals after a pause")
    sched.set_defaults(func=_schedule)

    loc = sub.add_parser(
        "run-local", parents=[common, settings], **listed, help="run the whole pipeline on this machine (kfp.local)",
        description="Run every step of the compiled pipeline under kfp.local, on CPU: each step a subprocess of this "
        "Python environment (--runner subprocess, the default) or a container of the project image, as a cluster "
        "runs it (--runner docker: the image named by --image / $T2IOPS_IMAGE / the settings' `image`, built with "
        "scripts/build_image.sh; a docker daemon must answer; the steps share the host's network and see the work "
        "folder). The configuration as resolved (in a project folder: params.yaml, the toy preset's synthetic circles), "
        "a tiny base model built on the spot (or --base-model), "
        "storage in a folder, a moto S3 server on 127.0.0.1 (--s3 moto) or an S3 server already running (--s3 URL; "
        "bucket t2iops-local). With S3, a local base model or -p data_source=FOLDER is uploaded first, so every step "
        "reads its inputs from the store. --smoke (default) shrinks every stage to a few samples and steps (a key you "
        "set with -S keeps your value, and the log says which sizes it applied); --full "
        "keeps the configuration as given. Exit 3 when the gate failed.",
    )
    loc.add_argument("--work", default="runs/pipeline-local", help="working folder (default runs/pipeline-local)")
    loc.add_argument("--s3", default="none", metavar="none|moto|URL",
                     help="storage: a folder (none, default), a moto S3 server started for the run (moto), or the "
                          "endpoint URL of a running S3 server (credentials from the AWS chain)")
    loc.add_argument("--runner", choices=["subprocess", "docker"], default="subprocess",
                     help="where each step runs: this environment (default) or a container of the project image")
    loc.add_argument("--base-model", default="tiny-sd15",
                     help="tiny-sd15 | tiny-sdxl (built in the work folder) | config (model.base_model) | a path (default tiny-sd15)")
    size = loc.add_mutually_exclusive_group()
    size.add_argument("--smoke", dest="smoke", action="store_true", default=True, help="few samples and steps, except the keys set with -S (default)")
    size.add_argument("--full", dest="smoke", action="store_false", help="the configuration as given")
    loc.add_argument("-p", "--param", dest="run_params", action="append", default=[], metavar="NAME=VALUE",
                     help="run parameter, e.g. -p eval_shards='[0,1,2]'")
    loc.set_defaults(func=_run_local)


def _settings_parser() -> argparse.ArgumentParser:
    """--settings and --image: the cluster-facing settings every action reads."""
    settings = argparse.ArgumentParser(add_help=False)
    settings.add_argument("--settings", default=None, help="pipeline settings file (default: pipelines/settings.yaml)")
    settings.add_argument("--image", default=None, help="container image of every step (default: settings `image` or $T2IOPS_IMAGE)")
    return settings


def _client_parser() -> argparse.ArgumentParser:
    """The options of the actions that talk to a KFP endpoint (submit, schedule)."""
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080 (a port-forward of ml-pipeline-ui)")
    client.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user installs)")
    client.add_argument("--experiment", default="t2iops", help="experiment name (default t2iops; created when missing)")
    client.add_argument("--package", default=None, help="compiled package to send (default: compile now)")
    client.add_argument("-p", "--param", dest="run_params", action="append", default=[], metavar="NAME=VALUE",
                        help="run parameter, e.g. -p data_source=dvc -p dvc_rev=v1.2 -p eval_shards='[0,1,2,3]' (repeatable)")
    client.add_argument("--service-account", default=None, help="Kubernetes service account of the run's pods")
    client.add_argument("--no-cache", action="store_true", help="run every step even when a cached result exists")
    return client


def _package(args, cfg) -> Path:
    from .compile import compile_pipeline

    if args.package:
        return Path(args.package)
    return compile_pipeline(DEFAULT_PACKAGE, args.settings, args.image, cfg)


def _run_arguments(args, cfg, package: Path) -> dict:
    """-p values, plus the resolved configuration as the config_<stage> parameters, checked
    against the package and for a cluster before anything is sent."""
    from .cluster_checks import check_cluster_arguments
    from .compile import parameter_specs, parse_cli_parameters, read_package, validate_arguments
    from .runtime import stage_parameters

    spec = read_package(package)
    values = parse_cli_parameters(args.run_params, spec)
    for name, value in stage_parameters(cfg).items():
        values.setdefault(name, value)
    validate_arguments(spec, values)
    defaults = {name: s.get("defaultValue") for name, s in parameter_specs(spec).items()}
    check_cluster_arguments({**defaults, **values})
    return values


def _compile(args, cfg) -> int:
    from .cluster_checks import check_cluster_arguments
    from .compile import compile_pipeline
    from .runtime import stage_parameters
    from .settings import default_data_source

    check_cluster_arguments({**stage_parameters(cfg), "data_source": default_data_source(cfg)})
    path = compile_pipeline(args.output, args.settings, args.image, cfg)
    print(str(path))
    return 0


def _submit(args, cfg) -> int:
    from .submit import make_client, reaching, submit_run, wait_for_run

    package = _package(args, cfg)
    arguments = _run_arguments(args, cfg, package)
    client = make_client(args.host, args.namespace)
    with reaching(args.host):
        run_id = submit_run(client, package, arguments, args.experiment, run_name=args.run_name, namespace=args.namespace,
                            enable_caching=False if args.no_cache else None, service_account=args.service_account)
    print(json.dumps({"run_id": run_id, "host": args.host, "experiment": args.experiment}))
    if args.wait:
        with reaching(args.host):
            outcome = wait_for_run(client, run_id, timeout_s=args.timeout_hours * 3600, poll_s=args.poll_seconds)
        print(json.dumps({"run_id": run_id, "state": outcome.state, "gate_passed": outcome.gate_passed}))
    return 0


def _schedule(args, cfg) -> int:
    from .submit import Schedule, make_client, normalize_cron, reaching, schedule_run

    normalize_cron(args.cron)  # a bad cron is named before anything is compiled
    schedule = Schedule(args.cron, args.name, args.experiment, args.max_concurrency, args.catchup, args.namespace,
                        enable_caching=False if args.no_cache else None, service_account=args.service_account)
    package = _package(args, cfg)
    arguments = _run_arguments(args, cfg, package)
    client = make_client(args.host, args.namespace)
    with reaching(args.host):
        job_id = schedule_run(client, package, arguments, schedule)
    print(json.dumps({"recurring_run_id": job_id, "cron": args.cron}))
    return 0


def _run_local(args, cfg) -> int:
    from .compile import build_pipeline, parse_cli_parameters, read_package
    from .local import run_local
    from .settings import load_settings

    parameters = {}
    if args.run_params:  # typed by the compiled package's parameter types
        import tempfile

        from kfp import compiler

        with tempfile.TemporaryDirectory() as tmp:
            compiler.Compiler().compile(build_pipeline(cfg, load_settings(args.settings, image=args.image)), f"{tmp}/p.yaml")
            parameters = parse_cli_parameters(args.run_params, read_package(f"{tmp}/p.yaml"))
    from ..config.loading import parse_override

    explicit = [".".join(parse_override(item)[0]) for item in args.overrides or []]
    outcome = run_local(args.work, cfg, parameters, s3=args.s3, base_model=args.base_model, smoke=args.smoke,
                        settings=args.settings, runner=args.runner, image=args.image, explicit=explicit)
    print(json.dumps({"gate_passed": outcome.gate_passed, "seconds": round(outcome.seconds, 1),
                      "pipeline_root": str(outcome.pipeline_root), "registry_uri": outcome.registry_uri}))
    if not outcome.gate_passed:
        print("t2iops pipeline: the evaluation gate failed: nothing was exported or published", file=sys.stderr)
        return 3
    return 0
