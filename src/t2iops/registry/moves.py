"""Moving the champion: promote a version, or roll back to the one it replaced.

A move verifies every file of the version it makes champion against its manifest (sizes and
sha256) before anything is written, refuses a retired version, repairs a pointer that is behind
or bad, then creates the next history record and writes the pointer last (:mod:`.pointer`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

from .. import storage
from ..errors import UsageError
from .integrity import VersionCheck, verify_version
from .pointer import actor, sync_pointer
from .records import MAX_ATTEMPTS, STACK_LIMIT, ChampionRecord, PromotionConflict, history_name, read_history
from .retired import refuse_if_retired, retired_versions
from .store import open_store
from .versions import check_name, model_root

ANY = object()  # "no expectation" for expect_champion


@dataclass
class Move:
    record: ChampionRecord  # the champion after the command
    moved: bool
    repaired: Optional[Any] = None  # the PointerCheck of a pointer the command rewrote first
    skipped: list[str] = field(default_factory=list)  # retired versions a rollback passed over
    check: Optional[VersionCheck] = None  # the verification of the version made champion

    def to_dict(self, command: str) -> dict[str, Any]:
        r = self.record
        out = {"command": command, "moved": self.moved, "champion": r.version, "generation": r.generation,
               "action": r.action if self.moved else "none", "previous": r.previous if self.moved else None,
               "uri": r.uri}
        if not self.moved:
            out["message"] = f"{r.version} is already the champion ({history_name(r.generation)}): no move recorded"
        if self.check is not None:
            out["verified"] = {"files": self.check.files, "bytes": self.check.bytes,
                               "manifest_sha256": self.check.manifest_sha256}
        if self.skipped:
            out["skipped_retired"] = self.skipped
        if self.repaired is not None:
            out["repaired_pointer"] = self.repaired.to_dict()
        return out


def move_champion(
    registry_uri: str, model_name: str, cfg: Any, action: str, version: Optional[str] = None,
    expect_champion: Any = ANY, reason: str = "", decision: Optional[dict[str, Any]] = None,
) -> tuple[ChampionRecord, bool]:
    """Promote ``version`` or roll back; returns (the champion record, whether anything moved).
    See :func:`champion_move`."""
    move = champion_move(registry_uri, model_name, cfg, action, version, expect_champion, reason, decision)
    return move.record, move.moved


def champion_move(
    registry_uri: str, model_name: str, cfg: Any, action: str, version: Optional[str] = None,
    expect_champion: Any = ANY, reason: str = "", decision: Optional[dict[str, Any]] = None,
) -> Move:
    """Promote ``version`` or roll back.

    ``expect_champion``: a version name or None (no champion yet): refuse with
    :class:`PromotionConflict` when the champion is something else (compare-and-swap). A version
    that fails verification is a :class:`RegistryIntegrityError` naming the file; nothing moves."""
    if action not in ("promote", "rollback"):
        raise UsageError(f"unknown champion action {action!r}")
    store, root = open_store(registry_uri, model_name, cfg), model_root(registry_uri, model_name)
    checks: dict[str, VersionCheck] = {}
    if action == "promote":
        check_name(version or "", "version")
        refuse_if_retired(store, version, "nothing was changed")
        checks[version] = verify_version(registry_uri, model_name, version, cfg, "nothing was changed")
    repaired = None
    for _ in range(MAX_ATTEMPTS):
        past = read_history(store, newest_only=True)
        head = past.head
        current = head.version if head else None
        if expect_champion is not ANY and current != expect_champion:
            raise PromotionConflict(
                f"the champion is {current or 'none'}, not {expect_champion or 'none'} as expected: "
                "someone else moved it; nothing was changed"
            )
        repaired = sync_pointer(store, root, cfg) or repaired  # a dead writer's move, or a bad pointer
        if action == "promote" and current == version:
            return Move(head, False, repaired)
        stack, skipped = _next_stack(store, root, action, version, head)
        target = stack[-1]
        if target not in checks:
            checks[target] = verify_version(registry_uri, model_name, target, cfg,
                                            f"the {action} would make it champion: nothing was changed")
        record = ChampionRecord(
            generation=past.newest + 1, action=action, version=target, uri=storage.join(root, target),
            previous=current, stack=stack, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), reason=reason,
            actor=actor(), decision=decision, manifest_sha256=checks[target].manifest_sha256,
        )
        if store.create(history_name(record.generation), record.to_bytes()):
            sync_pointer(store, root, cfg, floor=record.generation)
            return Move(record, True, repaired, skipped, checks[target])
    raise PromotionConflict(f"the champion history of {root} stayed contended for {MAX_ATTEMPTS} attempts; "
                            "nothing was changed: run the command again")


def _next_stack(store, root: str, action: str, version: Optional[str],
                head: Optional[ChampionRecord]) -> tuple[list[str], list[str]]:
    """The champion stack after the move, and the retired versions a rollback passed over."""
    stack = list(head.stack) if head else []
    if action == "promote":
        return (stack + [version])[-STACK_LIMIT:], []
    retired = retired_versions(store)
    below = stack[:-1]
    skipped = [v for v in below if v in retired]
    below = [v for v in below if v not in retired]
    if not below:
        held = "no champion" if not stack else "only " + stack[-1]
        gone = f" ({', '.join(skipped)} retired)" if skipped else ""
        raise UsageError(f"nothing to roll back to: the champion history of {root} has {held}{gone}")
    return below, skipped
