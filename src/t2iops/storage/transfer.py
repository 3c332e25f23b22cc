"""Parallel prefix copies with progress: a thread pool runs one task per object.

Each object keeps its own retries (botocore's per call, plus a re-fetch of a body that breaks off
mid-stream); the first object that still fails stops the copy (tasks not started are cancelled)
and its error is raised. Progress: a bar with bytes/s on a terminal, otherwise one log line every
``LOG_EVERY_S`` seconds, so a pod's log shows that a long download is alive.
"""
from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Callable, Optional

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0
_REPORTER: contextvars.ContextVar[Optional[Callable[[int], None]]] = contextvars.ContextVar("t2iops_bytes",
                                                                                           default=None)


def bytes_reporter() -> Callable[[int], None]:
    """What a copy running as one of :func:`run_parallel`'s tasks calls with each piece of an
    object as it lands, so a large file shows progress before it is complete; a no-op elsewhere.
    Threads the task starts itself (byte ranges) get it passed explicitly."""
    return _REPORTER.get() or (lambda nbytes: None)


class Progress:
    def __init__(self, label: str, total_bytes: int, count: int):
        self.label, self.total, self.count = label, total_bytes, count
        self.done_bytes = 0
        self.done_files = 0
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._last_log = self._started
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                             leave=False, file=sys.stderr)

    def add(self, nbytes: int, files: int = 1) -> None:
        """``nbytes`` more copied; ``files`` more complete (0 for a piece of a large file)."""
        with self._lock:
            self.done_bytes += nbytes
            self.done_files += files
            if self._bar is not None:
                self._bar.update(nbytes)
                return
            now = time.monotonic()
            if now - self._last_log >= LOG_EVERY_S:
                self._last_log = now
                log.info("%s: %d/%d files, %.1f/%.1f MB, %.1f MB/s", self.label, self.done_files, self.count,
                         self.done_bytes / 1e6, self.total / 1e6, self.rate_mb_s())

    def rate_mb_s(self) -> float:
        return self.done_bytes / 1e6 / max(time.monotonic() - self._started, 1e-6)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.count:
            log.debug("%s: %d files, %.1f MB in %.1f s (%.1f MB/s)", self.label, self.done_files,
                      self.done_bytes / 1e6, time.monotonic() - self._started, self.rate_mb_s())


def run_parallel(tasks: list[tuple[Callable[[], None], int]], concurrency: int, label: str) -> None:
    """Run ``(task, nbytes)`` pairs on ``concurrency`` threads; the first failure is raised."""
    progress = Progress(label, sum(n for _, n in tasks), len(tasks))

    def run(task: Callable[[], None], nbytes: int) -> None:
        reported = 0
        lock = threading.Lock()  # a large object's ranges report from their own threads

        def piece(n: int) -> None:
            nonlocal reported
            with lock:
                n = max(0, min(n, nbytes - reported))  # never more than the object's listed size
                reported += n
            progress.add(n, files=0)

        token = _REPORTER.set(piece)
        try:
            task()
        finally:
            _REPORTER.reset(token)
        progress.add(nbytes - reported)

    try:
        if concurrency <= 1 or len(tasks) <= 1:
            for task, nbytes in tasks:
                run(task, nbytes)
            return
        with ThreadPoolExecutor(max_workers=min(concurrency, len(tasks))) as pool:
            futures = [pool.submit(run, task, nbytes) for task, nbytes in tasks]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed: Optional[BaseException] = next((f.exception() for f in done if f.exception()), None)
            if failed is not None:
                for f in pending:
                    f.cancel()
                raise failed
    finally:
        progress.close()
