"""The one digest helper: sha256 of JSON-able values, of bytes and of files.

Every hash the project computes goes through here (``tests/unit/test_layers.py`` keeps
``hashlib`` out of every other module): content hashes (cache keys, settings fingerprints, file
checksums, published file lists) and the hashes that place a row in a split or seed its
randomness, so one algorithm and one encoding describe them all. A value is hashed as JSON with
sorted keys, so two equal dicts always give the same digest.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

FILE_CHUNK = 1 << 20  # bytes read at a time when hashing a file


def digest(obj: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the sha256 of ``obj`` as sorted JSON (``str`` for
    anything JSON cannot hold)."""
    return bytes_digest(json.dumps(obj, sort_keys=True, default=str).encode(), length)


def bytes_digest(data: bytes, length: int = 64) -> str:
    """The first ``length`` hex digits of the sha256 of ``data`` (all 64 by default)."""
    return hashlib.sha256(data).hexdigest()[:length]


def hasher():
    """A fresh sha256 object, for bytes hashed as they stream past (a download written to disk)."""
    return hashlib.sha256()


def raw_digest(data: bytes) -> bytes:
    """The 32 bytes of the sha256 of ``data``: the source of per-row numbers (split, seed) that
    must be the same on every machine and Python version."""
    return hashlib.sha256(data).digest()


def file_digest(path: str | Path) -> str:
    """The full sha256 hex digest of a file's bytes, read a chunk at a time."""
    h = hasher()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(FILE_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
