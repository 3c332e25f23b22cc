"""Where a model lives: hub id, local diffusers folder or ``s3://`` prefix, and what "offline" means.

This module knows nothing about model families, so both :mod:`t2iops.models.family` (which may
load a pretrained adapter) and :mod:`t2iops.models.resolve` (which loads base models) import it
without importing each other.

* ``s3://bucket/prefix``: downloaded once into ``<cache>/models/<hash of keys + ETags>`` by
  :func:`t2iops.storage.materialize` (a file lock makes concurrent processes share one copy);
* an existing local folder: used as it is;
* otherwise ``org/name``: a Hugging Face hub id, read from the HF cache when offline.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional

from .. import storage
from ..errors import ModelError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# huggingface_hub's own reading of its boolean environment variables
_TRUE = ("1", "true", "yes", "on")

HOW_TO_PROVIDE = (
    "Provide the model in one of three ways: (1) a hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5)"
    " with network access, or already in the Hugging Face cache (HF_HOME) when offline; (2) a local"
    " diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), e.g. one"
    " written by save_pretrained or `t2iops model tiny`; (3) an s3:// prefix holding such a folder"
    " (storage.endpoint_url for S3-compatible stores)."
)


def is_offline(local_files_only: bool = False) -> bool:
    """Whether the hub must not be contacted: ``model.local_files_only`` or ``HF_HUB_OFFLINE``
    set to 1/true/yes/on (``HF_HUB_OFFLINE=0`` means online, as in huggingface_hub)."""
    if local_files_only:
        return True
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def resolve_model_path(ref: str, storage_cfg: Any = None, what: str = "base model") -> tuple[str, str]:
    """``(location, kind)`` for ``ref``: kind is ``local`` (location: a folder), ``s3`` (location:
    the local cache folder) or ``hub`` (location: the hub id for from_pretrained)."""
    ref = str(ref).strip()
    if not ref:
        raise ModelError(f"no {what} given (model.base_model is empty). {HOW_TO_PROVIDE}")
    if storage.is_s3(ref):
        try:
            local = storage.materialize(ref, storage_cfg, kind="models")
        except FileNotFoundError:
            raise ModelError(f"{what} {ref}: nothing found under this s3:// prefix. {HOW_TO_PROVIDE}") from None
        except Exception as exc:  # botocore / network errors: one clear line, cause kept
            endpoint = getattr(getattr(storage_cfg, "storage", storage_cfg), "endpoint_url", None)
            raise ModelError(
                f"{what} {ref}: cannot download from S3 (endpoint {endpoint or 'AWS default'}):"
                f" {type(exc).__name__}: {exc}"
            ) from exc
        return str(local), "s3"
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{what} {ref} is a file; expected a diffusers folder. {HOW_TO_PROVIDE}")
        return str(path), "local"
    if _HUB_ID.match(ref) and not ref.startswith((".", "~")):
        return ref, "hub"
    raise ModelError(f"{what} {ref!r}: no such local folder, and it is not a hub id (org/name). {HOW_TO_PROVIDE}")


def not_available(
    ref: str, location: str, kind: str, exc: BaseException, what: str, component: Optional[str] = None, *,
    variant: Optional[str] = None, revision: Optional[str] = None, offline: bool = False,
) -> ModelError:
    """The one error for a model that cannot be loaded: names it, the part, and how to provide it."""
    cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    part = f" ({component}/)" if component else ""
    hint = (
        f" model.variant={variant!r} is set: the files may only exist without that variant (unset model.variant)."
        if variant and component not in (None, "tokenizer", "tokenizer_2", "scheduler")
        else ""
    )
    if kind == "hub":
        where = (
            f"{what} {ref!r}{part} is not a local folder and is not in the Hugging Face cache"
            + (" (offline: HF_HUB_OFFLINE=1 or model.local_files_only)" if offline else " and could not be downloaded")
        )
        if revision:
            where += f" at revision {revision!r}"
        if offline:
            # The library's own message ("... does not appear to have a file named config.json")
            # misleads here: the model is simply not cached.
            return ModelError(f"{where}.{hint} {HOW_TO_PROVIDE}")
        return ModelError(f"{where}: {type(exc).__name__}: {cause}.{hint} {HOW_TO_PROVIDE}")
    source = f"{location}, downloaded from {ref}" if kind == "s3" else location
    return ModelError(
        f"{what} {ref!r}: cannot load{part or ' it'} from {source}: {type(exc).__name__}: {cause}.{hint}"
        f" Expected a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."
    )


def load_adapter(ref: str, model_cfg: Any = None, storage_cfg: Any = None, dtype: Any = None):
    """A ``T2IAdapter`` from a folder (``config.json`` at its root, or a training output with
    ``adapter/``), an s3:// prefix or a hub id."""
    from diffusers import T2IAdapter

    from ..devices import torch_dtype

    location, kind = resolve_model_path(ref, storage_cfg, what="adapter")
    kwargs: dict[str, Any] = {"torch_dtype": torch_dtype(dtype or getattr(model_cfg, "dtype", None) or "fp32")}
    offline = is_offline(bool(getattr(model_cfg, "local_files_only", False)))
    if kind == "hub":
        kwargs["local_files_only"] = offline
    elif not (Path(location) / "config.json").exists() and (Path(location) / "adapter" / "config.json").exists():
        kwargs["subfolder"] = "adapter"
    try:
        return T2IAdapter.from_pretrained(location, **kwargs)
    except Exception as exc:
        raise not_available(ref, location, kind, exc, "adapter", offline=offline) from exc
