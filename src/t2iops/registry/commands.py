"""``t2iops registry list | show | compare | promote | rollback`` and ``t2iops retrain``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .. import storage
from .versions import DEFAULT_MODEL_NAME

REGISTRY_DESCRIPTION = """The model registry: the prefix (S3 or a folder) the pipeline's publish step writes.

  <registry>/<model>/<version>/              a published model (export, metrics.json, lineage.json)
  <registry>/<model>/champion.json           the champion pointer serving reads
  <registry>/<model>/champion-history/       one record per promotion or rollback (append-only)
  <registry>/<model>/decisions/              recorded champion-vs-challenger decisions

The location: --registry (default: `defaults.registry_uri` of the pipeline settings); S3 endpoint
and credentials as for every stage (storage.endpoint_url, the standard AWS chain). The decision
rules are the `registry` section of params.yaml (-S registry.margin=0.02 ...).

exit codes: 0 ok (compare: the challenger wins); 2 usage error or unknown version;
3 compare: the challenger failed its evaluation gate; 4 compare: the champion is kept;
5 promote/rollback: the champion moved meanwhile (--expect-champion did not match): nothing changed."""

RETRAIN_DESCRIPTION = """Retrain and decide: compile the pipeline -> submit it (the run's parameters carry the
resolved params, the data revision and model_version <UTC yyyymmdd-HHMMSS>-<git sha7>; the run
name carries the git SHA) -> wait -> compare the published challenger with the champion
(`registry` section of params.yaml) -> promote it or keep the champion.

--local runs the identical flow through kfp.local on this machine (as `t2iops pipeline run-local`),
--dry-run compares but never promotes (pull requests). Written to --out: decision.json,
decision.md (append it to $GITHUB_STEP_SUMMARY), retrain.json and the compiled pipeline.yaml;
the last stdout line is retrain.json on one line."""


def _location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", default=None,
                        help="registry prefix, s3://bucket/prefix or a folder (default: `defaults.registry_uri` "
                             "of the pipeline settings)")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help=f"model name (default {DEFAULT_MODEL_NAME})")
    parser.add_argument("--settings", default=None, help="pipeline settings file (default: pipelines/settings.yaml)")


def register(subparsers, common: argparse.ArgumentParser) -> None:
    _register_registry(subparsers, common)
    _register_retrain(subparsers, common)


def _register_registry(subparsers, common: argparse.ArgumentParser) -> None:
    reg = subparsers.add_parser("registry", help="list, compare, promote or roll back published models",
                                description=REGISTRY_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = reg.add_subparsers(dest="registry_command", metavar="<action>")
    sub.required = True
    location = argparse.ArgumentParser(add_help=False)
    _location(location)

    lst = sub.add_parser("list", parents=[common, location], help="published versions, the champion marked *")
    lst.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    lst.set_defaults(func=_list)

    show = sub.add_parser("show", parents=[common, location], help="one version (or `champion`) as JSON")
    show.add_argument("version", help="a version name, or `champion`")
    show.add_argument("--history", action="store_true", help="also the champion history (every promotion/rollback)")
    show.set_defaults(func=_show)

    comp = sub.add_parser(
        "compare", parents=[common, location], help="decide champion vs challenger; writes decision.json/.md",
        description="Apply the `registry` rules: the challenger must have passed its gate and beat the champion's "
        "primary metric by registry.margin, no other metric worse beyond registry.tolerance(s). With no champion, "
        "passing the gate is enough. Exit 0 the challenger wins, 4 the champion is kept, 3 the challenger failed "
        "its gate. Nothing is promoted (see `promote`).",
    )
    comp.add_argument("challenger", help="version to judge")
    comp.add_argument("--champion", default=None, help="version to judge against (default: the current champion)")
    comp.add_argument("--out", default="decision", help="folder for decision.json and decision.md (default decision)")
    comp.add_argument("--record", action="store_true", help="also store the decision under <model>/decisions/")
    comp.set_defaults(func=_compare)

    expect = argparse.ArgumentParser(add_help=False)
    expect.add_argument("--expect-champion", default=None, metavar="VERSION|none",
                        help="compare-and-swap: act only while the champion is VERSION (`none`: no champion yet); "
                             "else exit 5 and change nothing")
    expect.add_argument("--reason", default="", help="why (kept in the history record)")

    prom = sub.add_parser("promote", parents=[common, location, expect], help="make a published version the champion")
    prom.add_argument("version", help="a published version")
    prom.add_argument("--decision", default=None, help="a decision.json (from compare) to keep in the history record")
    prom.set_defaults(func=_promote)

    roll = sub.add_parser("rollback", parents=[common, location, expect],
                          help="make the previous champion the champion again",
                          description="Pop the champion: the one it replaced becomes champion again (a rollback is "
                          "itself a history record; two rollbacks go two champions back).")
    roll.set_defaults(func=_rollback)


def _register_retrain(subparsers, common: argparse.ArgumentParser) -> None:
    from .retrain import EXIT_CODES

    ret = subparsers.add_parser("retrain", parents=[common], help="run the pipeline, compare, promote or keep",
                                description=RETRAIN_DESCRIPTION, epilog=EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _location(ret)
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


# ---------------------------------------------------------------------------------------
def registry_uri(args) -> str:
    if args.registry:
        return args.registry
    from ..pipelines.settings import load_settings

    return load_settings(args.settings).defaults.registry_uri


def record_decision(registry: str, model_name: str, verdict, local_dir: Path, cfg: Any) -> str:
    """Keep decision.json/.md under ``<model>/decisions/<UTC time>-<challenger>/`` (manifest last)."""
    from .versions import model_root

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = storage.join(model_root(registry, model_name), "decisions", f"{stamp}-{verdict.challenger}")
    with storage.publish(dest, cfg, extra={"stage": "registry-decision"}) as staging:
        for name in ("decision.json", "decision.md"):
            (staging / name).write_bytes((Path(local_dir) / name).read_bytes())
    return dest


def _list(args, cfg) -> int:
    from .pointer import current_champion
    from .versions import list_versions, read_version

    registry = registry_uri(args)
    head = current_champion(registry, args.model_name, cfg)
    rows = [read_version(registry, args.model_name, v, cfg).summary() for v in list_versions(registry, args.model_name, cfg)]
    for row in rows:
        row["champion"] = bool(head and head.version == row["version"])
    if args.json:
        print(json.dumps({"registry": registry, "model_name": args.model_name,
                          "champion": head.version if head else None, "versions": rows}, indent=2))
        return 0
    print(f"{'':1} {'version':<34} {'published':<21} {'gate':<6} run")
    for row in rows:
        gate = {True: "passed", False: "FAILED", None: "-"}[row["gate_passed"]]
        print(f"{'*' if row['champion'] else ' '} {row['version']:<34} {row['published']:<21} {gate:<6} {row['run_id'] or '-'}")
    if not rows:
        print(f"(no published versions under {storage.join(registry, args.model_name)})")
    return 0


def _show(args, cfg) -> int:
    from dataclasses import asdict

    from .pointer import current_champion, history, read_pointer
    from .versions import RegistryError, read_version

    registry = registry_uri(args)
    head = current_champion(registry, args.model_name, cfg)
    name = args.version
    if name == "champion":
        if head is None:
            raise RegistryError(f"{storage.join(registry, args.model_name)} has no champion yet")
        name = head.version
    info = read_version(registry, args.model_name, name, cfg)
    out: dict[str, Any] = {**info.summary(), "champion": bool(head and head.version == name),
                           "metrics": info.metrics, "lineage": info.lineage}
    pointer_record = read_pointer(registry, args.model_name, cfg)
    if head and (pointer_record is None or pointer_record.generation < head.generation):
        out["warning"] = (f"champion.json is behind the history (generation "
                          f"{pointer_record.generation if pointer_record else 0} < {head.generation}); "
                          "the next promote or rollback repairs it")
    if args.history:
        out["history"] = [asdict(r) for r in history(registry, args.model_name, cfg)]
    print(json.dumps(out, indent=2, default=str))
    return 0


def _compare(args, cfg) -> int:
    from . import decision as decisions
    from .pointer import current_champion
    from .versions import read_version

    registry = registry_uri(args)
    challenger = read_version(registry, args.model_name, args.challenger, cfg)
    champion_name = args.champion
    if champion_name is None:
        head = current_champion(registry, args.model_name, cfg)
        champion_name = head.version if head else None
    champion = read_version(registry, args.model_name, champion_name, cfg) if champion_name else None
    verdict = decisions.decide(challenger, champion, cfg.registry, cfg.evaluate.condition_kind)
    decisions.write_decision(verdict, args.out)
    if args.record:
        record_decision(registry, args.model_name, verdict, Path(args.out), cfg)
    sys.stdout.write(decisions.render_markdown(verdict))
    return {decisions.PROMOTE: 0, decisions.KEEP: 4, decisions.GATE_FAILED: 3}[verdict.outcome]


def _expected(args) -> Any:
    from .pointer import ANY

    if args.expect_champion is None:
        return ANY
    return None if args.expect_champion.lower() == "none" else args.expect_champion


def _print_move(record, moved: bool) -> None:
    print(json.dumps({"champion": record.version, "generation": record.generation, "action": record.action,
                      "previous": record.previous, "moved": moved, "uri": record.uri}))


def _promote(args, cfg) -> int:
    from .pointer import move_champion
    from .versions import RegistryError

    summary = None
    if args.decision:
        try:
            summary = json.loads(Path(args.decision).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"--decision {args.decision}: not a readable decision.json ({exc})") from None
        if summary.get("challenger") != args.version:
            raise RegistryError(f"--decision {args.decision} judges {summary.get('challenger')!r}, not {args.version!r}")
    record, moved = move_champion(registry_uri(args), args.model_name, cfg, "promote", args.version,
                                  expect_champion=_expected(args), reason=args.reason, decision=summary)
    _print_move(record, moved)
    return 0


def _rollback(args, cfg) -> int:
    from .pointer import move_champion

    record, moved = move_champion(registry_uri(args), args.model_name, cfg, "rollback",
                                  expect_champion=_expected(args), reason=args.reason)
    _print_move(record, moved)
    return 0


def _retrain(args, cfg) -> int:
    from .retrain import RetrainRequest, print_result, retrain

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
