"""Any input URI as a local path: s3:// inputs are downloaded once into a local cache.

A published output (a ``_manifest.json`` at the prefix) is read through its manifest: only the
files it lists, each checked against its size and sha256 (``storage.verify``, on by default), so
a half-written or mixed output is never handed to a stage; a failed check removes the partial
copy and names the key. Anything else (a dataset or model folder uploaded by hand) is copied as
it is. Either way, no key may land outside the cache folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..hashing import bytes_digest
from .client import named_errors, s3_client, storage_settings
from .objects import download_entries, download_entry
from .ranged import RangePlan
from .transfer import run_parallel
from .uris import MANIFEST, StorageError, is_s3, prefix_of, split_s3
from .views import Entry, get_object_bytes, list_objects, manifest_entries, parse_manifest, published_view, resolve_key

log = logging.getLogger(__name__)

# A reader whose version was garbage-collected mid-download (two newer publishes landed) starts over.
MATERIALIZE_ATTEMPTS = 3


def cache_root(cfg: Any = None) -> Path:
    """``storage.cache_dir`` when set (it must be writable); else $T2IOPS_CACHE or
    ~/.cache/t2iops, and where that cannot be written (a read-only root filesystem, a container
    run as another uid) a folder of this user under the temporary directory, said once."""
    configured = storage_settings(cfg).get("cache_dir")
    if configured:
        return Path(configured)
    root = Path(os.environ.get("T2IOPS_CACHE") or Path.home() / ".cache" / "t2iops")
    return root if _writable(root) else _fallback_cache(str(root))


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


@functools.lru_cache(maxsize=None)
def _fallback_cache(unwritable: str) -> Path:
    fallback = Path(tempfile.gettempdir()) / f"t2iops-cache-{os.getuid()}"
    fallback.mkdir(mode=0o700, parents=True, exist_ok=True)
    log.warning("cache folder %s is not writable; caching under %s instead (set T2IOPS_CACHE or "
                "storage.cache_dir to a writable volume to keep downloads between runs)", unwritable, fallback)
    return fallback


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def materialize(uri: str | os.PathLike, cfg: Any = None, kind: str = "inputs") -> Path:
    """A local path holding ``uri``. Local paths are returned as they are; an s3:// prefix (or
    single object) is downloaded once into ``<cache>/<kind>/<hash of what was read>``. Two
    processes asking at once serialise on a lock; the second finds the finished copy."""
    uri = str(uri)
    if not is_s3(uri):
        p = Path(uri)
        if not p.exists():
            raise FileNotFoundError(f"{uri} does not exist")
        return p
    for attempt in range(MATERIALIZE_ATTEMPTS):
        try:
            return _materialize_s3(uri, cfg, kind)
        except FileNotFoundError:
            if attempt == MATERIALIZE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _plan(client, bucket: str, key: str) -> tuple[str, list[Entry], bool, bytes]:
    """(identity, entries, single, manifest bytes or b'') of what a reader of ``key`` gets."""
    prefix = prefix_of(key)
    try:
        manifest_body, _ = get_object_bytes(client, bucket, prefix + MANIFEST)
    except FileNotFoundError:
        manifest_body = b""
    if manifest_body:
        manifest = parse_manifest(manifest_body, f"s3://{bucket}/{prefix}{MANIFEST}")
        entries = manifest_entries(prefix, manifest)
        ident = "manifest:" + bytes_digest(manifest_body)
        return ident, entries, False, manifest_body
    entries = published_view(client, bucket, prefix)
    if entries:
        ident = json.dumps([(e.key, e.sha256) for e in entries]) + _etags(client, bucket, prefix)
        return ident, entries, False, b""
    entry = resolve_key(client, bucket, key)
    with named_errors(client, "inspect", bucket, entry.key):
        head = client.head_object(Bucket=bucket, Key=entry.key)
    return f"object:{entry.key}:{head.get('ETag')}", [entry], True, b""


def _etags(client, bucket: str, prefix: str) -> str:
    return json.dumps(sorted((o["Key"], o.get("ETag")) for o in list_objects(client, bucket, prefix)))


def _materialize_s3(uri: str, cfg: Any, kind: str) -> Path:
    bucket, key = split_s3(uri)
    client = s3_client(cfg)
    verify = storage_settings(cfg)["verify"]
    plan = RangePlan.of(cfg)
    try:
        ident, entries, single, manifest_body = _plan(client, bucket, key)
    except FileNotFoundError:
        raise FileNotFoundError(f"nothing found at {uri}") from None
    digest = bytes_digest(f"{uri}\n{ident}".encode(), 20)
    root = cache_root(cfg) / kind
    final = root / digest
    name = Path(key).name
    with file_lock(root / f".{digest}.lock"):
        if not (final / ".complete").exists():
            # One partial folder per identity (we hold its lock): a download killed midway resumes
            # from the files its journal lists; a failed check removes the whole partial copy.
            tmp = root / f".{digest}.partial"
            tmp.mkdir(parents=True, exist_ok=True)
            try:
                if single:
                    if not name:
                        raise StorageError(f"{uri}: nothing to download")
                    run_parallel([(functools.partial(download_entry, client, bucket, entries[0], tmp / name, verify,
                                                     plan), entries[0].bytes or 0)], 1, f"download {uri}")
                else:
                    download_entries(client, bucket, entries, prefix_of(key), tmp, verify,
                                     storage_settings(cfg)["max_concurrency"], journal=root / f".{digest}.journal",
                                     plan=plan)
                    if manifest_body:
                        (tmp / MANIFEST).write_bytes(manifest_body)
                (tmp / ".complete").write_text(ident)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
                (root / f".{digest}.journal").unlink(missing_ok=True)
            except StorageError:
                shutil.rmtree(tmp, ignore_errors=True)  # refused or unsafe: keep nothing of it
                (root / f".{digest}.journal").unlink(missing_ok=True)
                raise
    return final / name if single else final
