"""The champion pointer: which published version serving uses, moved atomically, history kept.

Two kinds of object under ``<registry>/<model_name>/``:

* ``champion-history/<generation>.json``: one record per move (promote or rollback), never
  rewritten. A move claims generation *g + 1* by **creating** that record: on S3 a
  ``PutObject`` with ``If-None-Match: *`` (S3 refuses it with 412 when the key exists), in a
  folder a hard link of a complete temporary file (``link`` fails when the name exists). Of two
  concurrent moves exactly one claims a generation; the other re-reads and retries on top of it.
  Each record carries the champion *stack* (promote pushes, rollback pops), so a rollback needs
  no other state.
* ``champion.json``: a copy of the newest record, written **last**, which serving reads. It only
  ever moves forward: it is replaced with ``If-Match: <ETag it read>`` (S3) or under ``flock`` +
  ``os.replace`` (folder) and never with an older generation. A writer that dies between the two
  writes leaves the pointer one generation behind the history; the next move (or
  :func:`repair_pointer`) brings it forward.

Every conditional write is read back and compared. On a store that honours the headers (AWS S3,
moto, recent MinIO) that is a formality; on one that silently ignores them it catches a writer
whose record was overwritten before it read back, which narrows the race but cannot close it: such
a store needs one promoting process at a time (the retrain workflow's concurrency group).
"""
from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from .. import storage
from ..errors import T2IError, UsageError
from .versions import NAME_PATTERN, RegistryError, check_name, model_root

POINTER = "champion.json"
HISTORY = "champion-history"
MAX_ATTEMPTS = 20
STACK_LIMIT = 100  # rollbacks reach this many champions back
ANY = object()  # "no expectation" for expect_champion


class PromotionConflict(T2IError):
    """The champion moved while we decided (or stayed contended): nothing was changed."""

    exit_code = 5


@dataclass
class ChampionRecord:
    generation: int
    action: str  # promote | rollback
    version: str
    uri: str
    previous: Optional[str]
    stack: list[str]
    time: str
    reason: str = ""
    actor: str = ""
    decision: Optional[dict[str, Any]] = None
    writer: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, where: str) -> "ChampionRecord":
        try:
            raw = json.loads(data)
            record = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise RegistryError(f"{where} is not a champion record: {exc}") from None
        names = [record.version, *record.stack, *([record.previous] if record.previous else [])]
        if not isinstance(record.generation, int) or record.generation < 1 or not all(
            isinstance(n, str) and NAME_PATTERN.match(n) for n in names
        ):
            raise RegistryError(f"{where} holds an invalid generation or version name")
        return record


# ---------------------------------------------------------------------------------------
# Conditional writes: one small interface, an S3 and a folder implementation.
class _S3Store:
    def __init__(self, root: str, cfg: Any):
        self.bucket, key = storage.split_s3(root)
        self.prefix = key.rstrip("/")
        self.cfg = cfg
        self.client = storage.s3_client(cfg)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def read(self, name: str) -> Optional[tuple[bytes, str]]:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
        except self.client.exceptions.NoSuchKey:
            return None
        return obj["Body"].read(), obj["ETag"]

    def _put(self, name: str, data: bytes, **condition: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data, **condition)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            if code in ("NotImplemented", "501"):
                raise storage.StorageError(
                    f"s3://{self.bucket}/{self._key(name)}: this S3 store does not support conditional writes "
                    "(If-None-Match / If-Match), which the champion pointer needs"
                ) from None
            raise
        current = self.read(name)
        return current is not None and current[0] == data

    def create(self, name: str, data: bytes) -> bool:
        return self._put(name, data, IfNoneMatch="*")

    def replace(self, name: str, data: bytes, tag: Optional[str]) -> bool:
        return self._put(name, data, **({"IfMatch": tag} if tag else {"IfNoneMatch": "*"}))

    def names(self, folder: str) -> list[str]:
        return [rel for rel in storage.list_files(f"s3://{self.bucket}/{self._key(folder)}", self.cfg) if "/" not in rel]


class _FolderStore:
    def __init__(self, root: str):
        self.root = Path(root)

    def read(self, name: str) -> Optional[tuple[bytes, str]]:
        try:
            data = (self.root / name).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def _temporary(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        return tmp

    def create(self, name: str, data: bytes) -> bool:
        tmp = self._temporary(name, data)
        try:
            os.link(tmp, self.root / name)  # atomic, and refuses an existing name
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".champion.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def replace(self, name: str, data: bytes, tag: Optional[str]) -> bool:
        with self._locked():
            current = self.read(name)
            if (current[1] if current else None) != tag:
                return False
            os.replace(self._temporary(name, data), self.root / name)
            return True

    def names(self, folder: str) -> list[str]:
        path = self.root / folder
        return sorted(p.name for p in path.iterdir() if p.is_file()) if path.is_dir() else []


def _store(registry_uri: str, model_name: str, cfg: Any):
    root = model_root(registry_uri, model_name)
    return _S3Store(root, cfg) if storage.is_s3(root) else _FolderStore(root)


# ---------------------------------------------------------------------------------------
def _history_name(generation: int) -> str:
    return f"{HISTORY}/{generation:08d}.json"


def _generations(store) -> list[int]:
    return sorted(int(n[:-5]) for n in store.names(HISTORY) if n.endswith(".json") and n[:-5].isdigit())


def history(registry_uri: str, model_name: str, cfg: Any = None) -> list[ChampionRecord]:
    """Every move of the champion, oldest first."""
    store = _store(registry_uri, model_name, cfg)
    out = []
    for gen in _generations(store):
        found = store.read(_history_name(gen))
        if found is not None:
            out.append(ChampionRecord.parse(found[0], _history_name(gen)))
    return out


def _head(store) -> Optional[ChampionRecord]:
    gens = _generations(store)
    if not gens:
        return None
    found = store.read(_history_name(gens[-1]))
    return ChampionRecord.parse(found[0], _history_name(gens[-1])) if found else None


def read_pointer(registry_uri: str, model_name: str, cfg: Any = None) -> Optional[ChampionRecord]:
    """What serving sees: ``champion.json`` (None when there is no champion yet)."""
    found = _store(registry_uri, model_name, cfg).read(POINTER)
    return ChampionRecord.parse(found[0], POINTER) if found else None


def current_champion(registry_uri: str, model_name: str, cfg: Any = None) -> Optional[ChampionRecord]:
    """The newest history record: the champion, even when a writer died before the pointer."""
    return _head(_store(registry_uri, model_name, cfg))


def _advance_pointer(store, record: ChampionRecord) -> None:
    """Write ``record`` to the pointer unless the pointer already shows this or a later move."""
    data = record.to_bytes()
    for _ in range(MAX_ATTEMPTS):
        found = store.read(POINTER)
        if found is not None and ChampionRecord.parse(found[0], POINTER).generation >= record.generation:
            return
        if store.replace(POINTER, data, found[1] if found else None):
            return
    raise PromotionConflict(f"{POINTER} stayed contended for {MAX_ATTEMPTS} attempts; run the command again")


def repair_pointer(registry_uri: str, model_name: str, cfg: Any = None) -> Optional[ChampionRecord]:
    """Bring the pointer up to the newest history record (after a writer died between the two)."""
    store = _store(registry_uri, model_name, cfg)
    head = _head(store)
    if head is not None:
        _advance_pointer(store, head)
    return head


def _actor() -> str:
    who = os.environ.get("GITHUB_ACTOR") or os.environ.get("USER") or ""
    with contextlib.suppress(Exception):
        who = who or getpass.getuser()
    return f"{who}@{socket.gethostname()}"


def move_champion(
    registry_uri: str, model_name: str, cfg: Any, action: str, version: Optional[str] = None,
    expect_champion: Any = ANY, reason: str = "", decision: Optional[dict[str, Any]] = None,
) -> tuple[ChampionRecord, bool]:
    """Promote ``version`` or roll back; returns (the champion record, whether anything moved).

    ``expect_champion``: a version name or None (no champion yet): refuse with
    :class:`PromotionConflict` when the champion is something else (compare-and-swap)."""
    if action not in ("promote", "rollback"):
        raise UsageError(f"unknown champion action {action!r}")
    store = _store(registry_uri, model_name, cfg)
    root = model_root(registry_uri, model_name)
    if action == "promote":
        check_name(version or "", "version")
        if not storage.is_published(storage.join(root, version), cfg):
            raise RegistryError(f"version {version!r} is not published in {root}: nothing to promote")
    for _ in range(MAX_ATTEMPTS):
        head = _head(store)
        current = head.version if head else None
        if expect_champion is not ANY and current != expect_champion:
            raise PromotionConflict(
                f"the champion is {current or 'none'}, not {expect_champion or 'none'} as expected: "
                "someone else moved it; nothing was changed"
            )
        if head is not None:
            _advance_pointer(store, head)  # finish a move whose writer died before the pointer
        stack = list(head.stack) if head else []
        if action == "promote":
            if current == version:
                return head, False
            stack = (stack + [version])[-STACK_LIMIT:]
        else:
            if len(stack) < 2:
                raise UsageError(f"nothing to roll back to: the champion history of {root} has "
                                 f"{'no champion' if not stack else 'only ' + stack[0]}")
            stack = stack[:-1]
        record = ChampionRecord(
            generation=(head.generation if head else 0) + 1, action=action, version=stack[-1],
            uri=storage.join(root, stack[-1]), previous=current, stack=stack,
            time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), reason=reason, actor=_actor(),
            decision=decision,
        )
        if store.create(_history_name(record.generation), record.to_bytes()):
            _advance_pointer(store, record)
            return record, True
    raise PromotionConflict(f"the champion history of {root} stayed contended for {MAX_ATTEMPTS} attempts; "
                            "nothing was changed: run the command again")
