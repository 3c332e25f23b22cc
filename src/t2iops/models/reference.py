"""The base model an artifact was made from, as data: :class:`BaseModelRef`.

Like a diffusers model carries its ``config.json``, every artifact carries its base model. encode
resolves the reference once (:func:`resolve_reference`: the hub snapshot's commit, a hash of the
model's configuration files) and saves it in the cache's ``cache.json``; train copies it into its
``summary.json``; train, evaluate and export read it back (:func:`reference_from_record`) and load
the model through the one loader, :func:`t2iops.models.resolve.load_base_model`. A ``model.*``
setting that disagrees with the artifact is an error naming both values (:func:`check_agrees`):
a stage never silently loads another model than the one its input was made with.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from .. import storage
from ..errors import ModelError
from ..hashing import bytes_digest, digest, hasher
from .locate import is_offline

CONFIG_FILES = ("*.json", "*.txt", "*.model")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt")
_EDGE = 1 << 20
# model.* setting -> the BaseModelRef field it must agree with
SETTINGS = {"base_model": "path", "revision": "revision", "variant": "variant", "vae": "vae", "dtype": "dtype"}


@dataclass(frozen=True)
class BaseModelRef:
    """Which base model, exactly: ``path`` as configured (hub id, folder or s3:// prefix), the
    ``revision`` asked for and the ``commit`` it resolved to (the hub snapshot hash; None for
    folders and s3), the weights ``variant``, the ``vae`` override, the ``dtype`` the weights are
    used in (fp32/fp16/bf16; inference on CPU always runs in fp32) and ``config_hash`` (the model's
    configuration files and a fingerprint of each weights file; None when it could not be read)."""

    path: str
    revision: Optional[str] = None
    commit: Optional[str] = None
    variant: Optional[str] = None
    vae: Optional[str] = None
    dtype: str = "fp32"
    config_hash: Optional[str] = None

    @classmethod
    def from_config(cls, model_cfg: Any) -> "BaseModelRef":
        """What the ``model.*`` settings name, not yet resolved (no commit, no config hash)."""
        return cls(path=str(model_cfg.base_model), revision=model_cfg.revision, variant=model_cfg.variant,
                   vae=model_cfg.vae, dtype=model_cfg.dtype)

    @property
    def load_revision(self) -> Optional[str]:
        """What ``from_pretrained`` gets as ``revision``: the resolved commit when known."""
        return self.commit or self.revision

    # -- save and load, next to each other ------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "artifact") -> "BaseModelRef":
        """Read a saved reference. Records written before the dtype was saved lack it: fp32, the
        dtype they were encoded in unless model.dtype said otherwise (see reference_from_record)."""
        if not isinstance(data, dict) or not data.get("path"):
            raise ModelError(f"{where}: base_model must be an object with a 'path' (got {data!r})")
        fields = cls.__dataclass_fields__
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ModelError(f"{where}: base_model has unknown keys {unknown}; known: {', '.join(fields)}")
        return cls(**{k: v for k, v in data.items() if v is not None or k != "dtype"})


def check_agrees(ref: BaseModelRef, model_cfg: Any, where: str) -> None:
    """Raise ModelError unless every ``model.*`` setting the user gave (explicitly: a params file,
    ``-S`` or a KFP step's config) names what the artifact at ``where`` was made with."""
    given = getattr(model_cfg, "model_fields_set", set(SETTINGS))
    problems = []
    for setting, field in SETTINGS.items():
        if setting not in given:
            continue
        wanted, recorded = getattr(model_cfg, setting), getattr(ref, field)
        if not _same_setting(wanted, recorded):
            problems.append(f"model.{setting}={wanted!r} but {where} was made with {field} {recorded!r}")
    if problems:
        raise ModelError("; ".join(problems) + ". Use the artifact's values (or leave model.* unset for this stage), "
                         "or encode again with the new model")


def reference_from_record(record: Optional[dict], model_cfg: Any, where: str) -> BaseModelRef:
    """The reference an artifact recorded (checked against ``model_cfg``), or, for an artifact
    that records none (a bare adapter folder), the one ``model_cfg`` names."""
    if not record:
        return BaseModelRef.from_config(model_cfg)
    data = dict(record)
    if "dtype" not in data and "dtype" in getattr(model_cfg, "model_fields_set", ()):
        data["dtype"] = model_cfg.dtype  # recorded before the dtype was: the setting fills it in
    ref = BaseModelRef.from_dict(data, where)
    check_agrees(ref, model_cfg, where)
    return ref


def _same_setting(wanted: Any, recorded: Any) -> bool:
    if wanted == recorded:
        return True
    if isinstance(wanted, str) and isinstance(recorded, str):
        a, b = wanted.rstrip("/"), recorded.rstrip("/")
        if a == b:
            return True
        # one local folder named two ways (relative in params.yaml, absolute in a test or a pod)
        return Path(a).is_dir() and Path(b).is_dir() and os.path.realpath(a) == os.path.realpath(b)
    return False


# ---------------------------------------------------------------------------------------
# Resolving: once, at encode
def resolve_reference(model_cfg: Any, storage_cfg: Any = None) -> tuple[BaseModelRef, Optional[Path]]:
    """The exact reference for the ``model.*`` settings, and a local folder holding the model's
    configuration files (None when the hub cannot be reached; the loader then says what is
    missing). Hub models are read from their config-only snapshot, whose name is the commit."""
    offline = is_offline(model_cfg.local_files_only)
    folder, commit = local_model_dir(model_cfg.base_model, model_cfg.revision, storage_cfg, offline)
    ref = BaseModelRef.from_config(model_cfg)
    return (BaseModelRef(**{**ref.to_dict(), "commit": commit,
                            "config_hash": folder_fingerprint(folder) if folder is not None else None}), folder)


def local_model_dir(path: str, revision: Optional[str], storage_cfg: Any = None,
                    offline: bool = False) -> tuple[Optional[Path], Optional[str]]:
    """A local folder holding at least the model's config files, and the exact revision when
    known: local folders as they are, s3:// prefixes via the storage cache, hub ids as their
    config-only snapshot. ``(None, None)`` when the hub cannot be reached."""
    if storage.is_s3(path):
        return storage.materialize(path, storage_cfg, kind="models"), None
    if Path(path).exists():
        return Path(path), None
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(
            path, revision=revision, allow_patterns=list(CONFIG_FILES) + ["*/*.json", "*/*.txt"],
            local_files_only=offline,
        ))
        return folder, folder.name  # snapshots/<commit>
    except Exception:  # offline and not cached: the loader will say what is missing
        return None, None


def folder_fingerprint(folder: Path, subfolders: Optional[Iterable[str]] = None) -> str:
    """Hash of config files (content) and weight files (size + first and last MiB) under
    ``folder``, or only under the given subfolders: retraining a local model in place changes
    it without hashing gigabytes."""
    entries = []
    roots = [folder] if subfolders is None else [folder / s for s in subfolders]
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
                continue
            rel = str(path.relative_to(folder))
            if path.suffix in WEIGHT_SUFFIXES:
                entries.append((rel, "weights", _weights_fingerprint(path)))
            elif any(path.match(p) for p in CONFIG_FILES):
                entries.append((rel, "config", bytes_digest(path.read_bytes())))
    return digest(entries)


def _weights_fingerprint(path: Path) -> str:
    size = path.stat().st_size
    h = hasher()
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if size > 2 * _EDGE:
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))
    return h.hexdigest()
