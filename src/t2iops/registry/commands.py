"""The parsers of ``t2iops registry list | show | compare | promote | rollback | retire | verify |
repair`` and ``t2iops retrain``; what the registry commands do is in :mod:`.actions`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .. import storage
from .actions import registry_uri
from .versions import DEFAULT_MODEL_NAME

REGISTRY_DESCRIPTION = """The model registry: the prefix (S3 or a folder) the pipeline's publish step writes.

  <registry>/<model>/<version>/              a published model (export, metrics.json, lineage.json)
  <registry>/<model>/champion.json           the champion pointer: a checked copy of the newest history record
  <registry>/<model>/champion-history/       one record per promotion or rollback (append-only)
  <registry>/<model>/retired/                one record per retired version (never champion again)
  <registry>/<model>/decisions/              recorded champion-vs-challenger decisions

The history is the truth: champion.json is checked against it (a pointer with bad JSON, a uri
outside the registry, an unknown version or a generation ahead of the history is named and never
served) and rewritten from it by the next promote/rollback or by `repair`. promote and rollback
verify every file of the version they make champion against its manifest (sizes, sha256) first.

The location: --registry (default: `defaults.registry_uri` of the pipeline settings); S3 endpoint
and credentials as for every stage (storage.endpoint_url, the standard AWS chain). The decision
rules are the `registry` section of params.yaml (-S registry.margin=0.02 ...).

--json: one JSON document on stdout, a failure too ({"ok": false, "error": ..., "exit_code": N}).

exit codes: 0 ok (compare: the challenger wins); 2 usage error, unknown version, or a registry
location that is missing, a file or empty; 3 compare: the challenger failed its evaluation gate;
4 compare: the champion is kept; 5 promote/rollback: the champion moved meanwhile
(--expect-champion did not match): nothing changed; 6 verification failed: a file that does not
match its manifest, a damaged manifest or history record (verify: any problem found)."""

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
    # Long: one declaration per registry command, read top to bottom like the --help it makes
    from . import actions

    reg = subparsers.add_parser("registry", help="list, compare, promote, roll back, retire or verify published models",
                                description=REGISTRY_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = reg.add_subparsers(dest="registry_command", metavar="<action>")
    sub.required = True
    location = argparse.ArgumentParser(add_help=False)
    _location(location)
    location.add_argument("--json", action="store_true",
                          help="one JSON document on stdout, a failure too ({\"ok\": false, \"error\": ...})")
    parents = [common, location]

    lst = sub.add_parser("list", parents=parents, help="published versions: the champion marked *, retired R",
                         description="Every published version with its gate and run. A version that cannot be read "
                         "(damaged manifest, tampered metrics) is listed as BROKEN with the reason and the others "
                         "still listed; the problems also go to stderr. The pointer's state is in --json.")
    lst.set_defaults(func=actions.list_versions)

    show = sub.add_parser("show", parents=parents, help="one version (or `champion`) as JSON",
                          description="`show champion` is what serving reads: the newest sound history record, at "
                          "the version's location in this registry (`uri`), once its manifest is the one the move "
                          "verified. champion.json is checked against the history and never served: its state and "
                          "any problem are in `pointer` and `warnings`.")
    show.add_argument("version", help="a version name, or `champion`")
    show.add_argument("--history", action="store_true", help="also the champion history (every promotion/rollback)")
    show.set_defaults(func=actions.show)

    comp = sub.add_parser(
        "compare", parents=parents, help="decide champion vs challenger; writes decision.json/.md",
        description="Apply the `registry` rules: the challenger must have passed its gate and beat the champion's "
        "primary metric by registry.margin, no other metric worse beyond registry.tolerance(s). With no champion, "
        "passing the gate is enough. Exit 0 the challenger wins, 4 the champion is kept, 3 the challenger failed "
        "its gate. Nothing is promoted (see `promote`). --json prints decision.json instead of the table.",
    )
    comp.add_argument("challenger", help="version to judge")
    comp.add_argument("--champion", default=None, help="version to judge against (default: the current champion)")
    comp.add_argument("--out", default="decision", help="folder for decision.json and decision.md (default decision)")
    comp.add_argument("--record", action="store_true", help="also store the decision under <model>/decisions/")
    comp.set_defaults(func=actions.compare)

    expect = argparse.ArgumentParser(add_help=False)
    expect.add_argument("--expect-champion", default=None, metavar="VERSION|none",
                        help="compare-and-swap: act only while the champion is VERSION (`none`: no champion yet); "
                             "else exit 5 and change nothing")
    expect.add_argument("--reason", default="", help="why (kept in the history record)")

    prom = sub.add_parser("promote", parents=[*parents, expect], help="make a published version the champion",
                          description="Verify every file of VERSION against its manifest (sizes, sha256; exit 6 naming "
                          "the file, nothing moved), refuse a retired version, rewrite a pointer that is behind or "
                          "bad from the history, then record the move and write the pointer. Prints one JSON line: "
                          "`moved` false (action `none`) when VERSION already is the champion.")
    prom.add_argument("version", help="a published version")
    prom.add_argument("--decision", default=None, help="a decision.json (from compare) to keep in the history record")
    prom.set_defaults(func=actions.promote)

    roll = sub.add_parser("rollback", parents=[*parents, expect],
                          help="make the previous champion the champion again",
                          description="Pop the champion: the one it replaced becomes champion again (a rollback is "
                          "itself a history record; two rollbacks go two champions back). Retired versions are passed "
                          "over; the version it lands on is verified like a promoted one.")
    roll.set_defaults(func=actions.rollback)

    ret = sub.add_parser("retire", parents=parents, help="never let a version be champion again (it is kept)",
                         description="Record <model>/retired/VERSION.json (once; it is never removed): promote "
                         "refuses the version, rollback passes over it, the version and its history stay for "
                         "lineage. The champion cannot be retired: promote another version or roll back first.")
    ret.add_argument("version", help="a published version")
    ret.add_argument("--reason", default="", help="why (kept in the retirement record)")
    ret.set_defaults(func=actions.retire)

    ver = sub.add_parser("verify", parents=parents, help="check the pointer, the history and versions' files",
                         description="Check champion.json against the history, the history's records, and every file "
                         "of the champion (or of VERSION..., or --all) against its manifest. Changes nothing; exit 0 "
                         "when all is sound, 6 naming each problem.")
    ver.add_argument("versions", nargs="*", metavar="VERSION", help="versions to verify (default: the champion)")
    ver.add_argument("--all", action="store_true", help="verify every published version")
    ver.set_defaults(func=actions.verify)

    rep = sub.add_parser("repair", parents=parents, help="rewrite champion.json from the history",
                         description="Rewrite champion.json as the copy of the newest sound history record when it "
                         "is behind, missing or bad (and remove it when there is no history); prints what it found "
                         "and whether it changed anything. The history itself is never rewritten: damaged records "
                         "are named and passed over.")
    rep.set_defaults(func=actions.repair)


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
def record_decision(registry: str, model_name: str, verdict, local_dir: Path, cfg: Any) -> str:
    """Keep decision.json/.md under ``<model>/decisions/<UTC time>-<challenger>/`` (manifest last)."""
    from .versions import model_root

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = storage.join(model_root(registry, model_name), "decisions", f"{stamp}-{verdict.challenger}")
    with storage.publish(dest, cfg, extra={"stage": "registry-decision"}) as staging:
        for name in ("decision.json", "decision.md"):
            (staging / name).write_bytes((Path(local_dir) / name).read_bytes())
    return dest


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
