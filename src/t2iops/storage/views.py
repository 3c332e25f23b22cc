"""How a reader sees an S3 prefix: published outputs through their manifests.

A published S3 output keeps its files under ``<prefix>/_v/<version>/`` and names the live version
in ``<prefix>/_manifest.json``. Readers address its files by their logical path
(``<prefix>/<rel>``): :func:`published_view` maps every logical path to the versioned key and the
size / sha256 the manifest records, and hides versions no manifest names (a publish in flight or
one that was killed). :mod:`.objects` reads and writes through these views.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Optional

from .client import endpoint_of, named_errors
from .uris import MANIFEST, VERSIONS, StorageError, check_relative


@dataclass(frozen=True)
class Entry:
    """One file as a reader sees it: its logical key, the key that holds its bytes, and what
    the manifest says it must be (None for objects outside any published output)."""

    logical: str
    key: str
    bytes: Optional[int] = None
    sha256: Optional[str] = None


def list_objects(client, bucket: str, prefix: str) -> list[dict]:
    out: list[dict] = []
    with named_errors(client, "list", bucket, prefix):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(page.get("Contents", []))
    return out


def get_object_bytes(client, bucket: str, key: str) -> tuple[bytes, str]:
    """(body, ETag) of one object; FileNotFoundError when it does not exist."""
    with named_errors(client, "read", bucket, key):
        obj = client.get_object(Bucket=bucket, Key=key)
        return obj["Body"].read(), obj.get("ETag", "")


def parse_manifest(data: bytes, where: str) -> dict:
    try:
        manifest = json.loads(data)
    except ValueError:
        raise StorageError(f"{where} is not valid JSON") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict):
        raise StorageError(f"{where} is not a manifest (no 'files' mapping)")
    return manifest


def manifest_entries(bucket_prefix: str, manifest: dict) -> list[Entry]:
    """The files a manifest at ``bucket_prefix`` (a listing prefix) lists, with where they live."""
    version = manifest.get("version")
    base = f"{bucket_prefix}{VERSIONS}/{version}/" if version else bucket_prefix
    entries = []
    for rel, meta in sorted(manifest.get("files", {}).items()):
        check_relative(rel, f"{bucket_prefix}{MANIFEST}")
        meta = meta if isinstance(meta, dict) else {}
        entries.append(Entry(bucket_prefix + rel, base + rel, meta.get("bytes"), meta.get("sha256")))
    return entries


def published_view(client, bucket: str, prefix: str) -> list[Entry]:
    """Every file below the listing ``prefix`` as readers see it (see the module docstring)."""
    raw = list_objects(client, bucket, prefix)
    keys = [o["Key"] for o in raw]
    sizes = {o["Key"]: o.get("Size") for o in raw}
    if not keys and prefix:
        return _view_from_ancestor(client, bucket, prefix)
    versioned_dirs = set()
    marker = f"{VERSIONS}/"
    for key in keys:
        rel = key[len(prefix):]
        parts = rel.split("/")
        for i, part in enumerate(parts[:-1]):
            if part == VERSIONS:
                versioned_dirs.add(prefix + "".join(p + "/" for p in parts[:i]))
                break
    view: dict[str, Entry] = {}
    for key in keys:
        if key.endswith("/") or any(key.startswith(d + marker) for d in versioned_dirs):
            continue
        view[key] = Entry(key, key, sizes[key])
    for d in sorted(versioned_dirs):
        if d + MANIFEST not in view:
            continue  # versions no manifest names yet: a publish in flight or a killed one
        body, _ = get_object_bytes(client, bucket, d + MANIFEST)
        manifest = parse_manifest(body, f"s3://{bucket}/{d}{MANIFEST}")
        if manifest.get("version"):
            for entry in manifest_entries(d, manifest):
                view[entry.logical] = entry
    return [view[k] for k in sorted(view)]


def _view_from_ancestor(client, bucket: str, prefix: str) -> list[Entry]:
    """The files below ``prefix`` when ``prefix`` is a folder inside a published output."""
    parts = prefix.rstrip("/").split("/")
    for depth in range(len(parts) - 1, -1, -1):
        base = "".join(p + "/" for p in parts[:depth])
        try:
            body, _ = get_object_bytes(client, bucket, base + MANIFEST)
        except FileNotFoundError:
            continue
        manifest = parse_manifest(body, f"s3://{bucket}/{base}{MANIFEST}")
        if manifest.get("version"):
            return [e for e in manifest_entries(base, manifest) if e.logical.startswith(prefix)]
        return []
    return []


def resolve_key(client, bucket: str, key: str) -> Entry:
    """The entry for one logical key: the object itself, or the file of the nearest published
    output above it that lists it. FileNotFoundError when neither exists."""
    with contextlib.suppress(FileNotFoundError):
        with named_errors(client, "inspect", bucket, key):
            client.head_object(Bucket=bucket, Key=key)
        return Entry(key, key)
    parts = key.split("/")
    for depth in range(len(parts) - 1, -1, -1):
        base = "".join(p + "/" for p in parts[:depth])
        rel = "/".join(parts[depth:])
        try:
            body, _ = get_object_bytes(client, bucket, base + MANIFEST)
        except FileNotFoundError:
            continue
        manifest = parse_manifest(body, f"s3://{bucket}/{base}{MANIFEST}")
        if manifest.get("version") and rel in manifest.get("files", {}):
            return next(e for e in manifest_entries(base, manifest) if e.logical == key)
    raise FileNotFoundError(f"s3://{bucket}/{key} does not exist (endpoint {endpoint_of(client)})")
