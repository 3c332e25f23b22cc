"""Fingerprints that key the cache: what a dataset version and a base model *are*.

A dataset version hashes every encoded row's id, split, caption and the bytes of both of its
image files. A base model is identified by its path, revision and variant plus a hash of its
configuration files (``model_index.json``, every ``*/config.json``, scheduler and tokenizer
files) and a cheap fingerprint of each weights file (size + first and last MiB), so retraining a
local model in place invalidates the cache without hashing gigabytes. Hub models are read from
their snapshot (config files only, downloaded once); the snapshot's commit hash names the
revision exactly.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Optional

from .. import storage

CONFIG_FILES = ("*.json", "*.txt", "*.model")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt")
_EDGE = 1 << 20


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# Datasets
def row_fingerprint(row) -> dict:
    """id, split, caption and sha256 of the image and condition bytes of one row."""
    return {
        "id": row.id,
        "split": row.split,
        "text": row.text,
        "image": hashlib.sha256(row.image_ref.read_bytes()).hexdigest(),
        "condition": hashlib.sha256(row.condition_ref.read_bytes()).hexdigest(),
    }


def dataset_fingerprints(rows: list, workers: int = 8, progress: bool = True) -> list[dict]:
    from ..progress import progress as progress_bar

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(progress_bar(pool.map(row_fingerprint, rows), total=len(rows), desc="hash rows",
                         disable=not progress, unit="row"))


# ---------------------------------------------------------------------------------------
# Models
def _weights_fingerprint(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if size > 2 * _EDGE:
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))
    return h.hexdigest()


def folder_fingerprint(folder: Path, subfolders: Optional[Iterable[str]] = None) -> str:
    """Hash of config files (content) and weight files (size + edges) under ``folder``, or
    only under the given subfolders."""
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
                entries.append((rel, "config", hashlib.sha256(path.read_bytes()).hexdigest()))
    return digest(entries)


def local_model_dir(path: str, revision: Optional[str], storage_cfg: Any = None,
                    local_files_only: bool = False) -> tuple[Optional[Path], Optional[str]]:
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
            local_files_only=local_files_only or bool(os.environ.get("HF_HUB_OFFLINE")),
        ))
        return folder, folder.name  # snapshots/<commit>
    except Exception:  # offline and not cached: the loader will say what is missing
        return None, None


def model_identity(model_cfg, storage_cfg: Any = None) -> dict:
    """What the cache records about the base model, with separate hashes for the parts that
    feed the text embeddings and the latents."""
    folder, commit = local_model_dir(model_cfg.base_model, model_cfg.revision, storage_cfg,
                                     model_cfg.local_files_only)
    ident: dict[str, Any] = {
        "path": model_cfg.base_model,
        "revision": model_cfg.revision,
        "commit": commit,
        "variant": model_cfg.variant,
        "vae": model_cfg.vae,
        "config_hash": None,
        "force_zeros_for_empty_prompt": None,
    }
    text_parts = ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"]
    if folder is not None:
        ident["config_hash"] = folder_fingerprint(folder)
        ident["text_hash"] = digest([folder_fingerprint(folder, text_parts), model_cfg.variant])
        ident["vae_hash"] = digest([folder_fingerprint(folder, ["vae"]), model_cfg.variant])
        index = folder / "model_index.json"
        if index.exists():
            ident["force_zeros_for_empty_prompt"] = json.loads(index.read_text()).get("force_zeros_for_empty_prompt")
    else:
        ident["text_hash"] = digest([model_cfg.base_model, model_cfg.revision, model_cfg.variant, "text"])
        ident["vae_hash"] = digest([model_cfg.base_model, model_cfg.revision, model_cfg.variant, "vae"])
    if model_cfg.vae:
        vae_folder, vae_commit = local_model_dir(model_cfg.vae, None, storage_cfg, model_cfg.local_files_only)
        ident["vae_hash"] = digest([model_cfg.vae, vae_commit,
                                    folder_fingerprint(vae_folder) if vae_folder is not None else None])
    return ident
