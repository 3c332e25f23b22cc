"""Whether a published version is whole: every file its ``_manifest.json`` lists, size and sha256.

Promote, rollback and retrain's promotion run this before the champion moves, and
``registry verify`` runs it on demand: reading the version's metadata (as ``show`` does) proves
nothing about the weights serving loads. In a folder a file the manifest does not list is a
problem too (a reader copying the folder would take it); on S3 readers reach files only through
the manifest, so only what it lists is read. The manifest's own sha256 goes into the champion
history record, so a reader can tell that the version it serves is the one that was verified.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .. import storage
from ..hashing import bytes_digest, hasher
from .versions import RegistryError, RegistryIntegrityError, check_name, model_root

CHUNK = 1 << 20


@dataclass
class VersionCheck:
    version: str
    uri: str
    manifest_sha256: str = ""
    files: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def raise_if_bad(self, doing: str) -> "VersionCheck":
        if self.problems:
            more = f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
            raise RegistryIntegrityError(f"version {self.version!r} fails verification, {doing}: "
                                         f"{self.problems[0]}{more}")
        return self


def _digest(chunks: Iterable[bytes]) -> tuple[str, int]:
    h, size = hasher(), 0
    for chunk in chunks:
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def _compare(where: str, size: int, digest: str, meta: dict) -> list[str]:
    if size != meta["bytes"]:
        return [f"{where}: {size} bytes, the manifest records {meta['bytes']}"]
    if digest != meta["sha256"]:
        return [f"{where}: sha256 {digest} differs from the manifest's {meta['sha256']}"]
    return []


def _recorded(meta: Any) -> bool:
    return isinstance(meta, dict) and isinstance(meta.get("bytes"), int) and isinstance(meta.get("sha256"), str)


def check_version(registry_uri: str, model_name: str, version: str, cfg: Any = None) -> VersionCheck:
    """Read every file of ``version`` and compare it with its manifest; the problems are listed,
    not raised (:meth:`VersionCheck.raise_if_bad`). An unpublished version is a RegistryError."""
    uri = storage.join(model_root(registry_uri, model_name), check_name(version, "version"))
    check = VersionCheck(version, uri)
    manifest_uri = storage.join(uri, storage.MANIFEST)
    try:
        data = storage.read_bytes(manifest_uri, cfg)
    except (FileNotFoundError, NotADirectoryError):
        raise RegistryError(f"version {version!r} is not published in {model_root(registry_uri, model_name)}: "
                            "nothing to verify or promote") from None
    check.manifest_sha256 = bytes_digest(data)
    from ..storage.views import parse_manifest

    try:
        manifest = parse_manifest(data, manifest_uri)
    except storage.StorageError as exc:
        check.problems.append(str(exc))
        return check
    files = manifest.get("files", {})
    check.files = len(files)
    check.bytes = sum(m["bytes"] for m in files.values() if _recorded(m))
    check.problems += [f"{manifest_uri}: no size and sha256 recorded for {rel}"
                       for rel, meta in sorted(files.items()) if not _recorded(meta)]
    listed = {rel: meta for rel, meta in files.items() if _recorded(meta)}
    if storage.is_s3(uri):
        check.problems += _check_s3(uri, manifest, listed, cfg)
    else:
        check.problems += _check_folder(Path(uri), listed, manifest_uri)
    return check


def verify_version(registry_uri: str, model_name: str, version: str, cfg: Any = None,
                   doing: str = "nothing was changed") -> VersionCheck:
    """:func:`check_version`, raising :class:`RegistryIntegrityError` (naming the first bad file)."""
    return check_version(registry_uri, model_name, version, cfg).raise_if_bad(doing)


def _check_folder(root: Path, listed: dict[str, dict], manifest_uri: str) -> list[str]:
    problems = []
    for rel, meta in sorted(listed.items()):
        try:
            path = storage.safe_target(root, rel, manifest_uri)
        except storage.UnsafePath as exc:
            problems.append(str(exc))
            continue
        if not path.is_file():
            problems.append(f"{path} is missing: the manifest lists it")
            continue
        with open(path, "rb") as fh:
            digest, size = _digest(iter(lambda: fh.read(CHUNK), b""))
        problems += _compare(str(path), size, digest, meta)
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if (path.is_file() or path.is_symlink()) and rel != storage.MANIFEST and rel not in listed:
            problems.append(f"{path} is not in the manifest")
    return problems


def _check_s3(uri: str, manifest: dict, listed: dict[str, dict], cfg: Any) -> list[str]:
    from ..storage.client import named_errors
    from ..storage.views import manifest_entries
    from ..storage.uris import prefix_of

    bucket, key = storage.split_s3(uri)
    client = storage.s3_client(cfg)
    try:
        entries = manifest_entries(prefix_of(key), {"version": manifest.get("version"), "files": listed})
    except storage.UnsafePath as exc:
        return [str(exc)]
    problems = []
    for entry, (rel, meta) in zip(entries, sorted(listed.items())):
        where, stored = storage.join(uri, rel), f" (object s3://{bucket}/{entry.key})"
        try:
            with named_errors(client, "verify", bucket, entry.key):
                body = client.get_object(Bucket=bucket, Key=entry.key)["Body"]
                digest, size = _digest(body.iter_chunks(CHUNK))
        except FileNotFoundError:
            problems.append(f"{where} is missing: the manifest lists it{stored}")
            continue
        problems += [problem + stored for problem in _compare(where, size, digest, meta)]
    return problems
