"""Follow the champion: poll, load the new version beside the one serving, then swap.

A request takes the :class:`Active` engine once, when it starts, and generates with it to the
end; a swap only replaces the reference (under a lock) after the new version has loaded and
passed verification, so no request in flight is dropped or finished by another version. A
version that fails to load or verify is *refused*: the current one keeps serving, the refusal is
logged and kept in :attr:`ChampionWatcher.refused` (shown by the model's metadata), and the same
champion move is not tried again; the next move (a promotion or a rollback) is. A version that
could not be *reached* (the store down, a timeout: ``load`` raises :class:`Unavailable`) is not
refused: the next poll tries it again, and the current one keeps serving meanwhile.

What the champion is and how a version loads are handed in (``find``, ``load``), so this module
knows nothing of the registry or of models: :mod:`.server` wires them.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

logger = logging.getLogger(__name__)

MAX_REFUSED = 20  # the refusals kept for the metadata, newest last


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Unavailable(Exception):
    """``load`` could not reach the version this time (the store down, a timeout): not a verdict
    on the version, so it is tried again at the next poll instead of being refused."""


@dataclass(frozen=True)
class Champion:
    """What the registry says should be served: a version, the move that made it champion."""

    version: str
    generation: Optional[int] = None  # None: a fixed adapter, not the registry's champion
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Active:
    """The engine serving now, and the champion move it was loaded for."""

    engine: Any
    version: str
    generation: Optional[int]
    adapter: dict  # LoadedAdapter.describe(): version, sha256, runtime, uri
    since: str = field(default_factory=_now)

    def describe(self) -> dict:
        return {**self.adapter, "version": self.version, "generation": self.generation, "since": self.since}


@dataclass(frozen=True)
class Refusal:
    version: str
    generation: Optional[int]
    error: str
    time: str = field(default_factory=_now)


class ChampionWatcher:
    """``find() -> Champion`` says what to serve; ``load(version) -> (engine, describe dict)``
    loads and verifies it (raising when it cannot). :meth:`poll` does one round; :meth:`start`
    polls every ``poll_seconds`` in a daemon thread (``poll_seconds`` 0: load once, never poll)."""

    def __init__(self, find: Callable[[], Champion], load: Callable[[str], tuple[Any, dict]],
                 poll_seconds: float):
        self._find, self._load, self.poll_seconds = find, load, poll_seconds
        self._lock = threading.Lock()
        self._active: Optional[Active] = None
        self._refused: list[Refusal] = []
        self._tried: set[tuple[str, Optional[int]]] = set()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.warnings: tuple[str, ...] = ()
        self.last_error: Optional[str] = None  # why the champion could not be read (the last poll)
        self.last_poll: Optional[str] = None
        self.polls = 0

    # -- what requests read ---------------------------------------------------------------
    def active(self) -> Optional[Active]:
        with self._lock:
            return self._active

    @property
    def refused(self) -> list[dict]:
        with self._lock:
            return [asdict(r) for r in self._refused]

    def state(self) -> dict:
        """For the metadata: what is served, what was refused, what the last poll found."""
        active = self.active()
        return {"serving": active.describe() if active else None, "refused": self.refused,
                "poll_seconds": self.poll_seconds, "last_poll": self.last_poll, "polls": self.polls,
                "last_error": self.last_error, "registry_warnings": list(self.warnings)}

    # -- polling --------------------------------------------------------------------------
    def poll(self) -> Optional[Active]:
        """One round: read the champion; when it is a move not served and not refused yet, load
        it and swap. Returns the active engine after the round."""
        self.polls += 1
        self.last_poll = _now()
        try:
            champion = self._find()
        except Exception as exc:  # the registry unreachable or damaged: keep serving what we have
            message = f"{type(exc).__name__}: {exc}" if not str(exc).startswith(type(exc).__name__) else str(exc)
            if message != self.last_error:
                logger.warning("cannot read the champion (still serving %s): %s", self._serving(), message)
            self.last_error = message
            return self.active()
        self.last_error = None
        if champion.warnings != self.warnings and champion.warnings:
            logger.warning("registry: %s", "; ".join(champion.warnings))
        self.warnings = champion.warnings
        current = self.active()
        key = (champion.version, champion.generation)
        if current is not None and current.version == champion.version:
            if current.generation != champion.generation:  # e.g. rolled back onto the version served
                with self._lock:
                    self._active = Active(current.engine, current.version, champion.generation, current.adapter,
                                          current.since)
            return self.active()
        if key in self._tried:
            return current
        self._tried.add(key)
        return self._swap_to(champion, current)

    def _swap_to(self, champion: Champion, current: Optional[Active]) -> Optional[Active]:
        where = f"version {champion.version!r}" + (f" (generation {champion.generation})"
                                                  if champion.generation is not None else "")
        logger.info("loading %s (serving: %s)", where, self._serving())
        started = time.monotonic()
        try:
            engine, adapter = self._load(champion.version)
        except Unavailable as exc:
            self._tried.discard((champion.version, champion.generation))
            message = str(exc) or type(exc).__name__
            if message != self.last_error:
                logger.warning("cannot reach %s now, still serving %s; trying again at the next poll: %s", where,
                               self._serving(), message)
            self.last_error = message
            return current
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            with self._lock:
                self._refused = [*self._refused, Refusal(champion.version, champion.generation, message)][-MAX_REFUSED:]
            logger.error("refused %s, still serving %s: %s", where, self._serving(), message)
            return current
        active = Active(engine, champion.version, champion.generation, dict(adapter))
        with self._lock:
            self._active = active
        logger.info("serving %s (loaded and verified in %.1f s; was %s)", where, time.monotonic() - started,
                    current.version if current else "nothing")
        return active

    def _serving(self) -> str:
        active = self.active()
        return repr(active.version) if active else "nothing"

    def start(self) -> "ChampionWatcher":
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            if self.poll_seconds <= 0:
                return
            self._stop.wait(self.poll_seconds)
