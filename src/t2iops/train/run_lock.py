"""One writer per run folder: ``OUT/.train.lock``, held by rank 0 for the whole run.

Two trainers writing one folder interleave checkpoints and make ``latest`` lie (a killed ``dvc
repro`` can leave its trainer running while the next one starts). The lock is an exclusive
``flock`` on the file, so the kernel drops it when its holder dies, however it dies; the file's
content names the holder (host, pid, start time, command) for the refusal message. A lock file
left by a dead holder is taken over with a warning.

Local run folders only: an s3:// run prefix has no such primitive; there the orchestrator (one
KFP task, one TrainJob) guarantees a single writer.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

from .. import storage
from ..errors import UsageError

log = logging.getLogger("t2iops.train")

LOCK_NAME = ".train.lock"


class RunLocked(UsageError):
    """Another training run is writing this run folder (exit code 2)."""


def describe(holder: Optional[dict]) -> str:
    if not holder:
        return "holder unknown"
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
            + (f": {holder['command']}" if holder.get("command") else ""))


def _read_holder(fd: int) -> Optional[dict]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 1 << 16)
    try:
        holder = json.loads(raw) if raw.strip() else None
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


class RunLock:
    """An acquired lock; :meth:`release` removes the file and drops the lock."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, folder: Path) -> "RunLock":
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunLocked(f"{folder} is being written by another training run ({describe(holder)}); "
                                f"wait for it to end or stop it (lock file {path})") from None
            # The previous holder unlinks the file on release: make sure we locked the file that
            # is there now, not one it removed between our open and our flock.
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous:  # the lock was free, so its last holder is gone (the kernel drops a dead process's flock)
            log.warning("%s: taking over the run lock left by a run that is no longer running (%s)",
                        folder, describe(previous))
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(holder).encode())
        os.fsync(fd)
        return cls(path, fd)

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # unlink first, then unlock: see the inode check in acquire
        os.close(self.fd)


@contextlib.contextmanager
def hold_run_lock(out: str, dist) -> Iterator[None]:
    """Collective: rank 0 takes the lock of the local run folder ``out`` for the block; every
    rank raises :class:`RunLocked` when it is held by another run."""
    lock, error = None, None
    if dist.is_main and not storage.is_s3(out):
        try:
            lock = RunLock.acquire(Path(out))
        except RunLocked as exc:
            error = str(exc)
    error = dist.broadcast_object(error)
    if error:
        raise RunLocked(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
