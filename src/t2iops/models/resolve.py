"""Find and load a base model: hub id, local diffusers folder or ``s3://`` prefix.

Every way in ends at the same ``from_pretrained`` calls (diffusers ``UNet2DConditionModel`` /
``AutoencoderKL`` / scheduler, transformers ``CLIPTextModel(WithProjection)`` / ``CLIPTokenizer``)
on a local folder or a hub id, so tiny test models, the toy base and real SD1.5/SDXL checkpoints
take one code path:

* ``s3://bucket/prefix``: downloaded once into ``<cache>/models/<hash of keys + ETags>`` by
  :func:`t2iops.storage.materialize` (a file lock makes concurrent processes share one copy);
* an existing local folder: used as it is;
* otherwise ``org/name``: a Hugging Face hub id (``revision``, ``variant`` apply), read from the
  HF cache when offline (``HF_HUB_OFFLINE=1`` or ``model.local_files_only``).

Whatever goes wrong, the caller gets a :class:`ModelError` naming the model and the ways to
provide it, not an HTTP traceback.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from .. import storage
from ..errors import ModelError
from .family import PIPELINES, detect_family, vae_scale_factor_of

log = logging.getLogger(__name__)

ALL_COMPONENTS = ("unet", "vae", "text_encoders", "tokenizers", "scheduler")
DEFAULT_COMPONENTS = ("unet", "vae", "text_encoders", "scheduler")
SDXL_FP16_VAE = "madebyollin/sdxl-vae-fp16-fix"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

HOW_TO_PROVIDE = (
    "Provide the model in one of three ways: (1) a hub id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5)"
    " with network access, or already in the Hugging Face cache (HF_HOME) when offline; (2) a local"
    " diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), e.g. one"
    " written by save_pretrained or `t2iops model tiny`; (3) an s3:// prefix holding such a folder"
    " (storage.endpoint_url for S3-compatible stores)."
)


@dataclass
class BaseModel:
    """A loaded base model. ``text_encoders`` / ``tokenizers`` hold one entry for sd15, two for sdxl."""

    family: str
    path: str  # the local folder or hub id that from_pretrained read
    unet_config: dict
    vae_scale_factor: int
    unet: Any = None
    vae: Any = None
    text_encoders: list = field(default_factory=list)
    tokenizers: list = field(default_factory=list)
    scheduler: Any = None
    source: str = ""  # as configured (may be an s3:// URI)
    dtype: Any = None

    @property
    def pipeline_class_name(self) -> str:
        return PIPELINES[self.family]

    def to(self, device) -> "BaseModel":
        for module in [self.unet, self.vae, *self.text_encoders]:
            if module is not None:
                module.to(device)
        return self

    def adapter_pipeline(self, adapter, **kwargs):
        """The family's diffusers adapter pipeline built from these components (all must be loaded)."""
        import diffusers

        missing = [n for n in ("unet", "vae", "scheduler") if getattr(self, n) is None]
        want = 2 if self.family == "sdxl" else 1
        if len(self.text_encoders) < want or len(self.tokenizers) < want:
            missing.append("text_encoders/tokenizers")
        if missing:
            raise ModelError(f"cannot build a pipeline from {self.source or self.path}: not loaded: {', '.join(missing)}")
        cls = getattr(diffusers, self.pipeline_class_name)
        if self.family == "sdxl":
            return cls(
                vae=self.vae,
                text_encoder=self.text_encoders[0],
                text_encoder_2=self.text_encoders[1],
                tokenizer=self.tokenizers[0],
                tokenizer_2=self.tokenizers[1],
                unet=self.unet,
                adapter=adapter,
                scheduler=self.scheduler,
                **kwargs,
            )
        return cls(
            vae=self.vae,
            text_encoder=self.text_encoders[0],
            tokenizer=self.tokenizers[0],
            unet=self.unet,
            adapter=adapter,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **kwargs,
        )


# ---------------------------------------------------------------------------------------
# Where a model lives
def hub_offline(model_cfg: Any = None) -> bool:
    if getattr(model_cfg, "local_files_only", False):
        return True
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


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


def _not_available(
    ref: str, location: str, kind: str, model_cfg: Any, exc: BaseException, what: str, component: Optional[str] = None
) -> ModelError:
    cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    part = f" ({component}/)" if component else ""
    variant = getattr(model_cfg, "variant", None)
    hint = (
        f" model.variant={variant!r} is set: the files may only exist without that variant (unset model.variant)."
        if variant and component not in (None, "tokenizer", "tokenizer_2", "scheduler")
        else ""
    )
    if kind == "hub":
        offline = hub_offline(model_cfg)
        where = (
            f"{what} {ref!r}{part} is not a local folder and is not in the Hugging Face cache"
            + (" (offline: HF_HUB_OFFLINE=1 or model.local_files_only)" if offline else " and could not be downloaded")
        )
        rev = getattr(model_cfg, "revision", None)
        if rev:
            where += f" at revision {rev!r}"
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


def _torch_dtype(dtype: Any, model_cfg: Any):
    import torch

    if dtype is None:
        dtype = getattr(model_cfg, "dtype", "fp32") or "fp32"
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype), str(dtype).replace("torch.", ""))
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ModelError(f"model.dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    return value


# ---------------------------------------------------------------------------------------
# Loading
def load_base_model(
    model_cfg: Any,
    storage_cfg: Any = None,
    dtype: Any = None,
    components: Iterable[str] = DEFAULT_COMPONENTS,
) -> BaseModel:
    """Load the components of ``model_cfg.base_model`` (see module doc for the ways to name it).

    ``components`` is any of unet, vae, text_encoders, tokenizers, scheduler (tokenizers come
    with text_encoders). The family and the VAE's downscale factor are always read from the
    configs, so a BaseModel without weights still knows its shapes. ``dtype`` overrides
    ``model_cfg.dtype``.
    """
    components = set(components)
    unknown = components - set(ALL_COMPONENTS)
    if unknown:
        raise ModelError(f"unknown components {sorted(unknown)}; choose from {', '.join(ALL_COMPONENTS)}")
    ref = model_cfg.base_model
    location, kind = resolve_model_path(ref, storage_cfg)
    torch_dtype = _torch_dtype(dtype, model_cfg)
    hub_kwargs: dict[str, Any] = {}
    if kind == "hub":
        hub_kwargs["local_files_only"] = hub_offline(model_cfg)
        if getattr(model_cfg, "revision", None):
            hub_kwargs["revision"] = model_cfg.revision
    variant = getattr(model_cfg, "variant", None)

    def load(cls, subfolder: Optional[str], weights: bool = True, **extra):
        kwargs = dict(hub_kwargs, **extra)
        if subfolder:
            kwargs["subfolder"] = subfolder
        if weights:
            kwargs["torch_dtype"] = torch_dtype
            if variant:
                kwargs["variant"] = variant
        try:
            return cls.from_pretrained(location, **kwargs)
        except Exception as exc:
            raise _not_available(ref, location, kind, model_cfg, exc, "base model", subfolder) from exc

    from diffusers import AutoencoderKL, UNet2DConditionModel

    try:
        unet_config = dict(UNet2DConditionModel.load_config(location, subfolder="unet", **hub_kwargs))
    except Exception as exc:
        raise _not_available(ref, location, kind, model_cfg, exc, "base model", "unet") from exc
    family = detect_family(unet_config)
    log.info("base model %s: family %s (%s)", ref, family, location if kind != "hub" else "hub")

    vae_ref = getattr(model_cfg, "vae", None)
    if family == "sdxl" and str(torch_dtype) == "torch.float16" and not vae_ref and "vae" in components:
        log.warning(
            "SDXL's own VAE overflows (NaN/black images) in fp16: set model.vae=%s, or use model.dtype=fp32/bf16",
            SDXL_FP16_VAE,
        )
    if vae_ref:
        vae_location, vae_kind, vae_kwargs = _vae_override(vae_ref, model_cfg, storage_cfg)
        try:
            vae_config = dict(AutoencoderKL.load_config(vae_location, **vae_kwargs))
        except Exception as exc:
            raise _not_available(vae_ref, vae_location, vae_kind, model_cfg, exc, "VAE") from exc
    else:
        try:
            vae_config = dict(AutoencoderKL.load_config(location, subfolder="vae", **hub_kwargs))
        except Exception as exc:
            raise _not_available(ref, location, kind, model_cfg, exc, "base model", "vae") from exc

    base = BaseModel(
        family=family,
        path=location,
        unet_config=unet_config,
        vae_scale_factor=vae_scale_factor_of(vae_config),
        source=ref,
        dtype=torch_dtype,
    )
    if "unet" in components:
        base.unet = load(UNet2DConditionModel, "unet")
    if "vae" in components:
        if vae_ref:
            try:
                base.vae = AutoencoderKL.from_pretrained(vae_location, torch_dtype=torch_dtype, **vae_kwargs)
            except Exception as exc:
                raise _not_available(vae_ref, vae_location, vae_kind, model_cfg, exc, "VAE") from exc
        else:
            base.vae = load(AutoencoderKL, "vae")
    if "text_encoders" in components or "tokenizers" in components:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        names = [("text_encoder", "tokenizer", CLIPTextModel)]
        if family == "sdxl":
            names.append(("text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection))
        for enc_name, tok_name, enc_cls in names:
            base.tokenizers.append(load(CLIPTokenizer, tok_name, weights=False))
            if "text_encoders" in components:
                base.text_encoders.append(load(enc_cls, enc_name))
    if "scheduler" in components:
        base.scheduler = load_scheduler(location, model_cfg, hub_kwargs, ref=ref, kind=kind)
    for module in [base.unet, base.vae, *base.text_encoders]:
        if module is not None:
            module.eval()
    return base


def load_scheduler(location: str, model_cfg: Any = None, hub_kwargs: Optional[dict] = None, ref: str = "", kind: str = "local"):
    """The scheduler named in ``scheduler/scheduler_config.json`` (its ``_class_name``)."""
    import diffusers

    try:
        config = diffusers.DDPMScheduler.load_config(location, subfolder="scheduler", **(hub_kwargs or {}))
    except Exception as exc:
        raise _not_available(ref or location, location, kind, model_cfg, exc, "base model", "scheduler") from exc
    name = config.get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ModelError(f"{ref or location}: scheduler class {name!r} is unknown to diffusers {diffusers.__version__}")
    return cls.from_config(config)


def _vae_override(vae_ref: str, model_cfg: Any, storage_cfg: Any):
    """``(location, kind, from_pretrained kwargs)`` for ``model.vae``: a VAE folder (config.json at
    its root, like madebyollin/sdxl-vae-fp16-fix) or a whole diffusers model (its vae/ subfolder)."""
    from diffusers import AutoencoderKL

    location, kind = resolve_model_path(vae_ref, storage_cfg, what="VAE")
    kwargs: dict[str, Any] = {}
    if kind == "hub":
        kwargs["local_files_only"] = hub_offline(model_cfg)
        try:
            AutoencoderKL.load_config(location, **kwargs)
        except Exception:
            kwargs["subfolder"] = "vae"
    elif not (Path(location) / "config.json").exists():
        if (Path(location) / "vae" / "config.json").exists():
            kwargs["subfolder"] = "vae"
        else:
            raise ModelError(f"VAE {vae_ref!r}: {location} has neither config.json nor vae/config.json")
    return location, kind, kwargs


def load_adapter(ref: str, model_cfg: Any = None, storage_cfg: Any = None, dtype: Any = None):
    """A ``T2IAdapter`` from a folder (``config.json`` at its root, or a training output with
    ``adapter/``), an s3:// prefix or a hub id."""
    from diffusers import T2IAdapter

    location, kind = resolve_model_path(ref, storage_cfg, what="adapter")
    kwargs: dict[str, Any] = {"torch_dtype": _torch_dtype(dtype, model_cfg)}
    if kind == "hub":
        kwargs["local_files_only"] = hub_offline(model_cfg)
    elif not (Path(location) / "config.json").exists() and (Path(location) / "adapter" / "config.json").exists():
        kwargs["subfolder"] = "adapter"
    try:
        return T2IAdapter.from_pretrained(location, **kwargs)
    except Exception as exc:
        raise _not_available(ref, location, kind, model_cfg, exc, "adapter") from exc
