"""The champion history: ``champion-history/<generation>.json``, one record per move, never rewritten.

The history is the truth about the champion; ``champion.json`` is only a copy of its newest
record for simple readers (:mod:`.pointer`). Everything here is read from storage and therefore
untrusted: a record that does not parse, whose generation is not the one its name says, whose
version is not the top of its stack, or that lies beyond a gap in the generations (no move
leaves one: each creates the generation after the newest) is *damaged*. A damaged record is
named in :attr:`History.problems` and passed over; the newest sound record is the champion.
A record's ``uri`` is informational: the location served is always derived from the registry
and the version name, so a record cannot send a reader outside the registry.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from .. import storage
from ..errors import T2IError
from .versions import NAME_PATTERN, RegistryError, RegistryIntegrityError, same_location

POINTER = "champion.json"
HISTORY = "champion-history"
MAX_ATTEMPTS = 20
STACK_LIMIT = 100  # rollbacks reach this many champions back


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
    # sha256 of the version's _manifest.json when the move verified it (absent in older records)
    manifest_sha256: Optional[str] = None

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, where: str) -> "ChampionRecord":
        try:
            raw = json.loads(data)
            record = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (ValueError, TypeError, KeyError) as exc:
            raise RegistryIntegrityError(f"{where} is not a champion record: {exc}") from None
        names = [record.version, *(record.stack if isinstance(record.stack, list) else [None]),
                 *([record.previous] if record.previous else [])]
        if not isinstance(record.generation, int) or isinstance(record.generation, bool) or record.generation < 1 \
                or not all(isinstance(n, str) and NAME_PATTERN.match(n) for n in names):
            raise RegistryIntegrityError(f"{where} holds an invalid generation or version name")
        if record.action not in ("promote", "rollback") or not isinstance(record.uri, str):
            raise RegistryIntegrityError(f"{where} holds an invalid action or uri")
        if record.stack[-1:] != [record.version]:
            raise RegistryIntegrityError(f"{where}: version {record.version!r} is not the top of its stack "
                                         f"{record.stack}")
        return record

    def same_move(self, other: "ChampionRecord") -> bool:
        """Equal in everything but ``uri`` (which readers derive, never take from a record)."""
        mine, theirs = asdict(self), asdict(other)
        mine.pop("uri"), theirs.pop("uri")
        return mine == theirs

    def located(self, root: str) -> "ChampionRecord":
        """This record with the ``uri`` derived from the registry: what the pointer holds."""
        from dataclasses import replace

        return replace(self, uri=storage.join(root, self.version))


def history_name(generation: int) -> str:
    return f"{HISTORY}/{generation:08d}.json"


def generations(store) -> list[int]:
    return sorted(int(n[:-5]) for n in store.names(HISTORY) if n.endswith(".json") and n[:-5].isdigit())


@dataclass
class History:
    records: list[ChampionRecord]  # sound records, oldest first
    newest: int  # the highest generation present, sound or not: the next move creates newest + 1
    problems: list[str]  # damaged records, by name

    @property
    def head(self) -> Optional[ChampionRecord]:
        return self.records[-1] if self.records else None


def read_record(store, generation: int) -> ChampionRecord:
    """One record, checked on its own (RegistryIntegrityError naming it when damaged)."""
    name = history_name(generation)
    found = store.read(name)
    if found is None:
        raise RegistryIntegrityError(f"{name} does not exist")
    record = ChampionRecord.parse(found[0], name)
    if record.generation != generation:
        raise RegistryIntegrityError(f"{name} says it is generation {record.generation}")
    return record


def read_history(store, newest_only: bool = False) -> History:
    """The history, damaged records named and passed over. ``newest_only``: stop at the newest
    sound record (what a move or a reader needs), reading back from the end."""
    gens = generations(store)
    present = set(gens)
    records: list[ChampionRecord] = []
    problems: list[str] = []
    for gen in reversed(gens):
        try:
            if gen > 1 and gen - 1 not in present:
                raise RegistryIntegrityError(f"{history_name(gen)} follows a gap in the generations "
                                             "(no move leaves one)")
            records.append(read_record(store, gen))
        except RegistryError as exc:
            problems.append(str(exc))
            continue
        if newest_only:
            break
    return History(list(reversed(records)), gens[-1] if gens else 0, list(reversed(problems)))


def record_location_problem(record: ChampionRecord, root: str, where: str) -> Optional[str]:
    expected = storage.join(root, record.version)
    if same_location(record.uri, expected):
        return None
    return (f"{where}: uri {record.uri!r} is not the location of version {record.version!r} in this "
            f"registry ({expected})")
