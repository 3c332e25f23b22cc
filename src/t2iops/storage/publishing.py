"""Atomic publishing and manifests.

:func:`publish` hands out a local staging folder; when the block exits without error its files
become the output at ``dest``, all at once, with a manifest (file list, sizes, sha256):

* **Locally** every file and folder is fsynced, then the staging folder is renamed into place
  (the old output, if any, is renamed away first and removed after).
* **On S3** the files go to immutable keys ``<dest>/_v/<version>/<rel>``; then the manifest
  ``<dest>/_manifest.json``, naming the version, is written **last** with a conditional PUT
  (``If-Match`` the manifest we replaced, ``If-None-Match: *`` for a first publish) and read back.
  Until that PUT, readers see the previous output, whole; a killed publish leaves only unnamed
  version keys, which readers never look at. Of two concurrent publishers one lands and the other
  fails with :class:`ConcurrentPublish` (and removes its version). After the manifest moves, the
  version before the previous one is deleted: the previous one stays for readers still reading it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

from ..hashing import file_digest
from .client import error_code, named_errors, s3_client, storage_settings
from .objects import delete_keys, download_entry, fsync_dir, read_bytes, upload_files, write_hashing
from .ranged import RangePlan
from .uris import (MANIFEST, VERSIONS, ConcurrentPublish, IntegrityError, NotPublished, is_s3, join, prefix_of,
                   safe_target, split_s3)
from .views import get_object_bytes, list_objects, manifest_entries, parse_manifest

EXTRA_MANIFEST = "_manifest.extra.json"
# Versions no manifest names (a killed publish) are removed by a later publish once this old.
ORPHAN_AGE_S = 24 * 3600


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest a file list records for a file."""
    return file_digest(path)


def build_manifest(staging: Path, extra: Optional[dict]) -> dict:
    files = {}
    for p in sorted(q for q in staging.rglob("*") if q.is_file()):
        rel = p.relative_to(staging).as_posix()
        if rel == MANIFEST:
            continue
        files[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files, **(extra or {})}


@contextlib.contextmanager
def publish(dest: str | os.PathLike, cfg: Any = None, extra: Optional[dict] = None) -> Iterator[Path]:
    """Stage outputs locally, then publish them to ``dest`` atomically (see the module docstring).

    ``extra`` (a dict) is merged into the manifest; the staging folder may also be given extra
    manifest fields by writing ``staging / '_manifest.extra.json'``.
    """
    dest = str(dest)
    if is_s3(dest):
        staging = Path(tempfile.mkdtemp(prefix="t2iops-publish-"))
    else:
        d = Path(dest)
        d.parent.mkdir(parents=True, exist_ok=True)
        staging = d.parent / f".{d.name}.tmp-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
    try:
        yield staging
        extra_path = staging / EXTRA_MANIFEST
        merged = dict(extra or {})
        if extra_path.exists():
            merged.update(json.loads(extra_path.read_text()))
            extra_path.unlink()
        manifest = build_manifest(staging, merged)
        if is_s3(dest):
            publish_s3(staging, dest, manifest, cfg)
        else:
            _publish_local(staging, Path(dest), manifest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _publish_local(staging: Path, dest: Path, manifest: dict) -> None:
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    usual_modes(staging)
    _fsync_tree(staging)  # a crash after the rename must not leave an output with empty files
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, old)
    os.replace(staging, dest)
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def usual_modes(root: Path) -> None:
    """Give every file and folder under ``root`` the read (and folder search) bits the umask
    allows. Some writers (safetensors among them) create files owner-only (0600): a model or
    adapter published by one user could not be read by another, e.g. the image's uid 1000
    reading a folder a root process wrote."""
    allowed = 0o777 & ~_umask()
    for dirpath, _dirnames, filenames in os.walk(root):  # every folder comes once as dirpath, root included
        _add_bits(dirpath, 0o555 & allowed)
        for name in filenames:
            _add_bits(os.path.join(dirpath, name), 0o444 & allowed)


def _add_bits(path: str, bits: int) -> None:
    mode = os.lstat(path).st_mode
    if not stat.S_ISLNK(mode) and mode & bits != bits:
        os.chmod(path, stat.S_IMODE(mode) | bits)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def new_version_id() -> str:
    """Sortable by time (UTC), unique by a random tail."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:12]


def publish_s3(staging: Path, dest: str, manifest: dict, cfg: Any = None) -> str:
    """Upload ``staging`` as a new version of ``dest`` and point the manifest at it; returns the version."""
    client = s3_client(cfg)
    bucket, key = split_s3(dest)
    base = prefix_of(key)
    pointer_key = base + MANIFEST
    current, etag = _read_pointer(client, bucket, pointer_key)
    version = new_version_id()
    version_base = f"{base}{VERSIONS}/{version}/"
    uploaded: list[str] = []
    body = {**manifest, "layout": "versioned", "version": version,
            "previous": (current or {}).get("version")}
    try:
        uploaded = [version_base + rel for rel in manifest["files"]]  # cleaned up on failure, present or not
        upload_files(client, staging, list(manifest["files"]), bucket, version_base,
                     storage_settings(cfg)["max_concurrency"], RangePlan.of(cfg))
        _swap_pointer(client, bucket, pointer_key, body, etag, dest)
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: a later publish removes orphans anyway
            delete_keys(client, bucket, uploaded)
        raise
    with contextlib.suppress(Exception):  # the output is published; cleanup may fail harmlessly
        _collect_garbage(client, bucket, base, body, current)
    return version


def _read_pointer(client, bucket: str, key: str) -> tuple[Optional[dict], Optional[str]]:
    try:
        data, etag = get_object_bytes(client, bucket, key)
    except FileNotFoundError:
        return None, None
    return parse_manifest(data, f"s3://{bucket}/{key}"), etag


def _swap_pointer(client, bucket: str, key: str, body: dict, etag: Optional[str], dest: str) -> None:
    condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
    from botocore.exceptions import ClientError

    data = json.dumps(body, indent=2).encode()
    try:
        with named_errors(client, "publish the manifest", bucket, key):
            try:
                client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
            except ClientError as exc:
                if error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise _lost_race(client, bucket, key, body, dest) from None
                raise
    except FileNotFoundError:  # If-Match on a manifest deleted meanwhile answers 404 on some stores
        raise _lost_race(client, bucket, key, body, dest) from None
    # Stores that ignore conditional headers: the read-back shows whose manifest won.
    now, _ = _read_pointer(client, bucket, key)
    if (now or {}).get("version") != body["version"]:
        raise _lost_race(client, bucket, key, body, dest)


def _lost_race(client, bucket: str, key: str, body: dict, dest: str) -> ConcurrentPublish:
    winner = None
    with contextlib.suppress(Exception):
        winner = (_read_pointer(client, bucket, key)[0] or {}).get("version")
    return ConcurrentPublish(
        f"another publish to {dest} moved s3://{bucket}/{key} first (now version "
        f"{winner}); this publish (version {body['version']}) was withdrawn: run it again if its "
        "output should win"
    )


def _collect_garbage(client, bucket: str, base: str, now: dict, replaced: Optional[dict]) -> None:
    """Delete versions that are neither live nor the previous one (readers may still read it):
    the version the replaced manifest had replaced, old unnamed versions, and files of an
    output published before versioned keys (they sat directly under the prefix)."""
    keep = {now["version"], now.get("previous")}
    doomed: list[str] = []
    versions_prefix = f"{base}{VERSIONS}/"
    cutoff = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - ORPHAN_AGE_S))
    superseded = (replaced or {}).get("previous")
    for obj in list_objects(client, bucket, versions_prefix):
        version = obj["Key"][len(versions_prefix):].split("/", 1)[0]
        if version in keep:
            continue
        if version == superseded or version < cutoff:
            doomed.append(obj["Key"])
    if replaced is not None and not replaced.get("version"):
        doomed.extend(base + rel for rel in replaced.get("files", {}) if base + rel != base + MANIFEST)
    delete_keys(client, bucket, doomed)


def read_manifest(uri: str | os.PathLike, cfg: Any = None) -> dict:
    try:
        data = read_bytes(join(uri, MANIFEST), cfg)
    except FileNotFoundError:
        raise NotPublished(f"{uri} has no {MANIFEST}: it was never published or is being written") from None
    return parse_manifest(data, join(uri, MANIFEST))


def download_listed(uri: str | os.PathLike, manifest: dict, rel: str, dest: Path, cfg: Any = None) -> int:
    """Copy the file ``rel`` of the published output at ``uri`` to ``dest`` and return its size.
    ``manifest`` is the output's (:func:`read_manifest`), already read by the caller: on S3 the
    file is one GET of its versioned key (no lookup of the manifest again per file), streamed to
    a temp file and hashed once. It appears at ``dest`` only when its size and sha256 match the
    manifest (:class:`IntegrityError` otherwise), whatever ``storage.verify`` says."""
    uri = str(uri)
    meta = manifest["files"].get(rel)
    if not isinstance(meta, dict) or meta.get("bytes") is None or meta.get("sha256") is None:
        raise NotPublished(f"{join(uri, rel)}: {MANIFEST} records no size and sha256 for it")
    if is_s3(uri):
        bucket, key = split_s3(uri)
        entry = manifest_entries(prefix_of(key), {"version": manifest.get("version"), "files": {rel: meta}})[0]
        download_entry(s3_client(cfg), bucket, entry, dest, verify=True, plan=RangePlan.of(cfg))
        return entry.bytes
    source = safe_target(Path(uri), rel, join(uri, MANIFEST))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{uuid.uuid4().hex[:8]}")
    try:
        with open(source, "rb") as src:
            digest, size = write_hashing(iter(lambda: src.read(1 << 20), b""), tmp)
        if size != meta["bytes"] or digest != meta["sha256"]:
            raise IntegrityError(f"{source}: {size} bytes, sha256 {digest}; the manifest records "
                                 f"{meta['bytes']} bytes, sha256 {meta['sha256']}; refusing it")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return size


def is_published(uri: str | os.PathLike, cfg: Any = None) -> bool:
    try:
        read_manifest(uri, cfg)
        return True
    except NotPublished:
        return False


# ---------------------------------------------------------------------------------------
# Outputs written by several processes, or sharing their folder with other outputs
class _OneProcess:
    """The group of a publish that one process writes alone."""

    is_main = True

    def barrier(self) -> None:
        pass

    def broadcast_object(self, obj):
        return obj

    def all_gather_object(self, obj) -> list:
        return [obj]


@contextlib.contextmanager
def publish_shared(dest: str | os.PathLike, cfg: Any = None, extra: Optional[dict] = None, *, group: Any = None,
                   beside: bool = False) -> Iterator[Path]:
    """:func:`publish` for an output that several processes write together, or that shares its
    folder with other outputs: the same manifest, the same fsynced rename locally, the same
    versioned keys and conditional manifest PUT on S3. Nothing is visible until every file is.

    ``group`` (collective; ``is_main``, ``barrier``, ``broadcast_object``, ``all_gather_object``,
    as the ranks of a training job have them): every process writes its own files into the
    staging folder it is handed. Locally they share one folder (``dest`` must be on a filesystem
    all of them see), which rank 0 renames into place; on S3 each process uploads its own files
    under the version rank 0 names, and rank 0 writes the manifest that lists them all.

    ``beside``: ``dest`` also holds things that are not part of this output (a training run's
    checkpoints and logs beside its result) and they stay. Only the top-level entries staged are
    replaced, each renamed into place, and the manifest, moved in last, lists the staged files.
    On S3 plain keys that an older layout left under the staged names are removed once the
    manifest has moved, so that they can never shadow the published files."""
    dest = str(dest)
    group = group or _OneProcess()
    staging = _shared_staging(dest, group, beside)
    published = False
    try:
        yield staging
        if is_s3(dest):
            _publish_s3_shared(staging, dest, cfg, extra, group, beside)
        else:
            group.barrier()  # every process has written its files into the shared folder
            if group.is_main:
                manifest = build_manifest(staging, extra)
                (_publish_local_beside if beside else _publish_local)(staging, Path(dest), manifest)
        published = True
    finally:
        if is_s3(dest) or not published:  # a local staging folder that was published is rank 0's, and gone
            shutil.rmtree(staging, ignore_errors=True)


def _shared_staging(dest: str, group, beside: bool) -> Path:
    if is_s3(dest):
        return Path(tempfile.mkdtemp(prefix="t2iops-publish-"))
    d = Path(dest)
    parent, name = (d, ".staged") if beside else (d.parent, f".{d.name}")
    staging = parent / group.broadcast_object(f"{name}.tmp-{uuid.uuid4().hex[:8]}")
    if group.is_main:
        staging.mkdir(parents=True)
    group.barrier()
    return staging


def _publish_local_beside(staging: Path, dest: Path, manifest: dict) -> None:
    """Withdraw the old manifest, rename each staged entry over its old self, then move the new
    manifest in: a reader sees the old output, no output, or the new one, never a mix."""
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    usual_modes(staging)
    _fsync_tree(staging)
    (dest / MANIFEST).unlink(missing_ok=True)
    for entry in sorted(p for p in staging.iterdir() if p.name != MANIFEST):
        target, old = dest / entry.name, None
        if target.is_dir() and not target.is_symlink():
            old = dest / f".{entry.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(entry, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    fsync_dir(dest)
    os.replace(staging / MANIFEST, dest / MANIFEST)
    fsync_dir(dest)
    staging.rmdir()


def _publish_s3_shared(staging: Path, dest: str, cfg: Any, extra: Optional[dict], group, beside: bool) -> None:
    client = s3_client(cfg)
    bucket, key = split_s3(dest)
    base = prefix_of(key)
    version = group.broadcast_object(new_version_id())
    version_base = f"{base}{VERSIONS}/{version}/"
    manifest = build_manifest(staging, extra)
    upload_files(client, staging, list(manifest["files"]), bucket, version_base,
                 storage_settings(cfg)["max_concurrency"], RangePlan.of(cfg))
    parts = group.all_gather_object(manifest["files"])
    if not group.is_main:
        return
    files = dict(sorted((rel, meta) for part in parts for rel, meta in part.items()))
    current, etag = _read_pointer(client, bucket, base + MANIFEST)
    body = {**manifest, "files": files, "layout": "versioned", "version": version,
            "previous": (current or {}).get("version")}
    try:
        _swap_pointer(client, bucket, base + MANIFEST, body, etag, dest)
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: a later publish removes orphans anyway
            delete_keys(client, bucket, [version_base + rel for rel in files])
        raise
    with contextlib.suppress(Exception):  # the output is published; cleanup may fail harmlessly
        _collect_garbage(client, bucket, base, body, current)
        if beside:
            for name in sorted({rel.split("/", 1)[0] for rel in files}):
                delete_keys(client, bucket, [o["Key"] for o in list_objects(client, bucket, base + name)
                                             if o["Key"] == base + name or o["Key"].startswith(base + name + "/")])
