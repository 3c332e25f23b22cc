"""What the registry holds: version names, and what one published version says about itself.

Everything here is read from storage, so it is untrusted: names are checked before they become
keys, a version without ``_manifest.json`` does not exist, and each JSON/YAML file read is
checked against the sha256 its manifest recorded. Listing versions reads no manifest, so one
damaged version cannot hide the others.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .. import storage
from ..errors import UsageError
from ..hashing import bytes_digest

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_MODEL_NAME = "t2i-adapter"
# Entries of <registry>/<model_name>/ that are not versions.
RESERVED = frozenset({"latest.json", "champion.json", "champion-history", "decisions", "retired"})


class RegistryError(UsageError):
    """A registry entry is missing or malformed, or the registry location is unusable (exit 2)."""


class RegistryIntegrityError(RegistryError):
    """Something read from the registry fails verification: a file that does not match its
    manifest, a damaged manifest or history record (exit 6)."""

    exit_code = 6


def check_name(value: str, what: str) -> str:
    """A model or version name: it becomes a key, so nothing that could leave its prefix."""
    if not NAME_PATTERN.match(value or "") or value in RESERVED:
        raise UsageError(
            f"{what} must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or digit, "
            f"not one of {', '.join(sorted(RESERVED))}), got {value!r}"
        )
    return value


def model_root(registry_uri: str, model_name: str) -> str:
    if not str(registry_uri or "").strip():
        raise UsageError("the registry location is empty (--registry s3://bucket/prefix or a folder)")
    return storage.join(registry_uri, check_name(model_name, "model name"))


def same_location(a: str, b: str) -> bool:
    """Whether two URIs name the same place (a folder however it is spelled: relative, linked)."""
    if storage.is_s3(a) or storage.is_s3(b):
        return str(a).rstrip("/") == str(b).rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def _is_version(name: str) -> bool:
    return name not in RESERVED and bool(NAME_PATTERN.match(name))


def list_versions(registry_uri: str, model_name: str, cfg: Any = None) -> list[str]:
    """Names of the published versions (those with a manifest), sorted. No manifest is parsed."""
    root = model_root(registry_uri, model_name)
    if not storage.is_s3(root):
        path = Path(root)
        if not path.is_dir():
            return []
        return sorted(p.name for p in path.iterdir() if _is_version(p.name) and (p / storage.MANIFEST).is_file())
    from ..storage.views import list_objects

    bucket, key = storage.split_s3(root)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    names = set()
    for obj in list_objects(storage.s3_client(cfg), bucket, prefix):
        top, _, rest = obj["Key"][len(prefix):].partition("/")
        if rest == storage.MANIFEST and _is_version(top):
            names.add(top)
    return sorted(names)


def check_location(registry_uri: str, model_name: str, cfg: Any = None) -> list[str]:
    """The published versions; one line and exit 2 (:class:`RegistryError`) when the registry is
    missing, a file or an object, or holds no published version of ``model_name``."""
    root = model_root(registry_uri, model_name)
    if storage.is_s3(root):
        _check_s3_location(str(registry_uri), cfg)
    else:
        for path, what in ((Path(registry_uri), "registry"), (Path(root), f"model folder of {model_name!r}")):
            if not path.exists():
                raise RegistryError(f"the {what} {path} does not exist")
            if not path.is_dir():
                raise RegistryError(f"the {what} {path} is a file, not a folder")
    versions = list_versions(registry_uri, model_name, cfg)
    if not versions:
        raise RegistryError(f"{root} holds no published version of model {model_name!r}")
    return versions


def _check_s3_location(registry_uri: str, cfg: Any) -> None:
    from ..storage.client import named_errors

    from ..storage.client import endpoint_of

    bucket, key = storage.split_s3(registry_uri)
    client = storage.s3_client(cfg)
    elsewhere = (f"or keep the registry in a folder (--registry ./registry, or defaults.registry_uri of the "
                 "pipeline settings)")
    try:
        with named_errors(client, "open the bucket of", bucket):
            client.head_bucket(Bucket=bucket)
    except FileNotFoundError:
        raise RegistryError(f"the registry {registry_uri}: bucket {bucket!r} does not exist at endpoint "
                            f"{endpoint_of(client)}; check the bucket name and storage.endpoint_url, "
                            f"{elsewhere}") from None
    except storage.StorageError as exc:
        raise type(exc)(f"the registry {registry_uri}: {exc}; {elsewhere}") from None
    key = key.strip("/")
    if key:
        try:
            with named_errors(client, "inspect", bucket, key):
                client.head_object(Bucket=bucket, Key=key)
        except FileNotFoundError:
            return
        raise RegistryError(f"the registry {registry_uri} is an object, not a prefix")


@dataclass
class VersionInfo:
    """One published version: its manifest and the small files that describe it."""

    name: str
    uri: str
    manifest: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def gate(self) -> Optional[dict[str, Any]]:
        gate = self.metrics.get("gate")
        return gate if isinstance(gate, dict) else None

    @property
    def published(self) -> str:
        return str(self.lineage.get("published") or self.manifest.get("created") or "")

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.name,
            "uri": self.uri,
            "published": self.published,
            "files": len(self.manifest.get("files", {})),
            "gate_passed": (self.gate or {}).get("passed"),
            "run_id": self.lineage.get("run_id"),
            "dataset": self.lineage.get("dataset"),
        }


def _verified(uri: str, rel: str, manifest: dict, cfg: Any) -> Optional[bytes]:
    """The bytes of ``rel`` when the manifest lists it and its sha256 matches; None when absent."""
    entry = manifest.get("files", {}).get(rel)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise RegistryIntegrityError(f"{storage.join(uri, storage.MANIFEST)}: the entry of {rel} is not a mapping")
    try:
        data = storage.read_bytes(storage.join(uri, rel), cfg)
    except FileNotFoundError:
        raise RegistryIntegrityError(f"{storage.join(uri, rel)} is missing: its manifest lists it") from None
    except storage.IntegrityError as exc:
        raise RegistryIntegrityError(str(exc)) from None
    if bytes_digest(data) != entry.get("sha256"):
        raise RegistryIntegrityError(f"{storage.join(uri, rel)} does not match the sha256 in its manifest: refusing to read it")
    return data


def read_version(registry_uri: str, model_name: str, version: str, cfg: Any = None) -> VersionInfo:
    """A published version, its metrics/lineage/config verified against the manifest."""
    uri = storage.join(model_root(registry_uri, model_name), check_name(version, "version"))
    try:
        manifest = storage.read_manifest(uri, cfg)
    except storage.NotPublished:
        known = list_versions(registry_uri, model_name, cfg)
        raise RegistryError(
            f"version {version!r} is not published in {model_root(registry_uri, model_name)} "
            f"(published: {', '.join(known) if known else 'none'})"
        ) from None
    except storage.StorageError as exc:  # a manifest that is not JSON, or not a manifest
        raise RegistryIntegrityError(str(exc)) from None
    info = VersionInfo(version, uri, manifest)
    for rel, attr in (("metrics.json", "metrics"), ("lineage.json", "lineage")):
        data = _verified(uri, rel, manifest, cfg)
        if data is not None:
            try:
                value = json.loads(data)
            except json.JSONDecodeError as exc:
                raise RegistryError(f"{storage.join(uri, rel)} is not valid JSON: {exc}") from None
            if not isinstance(value, dict):
                raise RegistryError(f"{storage.join(uri, rel)} must hold a JSON object")
            setattr(info, attr, value)
    data = _verified(uri, "config.resolved.yaml", manifest, cfg)
    if data is not None:
        value = yaml.safe_load(data)
        info.config = value if isinstance(value, dict) else {}
    return info
