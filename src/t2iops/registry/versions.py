"""What the registry holds: version names, and what one published version says about itself.

Everything here is read from storage, so it is untrusted: names are checked before they become
keys, a version without ``_manifest.json`` does not exist, and each JSON/YAML file read is
checked against the sha256 its manifest recorded.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from .. import storage
from ..errors import UsageError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_MODEL_NAME = "t2i-adapter"
# Entries of <registry>/<model_name>/ that are not versions.
RESERVED = frozenset({"latest.json", "champion.json", "champion-history", "decisions"})


class RegistryError(UsageError):
    """A registry entry is missing, malformed or does not match its manifest."""


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


def list_versions(registry_uri: str, model_name: str, cfg: Any = None) -> list[str]:
    """Names of the published versions (those with a manifest), sorted."""
    root = model_root(registry_uri, model_name)
    names = set()
    for rel in storage.list_files(root, cfg):
        top, _, rest = rel.partition("/")
        if rest == storage.MANIFEST and top not in RESERVED and NAME_PATTERN.match(top):
            names.add(top)
    return sorted(names)


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
    data = storage.read_bytes(storage.join(uri, rel), cfg)
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise RegistryError(f"{storage.join(uri, rel)} does not match the sha256 in its manifest: refusing to read it")
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
