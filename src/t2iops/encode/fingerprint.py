"""Fingerprints that key the cache: what a dataset version and a base model *are*.

A dataset version hashes every encoded row's id, split, caption and the bytes of both of its
image files. A base model is identified by its :class:`~t2iops.models.reference.BaseModelRef`
(path, revision, resolved commit, variant, vae, dtype and a hash of its configuration files and
weights fingerprints), resolved here once per encode and saved in the cache index.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..hashing import bytes_digest, digest
from ..models.locate import is_offline
from ..models.reference import folder_fingerprint, local_model_dir, resolve_reference

__all__ = ["dataset_fingerprints", "digest", "folder_fingerprint", "model_identity", "row_fingerprint"]


# ---------------------------------------------------------------------------------------
# Datasets
def row_fingerprint(row) -> dict:
    """id, split, caption and sha256 of the image and condition bytes of one row, and the image's
    displayed ``size`` (height, width; from its header) that picks its bucket."""
    from ..data.images import displayed_size

    width, height = displayed_size(row.image_ref, row.max_pixels)
    return {
        "id": row.id,
        "split": row.split,
        "text": row.text,
        "image": bytes_digest(row.image_ref.read_bytes()),
        "condition": bytes_digest(row.condition_ref.read_bytes()),
        "size": (height, width),
    }


def dataset_fingerprints(rows: list, workers: int = 8, progress: bool = True) -> list[dict]:
    from ..progress import progress as progress_bar

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(progress_bar(pool.map(row_fingerprint, rows), total=len(rows), desc="hash rows",
                         disable=not progress, unit="row"))


# ---------------------------------------------------------------------------------------
# Models
def model_identity(model_cfg, storage_cfg: Any = None) -> dict:
    """The base model's reference (resolved here, once: see :mod:`t2iops.models.reference`) and
    separate hashes of the parts that feed the text embeddings and the latents."""
    ref, folder = resolve_reference(model_cfg, storage_cfg)
    ident: dict[str, Any] = {"ref": ref, "force_zeros_for_empty_prompt": None}
    text_parts = ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"]
    if folder is not None:
        ident["text_hash"] = digest([folder_fingerprint(folder, text_parts), ref.variant])
        ident["vae_hash"] = digest([folder_fingerprint(folder, ["vae"]), ref.variant])
        index = folder / "model_index.json"
        if index.exists():
            ident["force_zeros_for_empty_prompt"] = json.loads(index.read_text()).get("force_zeros_for_empty_prompt")
    else:
        ident["text_hash"] = digest([ref.path, ref.revision, ref.variant, "text"])
        ident["vae_hash"] = digest([ref.path, ref.revision, ref.variant, "vae"])
    if ref.vae:
        offline = is_offline(model_cfg.local_files_only)
        vae_folder, vae_commit = local_model_dir(ref.vae, None, storage_cfg, offline)
        ident["vae_hash"] = digest([ref.vae, vae_commit,
                                    folder_fingerprint(vae_folder) if vae_folder is not None else None])
    return ident
