"""URIs, errors and the rule that no key or link leads outside its destination."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import T2IError

MANIFEST = "_manifest.json"
# Published S3 outputs keep their files under <prefix>/_v/<version>/ (immutable once written);
# <prefix>/_manifest.json names the live version.
VERSIONS = "_v"


class StorageError(T2IError, RuntimeError):
    """A storage operation failed; the message names endpoint, bucket and key."""


class NotPublished(StorageError):
    """The location has no complete, published output (no manifest)."""


class UnsafePath(StorageError):
    """A key or link would resolve outside the destination folder."""


class IntegrityError(StorageError):
    """An object does not match the size / sha256 its manifest records."""


class ConcurrentPublish(StorageError):
    """Another publisher moved the manifest of the same output first."""


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


def prefix_of(key: str) -> str:
    """``key`` as a listing prefix: ``''`` for the bucket root, else ending in one ``/``."""
    key = key.rstrip("/")
    return key + "/" if key else ""


def check_relative(rel: str, origin: str) -> str:
    """``rel`` when it is a plain relative path (no empty, ``.`` or ``..`` segment, not absolute);
    else :class:`UnsafePath` naming ``origin`` (the key or link it came from)."""
    parts = rel.split("/")
    if not rel or "\x00" in rel or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"{origin}: refusing the path {rel!r}: it would resolve outside the destination")
    return rel


def safe_target(root: Path, rel: str, origin: str) -> Path:
    """``root / rel``, refused (:class:`UnsafePath`) if it would land outside ``root``, also
    through a symlink already inside ``root``."""
    check_relative(rel, origin)
    target = root / rel
    resolved_root = root.resolve()
    resolved = target.resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise UnsafePath(f"{origin}: refusing {rel!r}: it resolves to {resolved}, outside {root}")
    return target


def check_links_inside(root: Path, origin: str) -> None:
    """Refuse (:class:`UnsafePath`) any symlink below ``root`` whose target lies outside it."""
    resolved_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            if not path.is_symlink():
                continue
            target = path.resolve()
            if target != resolved_root and resolved_root not in target.parents:
                raise UnsafePath(f"{origin}: {path.relative_to(root)} is a link to {target}, outside {root}")
