"""Object operations on local paths and s3:// URIs, seen as a reader should see them (through
:mod:`.views`: a published output's files by their logical path, as its manifest lists them).
Every download checks that each key stays inside the destination before anything is written,
and verifies what the manifest records.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Optional

from ..hashing import bytes_digest, hasher
from .client import endpoint_of, named_errors, s3_client, storage_settings
from .ranged import RangePlan, fetch_ranges
from .transfer import run_parallel
from .uris import IntegrityError, StorageError, is_s3, join, prefix_of, safe_target, split_s3
from .views import Entry, get_object_bytes, list_objects, published_view, resolve_key

STREAM_ATTEMPTS = 3  # a body that breaks off mid-stream is fetched again (the call itself retries in botocore)


class _BodyBroken(Exception):
    """The response started but its body broke off: worth fetching again (the call itself has
    already been retried by botocore within the deadline, so its errors are not)."""


def download_entry(client, bucket: str, entry: Entry, target: Path, verify: bool = True,
                   plan: Optional[RangePlan] = None) -> None:
    """Stream one object to ``target`` (via a temp file), checking size and sha256 when known.
    One at least ``plan.threshold`` bytes large comes as parallel byte ranges (:mod:`.ranged`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part-{uuid.uuid4().hex[:8]}")
    plan = plan or RangePlan()
    try:
        if plan.applies(entry.bytes):
            digest, size = fetch_ranges(client, bucket, entry.key, tmp, entry.bytes, plan, STREAM_ATTEMPTS,
                                        _body_errors(), want_digest=verify and entry.sha256 is not None)
        else:
            digest, size = _stream_retrying(client, bucket, entry.key, tmp)
        if verify:
            check_integrity(bucket, entry, size, digest)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _stream_retrying(client, bucket: str, key: str, path: Path) -> tuple[str, int]:
    """One GET streamed to ``path``, fetched again when its body breaks off: (sha256 hex, size)."""
    for attempt in range(STREAM_ATTEMPTS):
        try:
            return _stream_to(client, bucket, key, path)
        except _BodyBroken as exc:
            if attempt == STREAM_ATTEMPTS - 1:
                raise StorageError(f"cannot download s3://{bucket}/{key} (endpoint {endpoint_of(client)}): "
                                   f"the body broke off {STREAM_ATTEMPTS} times: {exc}") from None
    raise AssertionError("unreachable")


def _body_errors() -> tuple[type, ...]:
    """What a response body breaking off mid-stream raises (not OSError: a full disk is no
    network fault)."""
    from botocore.exceptions import BotoCoreError

    return (BotoCoreError, ConnectionError, TimeoutError)


def _stream_to(client, bucket: str, key: str, path: Path) -> tuple[str, int]:
    with named_errors(client, "download", bucket, key):
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        return write_hashing(body.iter_chunks(1 << 20), path)
    except _body_errors() as exc:
        raise _BodyBroken(str(exc)) from None


def write_hashing(chunks, path: Path) -> tuple[str, int]:
    """Write the byte ``chunks`` to ``path``, hashing them on the way: (sha256 hex, size)."""
    h = hasher()
    size = 0
    with open(path, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def check_integrity(bucket: str, entry: Entry, size: int, digest: Optional[str]) -> None:
    if entry.bytes is not None and size != entry.bytes:
        raise IntegrityError(f"s3://{bucket}/{entry.key}: {size} bytes, the manifest records {entry.bytes}; refusing it")
    if entry.sha256 is not None and digest != entry.sha256:
        raise IntegrityError(f"s3://{bucket}/{entry.key}: sha256 {digest} differs from the manifest's {entry.sha256}; refusing it")


def download_entries(client, bucket: str, entries: list[Entry], strip: str, local_dir: Path, verify: bool,
                     concurrency: int = 1, journal: Optional[Path] = None, plan: Optional[RangePlan] = None) -> None:
    """Download ``entries`` into ``local_dir`` (each at its logical key minus ``strip``) on
    ``concurrency`` threads; every key is checked to stay inside ``local_dir`` before any file is
    written. With a ``journal`` (a file listing the keys already copied and verified) an
    interrupted copy resumes where it stopped."""
    local_dir.mkdir(parents=True, exist_ok=True)
    targets = [(e, safe_target(local_dir, e.logical[len(strip):], f"s3://{bucket}/{e.logical}")) for e in entries]
    done = set(journal.read_text().splitlines()) if journal is not None and journal.exists() else set()
    lock = threading.Lock()

    def copy(entry: Entry, target: Path) -> None:
        download_entry(client, bucket, entry, target, verify, plan)
        if journal is not None:
            with lock, open(journal, "a") as fh:
                fh.write(entry.key + "\n")

    tasks = [(functools.partial(copy, e, t), e.bytes or 0) for e, t in targets if not (e.key in done and t.exists())]
    run_parallel(tasks, concurrency, f"download s3://{bucket}/{strip}")


# ---------------------------------------------------------------------------------------
# The public object API
def list_files(uri: str | os.PathLike, cfg: Any = None) -> list[str]:
    """Relative paths of every file below ``uri`` (sorted); published outputs show their files."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        prefix = prefix_of(key)
        return [e.logical[len(prefix):] for e in published_view(s3_client(cfg), bucket, prefix)]
    root = Path(uri)
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def exists(uri: str | os.PathLike, cfg: Any = None) -> bool:
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client(cfg)
        try:
            resolve_key(client, bucket, key)
            return True
        except FileNotFoundError:
            return bool(published_view(client, bucket, prefix_of(key))[:1])
    return Path(uri).exists()


def read_bytes(uri: str | os.PathLike, cfg: Any = None) -> bytes:
    """One file's bytes; a file of a published output is checked against its manifest."""
    uri = str(uri)
    if not is_s3(uri):
        return Path(uri).read_bytes()
    bucket, key = split_s3(uri)
    client = s3_client(cfg)
    try:
        return get_object_bytes(client, bucket, key)[0]
    except FileNotFoundError:
        entry = resolve_key(client, bucket, key)
    data, _ = get_object_bytes(client, bucket, entry.key)
    if storage_settings(cfg)["verify"]:
        check_integrity(bucket, entry, len(data), bytes_digest(data))
    return data


def read_text(uri: str | os.PathLike, cfg: Any = None) -> str:
    return read_bytes(uri, cfg).decode("utf-8")


def write_bytes(uri: str | os.PathLike, data: bytes, cfg: Any = None) -> None:
    """Write one object/file atomically (temp file + fsync + rename locally; a single PUT on S3)."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client(cfg)
        with named_errors(client, "write", bucket, key):
            client.put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def delete_keys(client, bucket: str, keys: list[str]) -> None:
    for i in range(0, len(keys), 1000):
        with named_errors(client, "delete", bucket, keys[i]):
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})


def delete(uri: str | os.PathLike, cfg: Any = None) -> None:
    """Remove a file, folder or prefix (missing is fine)."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client(cfg)
        keys = [o["Key"] for o in list_objects(client, bucket, prefix_of(key))]
        with contextlib.suppress(FileNotFoundError):
            with named_errors(client, "inspect", bucket, key):
                client.head_object(Bucket=bucket, Key=key)
            keys.append(key)
        delete_keys(client, bucket, keys)
        return
    path = Path(uri)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def upload_file(client, path: Path, bucket: str, key: str, plan: Optional[RangePlan] = None) -> None:
    """One file; from ``plan.threshold`` bytes in parts of ``plan.part`` (at least S3's 5 MB),
    ``plan.concurrency`` at a time, each part retried on its own (boto3's transfer manager)."""
    from boto3.s3.transfer import TransferConfig

    plan = plan or RangePlan()
    config = TransferConfig(multipart_threshold=plan.threshold, multipart_chunksize=max(plan.part, 5 << 20),
                            max_concurrency=plan.concurrency)
    with named_errors(client, "upload", bucket, key):
        client.upload_file(str(path), bucket, key, Config=config)


def upload_dir(local_dir: str | Path, uri: str, cfg: Any = None, exclude: tuple[str, ...] = ()) -> list[str]:
    bucket, key = split_s3(uri)
    prefix = prefix_of(key)
    client = s3_client(cfg)
    local_dir = Path(local_dir)
    written = [p.relative_to(local_dir).as_posix() for p in sorted(local_dir.rglob("*")) if p.is_file()]
    written = [rel for rel in written if rel not in exclude]
    s = storage_settings(cfg)
    upload_files(client, local_dir, written, bucket, prefix, s["max_concurrency"], RangePlan.of(cfg))
    return written


def upload_files(client, local_dir: Path, rels: list[str], bucket: str, prefix: str, concurrency: int,
                 plan: Optional[RangePlan] = None) -> None:
    """Upload ``local_dir/rel`` to ``prefix + rel`` for each ``rel``, ``concurrency`` at a time."""
    tasks = [(functools.partial(upload_file, client, local_dir / rel, bucket, prefix + rel, plan),
              (local_dir / rel).stat().st_size) for rel in rels]
    run_parallel(tasks, concurrency, f"upload s3://{bucket}/{prefix}")


def download_dir(uri: str, local_dir: str | Path, cfg: Any = None) -> Path:
    """Copy every file below ``uri`` (as :func:`published_view` shows it) into ``local_dir``.
    A key that would land outside ``local_dir`` is refused before anything is written."""
    bucket, key = split_s3(uri)
    prefix = prefix_of(key)
    client = s3_client(cfg)
    entries = published_view(client, bucket, prefix)
    if not entries:
        with contextlib.suppress(FileNotFoundError):
            entry = resolve_key(client, bucket, key)
            raise StorageError(f"{uri} is a single object ({entry.key}), not a prefix")
        raise FileNotFoundError(f"nothing found under {uri}")
    s = storage_settings(cfg)
    download_entries(client, bucket, entries, prefix, Path(local_dir), s["verify"], s["max_concurrency"],
                     plan=RangePlan.of(cfg))
    return Path(local_dir)


__all__ = ["Entry", "list_files", "exists", "read_bytes", "read_text", "write_bytes", "delete", "upload_dir",
           "download_dir", "join"]
