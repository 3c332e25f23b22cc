"""Progress of long loops: a tqdm bar on a terminal, plain log lines everywhere else.

A bar redrawn in place is one endless line in a pod's log, a DVC log or CI output. When stderr is
not a terminal, :func:`progress` logs ``desc: n/total unit (p%), rate, elapsed, eta, postfix``
every ``every`` steps (default: each 5 % of the total, or every 100 steps when the total is
unknown) and at least once per ``interval_s`` seconds (default 60) while the loop advances, plus
a last line when it ends. Step lines come at most one per ``min_gap_s`` seconds (default 2), so a
loop over in a moment (20 rows to validate) logs only its last line, not twenty. The returned object takes the tqdm calls the loops use (iteration,
``update``, ``set_postfix``, ``close``, ``with``), so a loop switches by replacing ``tqdm(`` with
``progress(``.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Optional, TextIO

log = logging.getLogger("t2iops.progress")

INTERVAL_S = 60.0
MIN_GAP_S = 2.0  # step lines no closer together than this
LINES_PER_LOOP = 20  # default `every`: a line per 5 % of the loop
EVERY_UNKNOWN_TOTAL = 100


def progress(iterable: Optional[Iterable] = None, desc: str = "", total: Optional[int] = None, unit: str = "it",
             initial: int = 0, every: Optional[int] = None, interval_s: float = INTERVAL_S,
             min_gap_s: float = MIN_GAP_S,
             stream: Optional[TextIO] = None, disable: bool = False, **tqdm_kwargs: Any):
    """A tqdm bar when ``stream`` (default stderr) is a terminal, else a :class:`LogProgress`;
    ``disable`` keeps the loop silent either way."""
    stream = stream if stream is not None else sys.stderr
    if _is_terminal(stream) and not disable:
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, file=stream, **tqdm_kwargs)
    return LogProgress(iterable, desc=desc, total=total, unit=unit, initial=initial, every=every,
                       interval_s=interval_s, min_gap_s=min_gap_s, silent=disable)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LogProgress:
    """The tqdm subset our loops use, reported as ``logging`` lines (see the module docstring)."""

    def __init__(self, iterable: Optional[Iterable] = None, desc: str = "", total: Optional[int] = None,
                 unit: str = "it", initial: int = 0, every: Optional[int] = None, interval_s: float = INTERVAL_S,
                 min_gap_s: float = MIN_GAP_S, logger: Optional[logging.Logger] = None, clock: Callable[[], float] = time.monotonic,
                 silent: bool = False):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.desc, self.total, self.unit = iterable, desc, total, unit
        self.n = self.initial = initial
        self.every = every or (max(1, math.ceil(total / LINES_PER_LOOP)) if total else EVERY_UNKNOWN_TOTAL)
        self.interval_s = interval_s
        self.min_gap_s = min_gap_s
        self.log = logger or log
        self.clock = clock
        self.started = self.last_time = clock()
        self.last_logged = initial
        self.postfix = ""
        self.closed = silent  # a silent one never logs, not even its last line

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("progress() without an iterable: call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.closed:
            return
        now = self.clock()
        crossed = self.n // self.every > self.last_logged // self.every
        since = now - self.last_time
        if (crossed and since >= self.min_gap_s) or since >= self.interval_s:
            self._emit(now)

    def set_postfix(self, ordered_dict: Optional[dict] = None, refresh: bool = True, **kwargs: Any) -> None:
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n != self.last_logged:
            self._emit(self.clock())

    def line(self, now: float) -> str:
        elapsed = now - self.started
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else None
        count = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        parts = [f"{self.desc}: {count}" if self.desc else count]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        if rate:
            parts.append(f"{rate:.3g} {self.unit}/s")
        parts.append(f"elapsed {_duration(elapsed)}")
        if rate and self.total and self.n < self.total:
            parts.append(f"eta {_duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _emit(self, now: float) -> None:
        self.log.info("%s", self.line(now))
        self.last_time, self.last_logged = now, self.n


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
