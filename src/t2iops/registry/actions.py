"""What each ``t2iops registry`` command does (the parsers are in :mod:`.commands`).

Every command first checks the registry location (one line and exit 2 when it is missing, a
file or holds no published version). With ``--json`` the output is one JSON document, and so is
a failure: ``{"ok": false, "error": ..., "exit_code": N}`` on stdout beside the usual line on
stderr, so a script reading stdout always gets JSON.
"""
from __future__ import annotations

import functools
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from ..errors import T2IError, UsageError
from ..redact import redact_text


def registry_uri(args) -> str:
    """``--registry``, else the default location the commands were declared with (the CLI's is
    ``defaults.registry_uri`` of the pipeline settings, read from ``--settings``). The registry
    does not read the pipeline settings itself: it sits below the pipelines that publish to it."""
    if args.registry:
        return args.registry
    default_location = getattr(args, "default_location", None)
    if default_location is None:
        raise UsageError("no registry location: give --registry")
    return default_location(args.settings)


def _emit(args, document: dict[str, Any], text: str = "") -> None:
    """JSON with --json (or for commands whose output is JSON), else ``text``."""
    if getattr(args, "json", False) or not text:
        print(json.dumps(document, indent=2 if getattr(args, "json", False) else None, default=str))
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _warn(args, lines: list[str]) -> None:
    for line in lines:
        print(f"t2iops registry {args.registry_command}: warning: {redact_text(line)}", file=sys.stderr)


def handler(func: Callable) -> Callable:
    """Check the location first; with --json, a failure is a JSON document on stdout too."""

    @functools.wraps(func)
    def run(args, cfg) -> int:
        from .versions import check_location

        try:
            registry = registry_uri(args)
            versions = check_location(registry, args.model_name, cfg)
            return func(args, cfg, registry, versions)
        except T2IError as exc:
            if getattr(args, "json", False):
                print(json.dumps({"ok": False, "command": args.registry_command, "error": redact_text(str(exc)),
                                  "exit_code": exc.exit_code}))
            raise

    return run


@handler
def list_versions(args, cfg, registry: str, versions: list[str]) -> int:
    from .pointer import check_pointer
    from .retired import retired_versions
    from .store import open_store
    from .versions import read_version

    pointer = check_pointer(registry, args.model_name, cfg)
    champion = pointer.head.version if pointer.head else None
    retired = retired_versions(open_store(registry, args.model_name, cfg))
    rows, problems = [], []
    for version in versions:
        try:
            row = read_version(registry, args.model_name, version, cfg).summary()
        except (T2IError, OSError) as exc:  # one damaged version must not hide the others
            row = {"version": version, "error": str(exc)}
            problems.append(f"version {version!r} skipped: {exc}")
        rows.append({**row, "champion": version == champion, "retired": version in retired})
    problems += [p for p in pointer.problems if pointer.state == "bad"] + pointer.history_problems
    _warn(args, problems)
    document = {"ok": not problems, "registry": registry, "model_name": args.model_name, "champion": champion,
                "pointer": pointer.to_dict(), "versions": rows, "problems": problems}
    lines = [f"{'':1} {'version':<34} {'published':<21} {'gate':<6} run"]
    for row in rows:
        mark = "*" if row["champion"] else "R" if row["retired"] else " "
        if "error" in row:
            lines.append(f"{mark} {row['version']:<34} BROKEN: {row['error']}")
            continue
        gate = {True: "passed", False: "FAILED", None: "-"}[row["gate_passed"]]
        lines.append(f"{mark} {row['version']:<34} {row['published']:<21} {gate:<6} {row['run_id'] or '-'}")
    lines.append("(* champion, R retired)")
    _emit(args, document, "\n".join(lines))
    return 0


@handler
def show(args, cfg, registry: str, versions: list[str]) -> int:
    from .pointer import champion, current_champion
    from .records import read_history
    from .retired import retirement
    from .store import open_store
    from .versions import read_version

    name, out = args.version, {}
    if name == "champion":
        served = champion(registry, args.model_name, cfg)
        name = served.record.version
        out = {"generation": served.record.generation, "pointer": served.pointer.to_dict(),
               "warnings": served.warnings}
        _warn(args, served.warnings)
    info = read_version(registry, args.model_name, name, cfg)
    head = current_champion(registry, args.model_name, cfg)
    store = open_store(registry, args.model_name, cfg)
    out = {**info.summary(), "champion": bool(head and head.version == name),
           "retired": retirement(store, name), **out, "metrics": info.metrics, "lineage": info.lineage}
    if args.history:
        past = read_history(store)
        out["history"] = [asdict(r) for r in past.records]
        out["history_problems"] = past.problems
    _emit(args, out)
    return 0


@handler
def compare(args, cfg, registry: str, versions: list[str]) -> int:
    from . import decision as decisions
    from .pointer import current_champion
    from .versions import read_version

    challenger = read_version(registry, args.model_name, args.challenger, cfg)
    champion_name = args.champion
    if champion_name is None:
        head = current_champion(registry, args.model_name, cfg)
        champion_name = head.version if head else None
    champion = read_version(registry, args.model_name, champion_name, cfg) if champion_name else None
    verdict = decisions.decide(challenger, champion, cfg.registry, cfg.evaluate.condition_kind)
    decisions.write_decision(verdict, args.out)
    if args.record:
        decisions.record_decision(registry, args.model_name, verdict, Path(args.out), cfg)
    _emit(args, verdict.to_dict(), decisions.render_markdown(verdict))
    return {decisions.PROMOTE: 0, decisions.KEEP: 4, decisions.GATE_FAILED: 3}[verdict.outcome]


def _expected(args) -> Any:
    from .moves import ANY

    if args.expect_champion is None:
        return ANY
    return None if args.expect_champion.lower() == "none" else args.expect_champion


@handler
def promote(args, cfg, registry: str, versions: list[str]) -> int:
    from .moves import champion_move
    from .versions import RegistryError

    summary = None
    if args.decision:
        try:
            summary = json.loads(Path(args.decision).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"--decision {args.decision}: not a readable decision.json ({exc})") from None
        if not isinstance(summary, dict) or summary.get("challenger") != args.version:
            judged = summary.get("challenger") if isinstance(summary, dict) else None
            raise RegistryError(f"--decision {args.decision} judges {judged!r}, not {args.version!r}")
    move = champion_move(registry, args.model_name, cfg, "promote", args.version,
                         expect_champion=_expected(args), reason=args.reason, decision=summary)
    _emit(args, move.to_dict("promote"))
    return 0


@handler
def rollback(args, cfg, registry: str, versions: list[str]) -> int:
    from .moves import champion_move

    move = champion_move(registry, args.model_name, cfg, "rollback", expect_champion=_expected(args),
                         reason=args.reason)
    _emit(args, move.to_dict("rollback"))
    return 0


@handler
def retire(args, cfg, registry: str, versions: list[str]) -> int:
    from .pointer import actor, current_champion
    from .retired import retire as retire_version
    from .store import open_store
    from .versions import RegistryError, check_name, model_root

    if check_name(args.version, "version") not in versions:
        raise RegistryError(f"version {args.version!r} is not published in {model_root(registry, args.model_name)}")
    head = current_champion(registry, args.model_name, cfg)
    record, changed = retire_version(open_store(registry, args.model_name, cfg), registry, args.model_name,
                                     args.version, head.version if head else None, args.reason, actor())
    _emit(args, {"command": "retire", "version": args.version, "retired": True, "changed": changed, "record": record})
    return 0


@handler
def repair(args, cfg, registry: str, versions: list[str]) -> int:
    from .pointer import repair_pointer

    done = repair_pointer(registry, args.model_name, cfg)
    document = {"command": "repair", **done.to_dict()}
    if done.before.history_problems:
        document["history_problems"] = done.before.history_problems  # passed over, not rewritten
    _warn(args, done.before.problems if done.changed else [])
    _emit(args, document)
    return 0


@handler
def verify(args, cfg, registry: str, versions: list[str]) -> int:
    from .integrity import check_version
    from .pointer import champion, check_pointer
    from .records import read_history
    from .store import open_store
    from .versions import RegistryError

    pointer = check_pointer(registry, args.model_name, cfg)
    problems = [] if pointer.state in ("ok", "none") else list(pointer.problems)
    problems += read_history(open_store(registry, args.model_name, cfg)).problems  # every record, not only the newest
    champion_name = None
    try:
        served = champion(registry, args.model_name, cfg)
        champion_name = served.record.version
        problems += [w for w in served.warnings if w not in problems]
    except RegistryError as exc:
        if pointer.head is not None:
            problems.append(str(exc))
    names = versions if args.all else args.versions or ([champion_name] if champion_name else [])
    checks = [check_version(registry, args.model_name, name, cfg) for name in names]
    problems += [f"version {c.version!r}: {p}" for c in checks for p in c.problems]
    document = {"ok": not problems, "registry": registry, "model_name": args.model_name, "champion": champion_name,
                "pointer": pointer.to_dict(), "versions": [c.to_dict() for c in checks], "problems": problems}
    text = [f"pointer: {pointer.state}" + (f" (generation {pointer.generation})" if pointer.generation else "")]
    text += [f"version {c.version}: {'ok' if c.ok else 'FAILED'} ({c.files} files, {c.bytes} bytes)" for c in checks]
    text += [f"PROBLEM: {p}" for p in problems]
    if problems:
        text.append("(`t2iops registry repair` rewrites a pointer that is behind or bad; a damaged version stays "
                    "damaged: retire it or publish it again under a new name)")
    _emit(args, document, "\n".join(text))
    return 6 if problems else 0
