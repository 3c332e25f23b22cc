"""Load a base model from its :class:`~t2iops.models.reference.BaseModelRef`: the one loader.

Every stage ends here (encode with the reference it just resolved, train with the cache's,
evaluate and export with the training run's), and every way of naming a model (hub id, local
diffusers folder, ``s3://`` prefix: see :mod:`t2iops.models.locate`) ends at the same
``from_pretrained`` calls (diffusers ``UNet2DConditionModel`` / ``AutoencoderKL`` / scheduler,
transformers ``CLIPTextModel(WithProjection)`` / ``CLIPTokenizer``), so tiny test models, the toy
base and real SD1.5/SDXL checkpoints take one code path. A hub model is loaded at the commit the
reference resolved (or its revision when the commit is unknown).

Whatever goes wrong, the caller gets a :class:`ModelError` naming the model and the ways to
provide it, not an HTTP traceback.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from ..errors import ModelError
from .family import detect_family, vae_scale_factor_of
from .locate import HOW_TO_PROVIDE, is_offline, load_adapter, not_available, resolve_model_path
from .reference import BaseModelRef

log = logging.getLogger(__name__)

__all__ = ["BaseModel", "BaseModelRef", "HOW_TO_PROVIDE", "is_offline", "load_adapter", "load_base_model",
           "load_scheduler", "resolve_model_path"]

ALL_COMPONENTS = ("unet", "vae", "text_encoders", "tokenizers", "scheduler")
DEFAULT_COMPONENTS = ("unet", "vae", "text_encoders", "scheduler")
SDXL_FP16_VAE = "madebyollin/sdxl-vae-fp16-fix"


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
    ref: Optional[BaseModelRef] = None  # what was loaded, to record in the next artifact

    @property
    def generator_class_name(self) -> str:
        """The diffusers class of the family's adapter generator (what users load it with)."""
        from .generator import ADAPTER_GENERATORS

        return ADAPTER_GENERATORS[self.family]

    def to(self, device) -> "BaseModel":
        for module in [self.unet, self.vae, *self.text_encoders]:
            if module is not None:
                module.to(device)
        return self

    def generator(self, adapter=None, scheduler=None):
        """The family's diffusers generator (with ``adapter``, or the plain text-to-image one)
        built from these components (all must be loaded)."""
        from .generator import build_generator

        missing = [n for n in ("unet", "vae", "scheduler") if getattr(self, n) is None]
        want = 2 if self.family == "sdxl" else 1
        if len(self.text_encoders) < want or len(self.tokenizers) < want:
            missing.append("text_encoders/tokenizers")
        if missing:
            raise ModelError(f"cannot build a generator from {self.source or self.path}: not loaded: {', '.join(missing)}")
        return build_generator(self.family, unet=self.unet, vae=self.vae, scheduler=scheduler or self.scheduler,
                               text_encoders=self.text_encoders, tokenizers=self.tokenizers, adapter=adapter)


# ---------------------------------------------------------------------------------------
# Loading
@dataclass
class _Source:
    """Where one model (the base, or the VAE override) is read from, and how."""

    ref: str
    location: str
    kind: str
    hub_kwargs: dict
    variant: Optional[str] = None
    offline: bool = False

    def fail(self, exc: BaseException, what: str = "base model", component: Optional[str] = None) -> ModelError:
        return not_available(self.ref, self.location, self.kind, exc, what, component, variant=self.variant,
                             revision=self.hub_kwargs.get("revision"), offline=self.offline)


def load_base_model(
    ref: BaseModelRef | Any,
    storage_cfg: Any = None,
    dtype: Any = None,
    components: Iterable[str] = DEFAULT_COMPONENTS,
    local_files_only: bool = False,
) -> BaseModel:
    """Load the ``components`` of the base model ``ref`` names: any of unet, vae, text_encoders,
    tokenizers, scheduler (tokenizers come with text_encoders). The family and the VAE's
    downscale factor are always read from the configs, so a BaseModel without weights still
    knows its shapes. ``ref`` is a :class:`BaseModelRef` (what stages pass: read from their
    input artifact) or ``model.*`` settings (a ModelConfig, for tools and tests; its
    ``local_files_only`` applies). ``dtype`` overrides ``ref.dtype`` (a stage running on the CPU
    passes fp32: :func:`t2iops.devices.inference_dtype`)."""
    from ..devices import torch_dtype

    if not isinstance(ref, BaseModelRef):
        local_files_only = local_files_only or bool(getattr(ref, "local_files_only", False))
        ref = BaseModelRef.from_config(ref)
    components = set(components)
    unknown = components - set(ALL_COMPONENTS)
    if unknown:
        raise ModelError(f"unknown components {sorted(unknown)}; choose from {', '.join(ALL_COMPONENTS)}")
    weights_dtype = torch_dtype(dtype if dtype is not None else ref.dtype)
    source = _base_source(ref, storage_cfg, local_files_only)
    unet_config = _read_config(source, "UNet2DConditionModel", "unet")
    family = detect_family(unet_config)
    log.info("base model %s: family %s (%s)", ref.path, family, source.location if source.kind != "hub" else "hub")
    if family == "sdxl" and str(weights_dtype) == "torch.float16" and not ref.vae and "vae" in components:
        log.warning("SDXL's own VAE overflows (NaN/black images) in fp16: set model.vae=%s, or use model.dtype=fp32/bf16",
                    SDXL_FP16_VAE)
    vae_source = _vae_source(ref.vae, source, storage_cfg) if ref.vae else None
    vae_config = _read_config(vae_source or source, "AutoencoderKL", None if vae_source else "vae",
                              "VAE" if vae_source else "base model")
    base = BaseModel(family=family, path=source.location, unet_config=unet_config,
                     vae_scale_factor=vae_scale_factor_of(vae_config), source=ref.path, dtype=weights_dtype, ref=ref)
    _load_weights(base, source, vae_source, components, weights_dtype)
    return base


def _base_source(ref: BaseModelRef, storage_cfg: Any, local_files_only: bool) -> _Source:
    location, kind = resolve_model_path(ref.path, storage_cfg)
    offline = is_offline(local_files_only)
    hub_kwargs: dict[str, Any] = {}
    if kind == "hub":
        hub_kwargs["local_files_only"] = offline
        if ref.load_revision:
            hub_kwargs["revision"] = ref.load_revision
    return _Source(ref.path, location, kind, hub_kwargs, ref.variant, offline)


def _read_config(source: _Source, class_name: str, subfolder: Optional[str], what: str = "base model") -> dict:
    import diffusers

    kwargs = dict(source.hub_kwargs, **({"subfolder": subfolder} if subfolder else {}))
    try:
        return dict(getattr(diffusers, class_name).load_config(source.location, **kwargs))
    except Exception as exc:
        raise source.fail(exc, what, subfolder) from exc


def _from_pretrained(source: _Source, cls, subfolder: Optional[str], dtype=None, what: str = "base model"):
    """One component; ``dtype`` None for files without weights (tokenizers)."""
    kwargs = dict(source.hub_kwargs)
    if subfolder:
        kwargs["subfolder"] = subfolder
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
        if source.variant:
            kwargs["variant"] = source.variant
    try:
        return cls.from_pretrained(source.location, **kwargs)
    except Exception as exc:
        raise source.fail(exc, what, subfolder) from exc


def _load_weights(base: BaseModel, source: _Source, vae_source: Optional[_Source], components: set, dtype) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if "unet" in components:
        base.unet = _from_pretrained(source, UNet2DConditionModel, "unet", dtype)
    if "vae" in components:
        base.vae = (_from_pretrained(vae_source, AutoencoderKL, vae_source.hub_kwargs.get("subfolder"), dtype, "VAE")
                    if vae_source else _from_pretrained(source, AutoencoderKL, "vae", dtype))
    if "text_encoders" in components or "tokenizers" in components:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        names = [("text_encoder", "tokenizer", CLIPTextModel)]
        if base.family == "sdxl":
            names.append(("text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection))
        for enc_name, tok_name, enc_cls in names:
            base.tokenizers.append(_from_pretrained(source, CLIPTokenizer, tok_name))
            if "text_encoders" in components:
                base.text_encoders.append(_from_pretrained(source, enc_cls, enc_name, dtype))
    if "scheduler" in components:
        base.scheduler = load_scheduler(source.location, source.hub_kwargs, ref=source.ref, kind=source.kind)
    for module in [base.unet, base.vae, *base.text_encoders]:
        if module is not None:
            module.eval()


def load_scheduler(location: str, hub_kwargs: Optional[dict] = None, ref: str = "", kind: str = "local"):
    """The scheduler named in ``scheduler/scheduler_config.json`` (its ``_class_name``)."""
    import diffusers

    try:
        config = diffusers.DDPMScheduler.load_config(location, subfolder="scheduler", **(hub_kwargs or {}))
    except Exception as exc:
        raise not_available(ref or location, location, kind, exc, "base model", "scheduler",
                            offline=bool((hub_kwargs or {}).get("local_files_only"))) from exc
    name = config.get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ModelError(f"{ref or location}: scheduler class {name!r} is unknown to diffusers {diffusers.__version__}")
    return cls.from_config(config)


def _vae_source(vae_ref: str, base: _Source, storage_cfg: Any) -> _Source:
    """Where ``model.vae`` is read from: a VAE folder (config.json at its root, like
    madebyollin/sdxl-vae-fp16-fix) or a whole diffusers model (its vae/ subfolder). The
    ``subfolder`` it needs, if any, rides in ``hub_kwargs``."""
    from diffusers import AutoencoderKL

    location, kind = resolve_model_path(vae_ref, storage_cfg, what="VAE")
    kwargs: dict[str, Any] = {}
    if kind == "hub":
        kwargs["local_files_only"] = base.offline
        try:
            AutoencoderKL.load_config(location, **kwargs)
        except Exception:
            kwargs["subfolder"] = "vae"
    elif not (Path(location) / "config.json").exists():
        if (Path(location) / "vae" / "config.json").exists():
            kwargs["subfolder"] = "vae"
        else:
            raise ModelError(f"VAE {vae_ref!r}: {location} has neither config.json nor vae/config.json")
    # The override is read as it is published: the base model's variant does not apply to it.
    return _Source(vae_ref, location, kind, kwargs, None, base.offline)
