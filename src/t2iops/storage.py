"""Local paths and ``s3://bucket/prefix`` URIs behind one small API.

* Credentials come from boto3's standard chain (env vars, shared profile, IRSA web identity);
  ``storage.endpoint_url`` (or the standard ``AWS_ENDPOINT_URL`` env var) points at an
  S3-compatible store. Retries use botocore's adaptive mode.
* Publishing is atomic: :func:`publish` hands out a local staging folder; when the block exits
  without error the files go to the destination and ``_manifest.json`` (file list, sizes,
  sha256) is written **last**. Locally the staging folder is renamed into place. A reader uses
  :func:`read_manifest` / :func:`materialize` and never sees half an output: no manifest, no
  output. When the block raises, nothing is published.
* :func:`materialize` turns any input URI into a local path; s3:// inputs are downloaded once
  into a cache keyed by the objects' ETags, under a file lock so concurrent processes are safe.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

MANIFEST = "_manifest.json"


class StorageError(RuntimeError):
    pass


class NotPublished(StorageError):
    """The location has no complete, published output (no manifest)."""


# ---------------------------------------------------------------------------------------
# URIs
def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    if not is_s3(uri):
        raise StorageError(f"not an s3:// URI: {uri}")
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"s3 URI without a bucket: {uri}")
    return bucket, key


def join(base: str | os.PathLike, *parts: str) -> str:
    base = str(base)
    if is_s3(base):
        out = base.rstrip("/")
        for p in parts:
            out += "/" + p.strip("/")
        return out
    return str(Path(base, *parts))


def _storage_settings(cfg: Any) -> dict:
    """Accept a StorageConfig, a full Config or None."""
    if cfg is None:
        return {}
    storage = getattr(cfg, "storage", cfg)
    return {
        "endpoint_url": getattr(storage, "endpoint_url", None),
        "region": getattr(storage, "region", None),
        "max_attempts": getattr(storage, "max_attempts", 8),
        "cache_dir": getattr(storage, "cache_dir", None),
    }


def s3_client(cfg: Any = None):
    """A boto3 S3 client for these settings. Clients are cached per settings and per the
    credential-related environment (creating one costs about a second on a busy machine)."""
    s = _storage_settings(cfg)
    env_key = tuple(
        os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                  "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
    )
    return _cached_client(s.get("endpoint_url"), s.get("region"), s.get("max_attempts", 8), env_key, os.getpid())


@functools.lru_cache(maxsize=32)
def _cached_client(endpoint_url, region, max_attempts, _env_key, _pid):
    import boto3
    from botocore.config import Config as BotoConfig

    s = {"endpoint_url": endpoint_url, "region": region, "max_attempts": max_attempts}
    kwargs: dict[str, Any] = {
        "config": BotoConfig(retries={"max_attempts": s.get("max_attempts", 8), "mode": "adaptive"})
    }
    if s.get("endpoint_url"):
        kwargs["endpoint_url"] = s["endpoint_url"]
    if s.get("region"):
        kwargs["region_name"] = s["region"]
    return boto3.session.Session().client("s3", **kwargs)


def cache_root(cfg: Any = None) -> Path:
    s = _storage_settings(cfg)
    root = s.get("cache_dir") or os.environ.get("T2IOPS_CACHE") or Path.home() / ".cache" / "t2iops"
    return Path(root)


# ---------------------------------------------------------------------------------------
# Basic object operations
def _list_objects(client, bucket: str, prefix: str) -> list[dict]:
    out: list[dict] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        out.extend(page.get("Contents", []))
    return out


def list_files(uri: str | os.PathLike, cfg: Any = None) -> list[str]:
    """Relative paths of every file below ``uri`` (sorted)."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        objs = _list_objects(s3_client(cfg), bucket, prefix)
        return sorted(o["Key"][len(prefix):] for o in objs if not o["Key"].endswith("/"))
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
            client.head_object(Bucket=bucket, Key=key)
            return True
        except client.exceptions.ClientError:
            return bool(_list_objects(client, bucket, key.rstrip("/") + "/")[:1])
    return Path(uri).exists()


def read_bytes(uri: str | os.PathLike, cfg: Any = None) -> bytes:
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client(cfg)
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            raise FileNotFoundError(uri) from None
    return Path(uri).read_bytes()


def read_text(uri: str | os.PathLike, cfg: Any = None) -> str:
    return read_bytes(uri, cfg).decode("utf-8")


def write_bytes(uri: str | os.PathLike, data: bytes, cfg: Any = None) -> None:
    """Write one object/file atomically (temp file + rename locally; a single PUT on S3)."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client(cfg).put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def delete(uri: str | os.PathLike, cfg: Any = None) -> None:
    """Remove a file, folder or prefix (missing is fine)."""
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client(cfg)
        keys = [o["Key"] for o in _list_objects(client, bucket, key.rstrip("/") + "/")]
        with contextlib.suppress(Exception):
            client.head_object(Bucket=bucket, Key=key)
            keys.append(key)
        for i in range(0, len(keys), 1000):
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
        return
    path = Path(uri)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def upload_dir(local_dir: str | Path, uri: str, cfg: Any = None, exclude: tuple[str, ...] = ()) -> list[str]:
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/")
    client = s3_client(cfg)
    local_dir = Path(local_dir)
    written = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = str(path.relative_to(local_dir))
        if rel in exclude:
            continue
        client.upload_file(str(path), bucket, f"{prefix}/{rel}" if prefix else rel)
        written.append(rel)
    return written


def download_dir(uri: str, local_dir: str | Path, cfg: Any = None) -> Path:
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    client = s3_client(cfg)
    local_dir = Path(local_dir)
    objs = _list_objects(client, bucket, prefix)
    if not objs:
        raise FileNotFoundError(f"nothing found under {uri}")
    for obj in objs:
        rel = obj["Key"][len(prefix):]
        if not rel or rel.endswith("/"):
            continue
        target = local_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, obj["Key"], str(target))
    return local_dir


# ---------------------------------------------------------------------------------------
# Manifests and atomic publishing
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _build_manifest(staging: Path, extra: Optional[dict]) -> dict:
    files = {}
    for p in sorted(q for q in staging.rglob("*") if q.is_file()):
        rel = str(p.relative_to(staging))
        if rel == MANIFEST:
            continue
        files[rel] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files, **(extra or {})}


@contextlib.contextmanager
def publish(dest: str | os.PathLike, cfg: Any = None, extra: Optional[dict] = None) -> Iterator[Path]:
    """Stage outputs locally, then publish them to ``dest`` with the manifest written last.

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
        extra_path = staging / "_manifest.extra.json"
        merged = dict(extra or {})
        if extra_path.exists():
            merged.update(json.loads(extra_path.read_text()))
            extra_path.unlink()
        manifest = _build_manifest(staging, merged)
        if is_s3(dest):
            bucket, key = split_s3(dest)
            client = s3_client(cfg)
            prefix = key.rstrip("/")
            mkey = f"{prefix}/{MANIFEST}" if prefix else MANIFEST
            # Withdraw any previous manifest first: while new objects land, readers see
            # "not published" instead of a stale manifest describing mixed files.
            client.delete_object(Bucket=bucket, Key=mkey)
            old = {o["Key"] for o in _list_objects(client, bucket, prefix + "/" if prefix else "")}
            upload_dir(staging, dest, cfg, exclude=(MANIFEST,))
            client.put_object(Bucket=bucket, Key=mkey, Body=json.dumps(manifest, indent=2).encode())
            stale = old - {f"{prefix}/{rel}" if prefix else rel for rel in manifest["files"]} - {mkey}
            for k in stale:
                client.delete_object(Bucket=bucket, Key=k)
        else:
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
            d = Path(dest)
            old = None
            if d.exists():
                old = d.parent / f".{d.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(d, old)
            os.replace(staging, d)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def read_manifest(uri: str | os.PathLike, cfg: Any = None) -> dict:
    try:
        return json.loads(read_bytes(join(uri, MANIFEST), cfg))
    except FileNotFoundError:
        raise NotPublished(f"{uri} has no {MANIFEST}: it was never published or is being written") from None


def is_published(uri: str | os.PathLike, cfg: Any = None) -> bool:
    try:
        read_manifest(uri, cfg)
        return True
    except NotPublished:
        return False


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
    single object) is downloaded once into ``<cache>/<kind>/<hash of keys+ETags>``. Two
    processes asking at once serialise on a lock; the second finds the finished copy."""
    uri = str(uri)
    if not is_s3(uri):
        p = Path(uri)
        if not p.exists():
            raise FileNotFoundError(f"{uri} does not exist")
        return p
    bucket, key = split_s3(uri)
    client = s3_client(cfg)
    prefix = key.rstrip("/")
    objs = _list_objects(client, bucket, prefix + "/" if prefix else "")
    single = False
    if not objs:
        try:
            head = client.head_object(Bucket=bucket, Key=key)
        except Exception:
            raise FileNotFoundError(f"nothing found at {uri}") from None
        objs = [{"Key": key, "ETag": head["ETag"]}]
        single = True
    ident = json.dumps(sorted((o["Key"], o["ETag"]) for o in objs))
    digest = hashlib.sha256(f"{uri}\n{ident}".encode()).hexdigest()[:20]
    root = cache_root(cfg) / kind
    final = root / digest
    with file_lock(root / f".{digest}.lock"):
        if not (final / ".complete").exists():
            tmp = root / f".{digest}.tmp-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                if single:
                    client.download_file(bucket, key, str(tmp / Path(key).name))
                else:
                    download_dir(uri, tmp, cfg)
                (tmp / ".complete").write_text(ident)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
    return final / Path(key).name if single else final
