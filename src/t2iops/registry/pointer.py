"""The champion pointer: which published version serving uses, moved atomically, history kept.

Two kinds of object under ``<registry>/<model_name>/``:

* ``champion-history/<generation>.json`` (:mod:`.records`): one record per move (promote or
  rollback), never rewritten. A move claims generation *g + 1* by **creating** that record (a
  conditional write, :mod:`.store`). Of two concurrent moves exactly one claims a generation; the
  other re-reads and retries on top of it. Each record carries the champion *stack* (promote
  pushes, rollback pops), so a rollback needs no other state.
* ``champion.json``: a copy of the newest sound history record, its ``uri`` derived from the
  registry and the version, written **last**, which simple readers read. It is replaced only
  with ``If-Match: <ETag it read>`` (S3) or under ``flock`` (folder).

The pointer is derived from the history and checked against it (:func:`check_pointer`): it must
be the copy of the history record of its generation, no newer than the history, with the uri of
its version in this registry. A pointer one or more moves behind (a writer died between its two
writes) is *behind*: served from the history, brought forward by the next move. Any other
disagreement (bad JSON, a uri elsewhere, an unknown version, a generation ahead of the history)
makes it *bad*: it is named, never served (:func:`champion` serves the history), and the next
move or :func:`repair_pointer` rewrites it from the history.

Every conditional write is read back and compared. On a store that honours the headers (AWS S3,
moto, recent MinIO) that is a formality; on one that silently ignores them it catches a writer
whose record was overwritten before it read back, which narrows the race but cannot close it: such
a store needs one promoting process at a time (the retrain workflow's concurrency group).
"""
from __future__ import annotations

import contextlib
import getpass
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Optional

from .. import storage
from ..hashing import bytes_digest
from .records import (HISTORY, MAX_ATTEMPTS, POINTER, STACK_LIMIT, ChampionRecord, PromotionConflict, history_name,
                      read_history, read_record, record_location_problem)
from .store import open_store
from .versions import RegistryError, RegistryIntegrityError, model_root

__all__ = ["POINTER", "HISTORY", "STACK_LIMIT", "ChampionRecord", "PromotionConflict", "PointerCheck", "Served",
           "history", "current_champion", "read_pointer", "check_pointer", "champion", "repair_pointer",
           "sync_pointer", "actor"]

_store = open_store  # the conditional store of one model
_history_name = history_name


# ---------------------------------------------------------------------------------------
# Reading the history
def history(registry_uri: str, model_name: str, cfg: Any = None) -> list[ChampionRecord]:
    """Every move of the champion, oldest first; a damaged record is an error naming it."""
    found = read_history(_store(registry_uri, model_name, cfg))
    if found.problems:
        raise RegistryIntegrityError(found.problems[0])
    return found.records


def current_champion(registry_uri: str, model_name: str, cfg: Any = None) -> Optional[ChampionRecord]:
    """The newest sound history record: the champion, even when a writer died before the pointer."""
    return read_history(_store(registry_uri, model_name, cfg), newest_only=True).head


# ---------------------------------------------------------------------------------------
# Checking the pointer against the history
@dataclass
class PointerCheck:
    """What ``champion.json`` is, compared with the history.

    ``state``: ``ok`` (the copy of the newest record), ``none`` (no champion yet, no pointer),
    ``missing`` (a champion, no pointer), ``behind`` (a sound copy of an older record), ``bad``."""

    state: str
    problems: list[str] = field(default_factory=list)
    generation: Optional[int] = None  # the pointer's, when it could be read
    head: Optional[ChampionRecord] = None
    history_problems: list[str] = field(default_factory=list)
    tag: Optional[str] = None  # ETag / content hash of the pointer read, for a conditional rewrite
    record: Optional[ChampionRecord] = None  # the pointer as parsed (ok / behind only)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "problems": self.problems, "generation": self.generation,
                "history_generation": self.head.generation if self.head else None,
                "history_problems": self.history_problems}


def _inspect(store, root: str, cfg: Any) -> PointerCheck:
    # The pointer first, the history after: a pointer written by a sound move then never looks
    # newer than the history this reader sees.
    try:
        found = store.read(POINTER)
    except RegistryError as exc:
        found, unreadable = None, str(exc)
    else:
        unreadable = None
    past = read_history(store, newest_only=True)
    check = PointerCheck("none", head=past.head, history_problems=past.problems, tag=found[1] if found else None)
    if unreadable:
        check.state, check.problems = "bad", [unreadable]
    elif found is None:
        if past.head is not None:
            check.state = "missing"
            check.problems = [f"{POINTER} is missing; the history's newest record is generation {past.head.generation}"]
    else:
        _compare_with_history(check, found[0], store, root, cfg)
    return check


def _compare_with_history(check: PointerCheck, data: bytes, store, root: str, cfg: Any) -> None:
    head = check.head
    try:
        pointer = ChampionRecord.parse(data, POINTER)
    except RegistryError as exc:
        check.state, check.problems = "bad", [str(exc)]
        return
    check.generation = pointer.generation
    problems = []
    if head is None or pointer.generation > head.generation:
        newest = f"its newest record is generation {head.generation}" if head else "it is empty"
        problems.append(f"{POINTER}: generation {pointer.generation} is ahead of the champion history ({newest})")
    location = record_location_problem(pointer, root, POINTER)
    if location:
        problems.append(location + ": it points outside what the registry serves")
    if (head is None or pointer.version != head.version) and not _published(root, pointer.version, cfg):
        problems.append(f"{POINTER} names version {pointer.version!r}, which is not published in {root}")
    if head is not None and pointer.generation <= head.generation:
        try:
            recorded = head if pointer.generation == head.generation else read_record(store, pointer.generation)
        except RegistryError as exc:
            problems.append(f"{POINTER} names generation {pointer.generation}: {exc}")
        else:
            if not pointer.same_move(recorded):
                differ = sorted(k for k, v in vars(pointer).items() if k != "uri" and v != getattr(recorded, k))
                problems.append(f"{POINTER} differs from {history_name(pointer.generation)} in: {', '.join(differ)}")
    if problems:
        check.state, check.problems = "bad", problems
    elif pointer.generation < head.generation:
        check.state, check.record = "behind", pointer
        check.problems = [f"{POINTER} is behind the history (generation {pointer.generation} < {head.generation})"]
    else:
        check.state, check.record = "ok", pointer


def _published(root: str, version: str, cfg: Any) -> bool:
    try:
        return storage.exists(storage.join(root, version, storage.MANIFEST), cfg)
    except NotADirectoryError:
        return False


def check_pointer(registry_uri: str, model_name: str, cfg: Any = None) -> PointerCheck:
    """``champion.json`` checked against the history (see the module docstring); changes nothing."""
    return _inspect(_store(registry_uri, model_name, cfg), model_root(registry_uri, model_name), cfg)


def read_pointer(registry_uri: str, model_name: str, cfg: Any = None) -> Optional[ChampionRecord]:
    """``champion.json`` as written, once checked: None when there is none, the record when it
    agrees with the history (also when behind it), :class:`RegistryIntegrityError` otherwise."""
    check = check_pointer(registry_uri, model_name, cfg)
    if check.state == "bad":
        raise RegistryIntegrityError(f"{'; '.join(check.problems)}: not served (`t2iops registry repair` rewrites it)")
    return check.record


# ---------------------------------------------------------------------------------------
# What serving reads
@dataclass
class Served:
    """The champion as serving should load it: from the history, at its derived location."""

    record: ChampionRecord
    uri: str
    pointer: PointerCheck
    warnings: list[str]


def champion(registry_uri: str, model_name: str, cfg: Any = None) -> Served:
    """The champion to serve. The pointer is checked but never served: the newest sound history
    record is, at ``<registry>/<model>/<version>``, once its version is published and its
    manifest is the one the move verified (RegistryIntegrityError otherwise). What is wrong with
    the pointer or the history is in ``pointer`` and ``warnings``."""
    root = model_root(registry_uri, model_name)
    check = check_pointer(registry_uri, model_name, cfg)
    head = check.head
    if head is None:
        damaged = f" (damaged: {'; '.join(check.history_problems)})" if check.history_problems else ""
        raise RegistryError(f"{root} has no champion yet{damaged}")
    uri = storage.join(root, head.version)
    try:
        manifest = storage.read_bytes(storage.join(uri, storage.MANIFEST), cfg)
    except (FileNotFoundError, NotADirectoryError):
        raise RegistryIntegrityError(f"the champion {head.version!r} ({history_name(head.generation)}) is not "
                                     f"published at {uri}: roll back or promote another version") from None
    digest = bytes_digest(manifest)
    if head.manifest_sha256 and digest != head.manifest_sha256:
        raise RegistryIntegrityError(
            f"{storage.join(uri, storage.MANIFEST)} changed since {history_name(head.generation)} verified it "
            f"(sha256 {digest}, recorded {head.manifest_sha256}): refusing to serve it")
    warnings = list(check.problems) + list(check.history_problems)
    location = record_location_problem(head, root, history_name(head.generation))
    if location:
        warnings.append(location + f"; served from {uri}")
    return Served(head, uri, check, warnings)


# ---------------------------------------------------------------------------------------
# Bringing the pointer up to the history
def sync_pointer(store, root: str, cfg: Any, floor: Optional[int] = None) -> Optional[PointerCheck]:
    """Make the pointer the copy of the newest sound record unless it already is a sound copy
    of generation ``floor`` or later (default: the newest). Returns the check of the pointer it
    replaced, None when it changed nothing."""
    first = None
    for _ in range(MAX_ATTEMPTS):
        check = _inspect(store, root, cfg)
        first = first or check
        wanted = floor if floor is not None else (check.head.generation if check.head else 0)
        if check.state == "none" or (check.state in ("ok", "behind") and check.generation >= wanted):
            return None if check is first else first
        if check.head is None:  # a pointer with no history under it: nothing may be served
            if store.remove(POINTER, check.tag):
                return first
            continue
        if store.replace(POINTER, check.head.located(root).to_bytes(), check.tag):
            return first
    raise PromotionConflict(f"{POINTER} stayed contended for {MAX_ATTEMPTS} attempts; run the command again")


@dataclass
class Repair:
    before: PointerCheck
    head: Optional[ChampionRecord]
    changed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "before": self.before.to_dict(),
                "champion": self.head.version if self.head else None,
                "generation": self.head.generation if self.head else None}


def repair_pointer(registry_uri: str, model_name: str, cfg: Any = None) -> Repair:
    """Rewrite the pointer from the newest sound history record when it is not its copy (a
    writer died between its two writes, or the pointer is bad); says what it found."""
    store, root = _store(registry_uri, model_name, cfg), model_root(registry_uri, model_name)
    before = _inspect(store, root, cfg)
    replaced = sync_pointer(store, root, cfg)
    after = read_history(store, newest_only=True).head
    return Repair(replaced or before, after, replaced is not None)


def actor() -> str:
    who = os.environ.get("GITHUB_ACTOR") or os.environ.get("USER") or ""
    with contextlib.suppress(Exception):
        who = who or getpass.getuser()
    return f"{who}@{socket.gethostname()}"


