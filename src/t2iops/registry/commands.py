"""The parsers of ``t2iops registry list | show | compare | promote | rollback | retire | verify |
repair``; what the commands do is in :mod:`.actions`.

Where the registry is when ``--registry`` is not given is the caller's to say
(``default_location``): the CLI takes ``defaults.registry_uri`` of the pipeline settings, which
the registry cannot read itself without depending on the pipelines that publish to it.
"""
from __future__ import annotations

import argparse
from typing import Callable, Optional

from . import actions
from .versions import DEFAULT_MODEL_NAME

DefaultLocation = Callable[[Optional[str]], str]  # the --settings file (or None) -> the registry location

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


def location_arguments(parser: argparse.ArgumentParser, default_location: Optional[DefaultLocation]) -> None:
    """``--registry``, ``--model-name`` and ``--settings``: where the registry is, shared with
    ``t2iops retrain``. Without --registry the location is ``default_location(--settings)``."""
    parser.add_argument("--registry", default=None,
                        help="registry prefix, s3://bucket/prefix or a folder (default: `defaults.registry_uri` "
                             "of the pipeline settings)")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help=f"model name (default {DEFAULT_MODEL_NAME})")
    parser.add_argument("--settings", default=None, help="pipeline settings file (default: pipelines/settings.yaml)")
    parser.set_defaults(default_location=default_location)


def register(subparsers, common: argparse.ArgumentParser, default_location: Optional[DefaultLocation] = None) -> None:
    """Declare ``t2iops registry`` and its commands, in the order ``--help`` lists them."""
    reg = subparsers.add_parser("registry", help="list, compare, promote, roll back, retire or verify published models",
                                description=REGISTRY_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = reg.add_subparsers(dest="registry_command", metavar="<action>")
    sub.required = True
    location = argparse.ArgumentParser(add_help=False)
    location_arguments(location, default_location)
    location.add_argument("--json", action="store_true",
                          help="one JSON document on stdout, a failure too ({\"ok\": false, \"error\": ...})")
    parents = [common, location]
    _reading(sub, parents)
    _compare(sub, parents)
    _moves(sub, parents)
    _upkeep(sub, parents)


def _reading(sub, parents: list[argparse.ArgumentParser]) -> None:
    """``list`` and ``show``: what is published and what is champion."""
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


def _compare(sub, parents: list[argparse.ArgumentParser]) -> None:
    """``compare``: the decision rules applied to two versions; nothing moves."""
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


def _moves(sub, parents: list[argparse.ArgumentParser]) -> None:
    """``promote``, ``rollback`` and ``retire``: the commands that change what may be champion."""
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


def _upkeep(sub, parents: list[argparse.ArgumentParser]) -> None:
    """``verify`` and ``repair``: checking the registry, and bringing the pointer up to the history."""
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
