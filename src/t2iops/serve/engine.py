"""The inference core of ``t2iops generate`` and the model server: a base model loaded once, an
adapter (:mod:`.loading`), request checks and generation.

Generation is the evaluation's (:mod:`t2iops.evaluate.sampling`): the same generators built from
the loaded components (:func:`~t2iops.evaluate.sampling.build_generators`), the same scheduler
choice, and one ``torch.Generator`` per image seeded with the request's seed, so an image made
here with ``seed = evaluate.seed + i`` is the evaluation's sample ``i`` at the same size.

Defaults of a request come from the ``evaluate`` settings (steps, guidance, negative prompt,
scheduler, conditioning factor, seed); the conditioning scale from the export's recommended
``usage.adapter_conditioning_scale``, else ``evaluate.conditioning_scales[0]``.

What a request may ask (:class:`Limits`, checked by :meth:`Engine.check` before any work; each
problem is a :class:`BadRequest` naming the field): a prompt of 1 to 2,000 characters (longer
prompts than the text encoder reads, 77 tokens, are truncated by it, as in the evaluation; the
character limit only bounds what a client may send), a condition whose sides are multiples of
the adapter's size multiple and whose area is at most 2048 x 2048 pixels, a scale in [0, 10],
1 to 200 steps, guidance in [0, 50], a seed in [0, 2**63).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import UsageError
from .loading import RUNTIMES, LoadedAdapter, load_adapter

log = logging.getLogger(__name__)

__all__ = ["BadRequest", "GenerateRequest", "Limits", "SamplerSettings", "Base", "LoadedAdapter", "Engine",
           "load_base", "load_adapter", "RUNTIMES"]


class BadRequest(UsageError):
    """A request the engine refuses; the message names the field and the problem."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    condition: Any  # PIL.Image.Image, RGB; its size is the generated image's size
    scale: Optional[float] = None  # adapter_conditioning_scale
    steps: Optional[int] = None  # default evaluate.num_inference_steps
    guidance: Optional[float] = None  # default evaluate.guidance_scale
    seed: Optional[int] = None  # default evaluate.seed
    negative_prompt: Optional[str] = None  # default evaluate.negative_prompt


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int = 2000
    max_pixels: int = 2048 * 2048
    max_scale: float = 10.0
    max_steps: int = 200
    max_guidance: float = 50.0
    max_seed: int = 2**63 - 1


@dataclass(frozen=True)
class SamplerSettings:
    """The sampler of one request; the field names are the ``evaluate`` settings' (what
    :func:`t2iops.evaluate.sampling.generate` reads)."""

    scheduler: str
    num_inference_steps: int
    guidance_scale: float
    negative_prompt: str
    conditioning_factor: float
    seed: int
    conditioning_scale: Optional[float] = None  # None: the adapter's recommended, else conditioning_scales[0]
    config_scale: float = 1.0  # evaluate.conditioning_scales[0]

    @classmethod
    def from_config(cls, cfg: Any) -> "SamplerSettings":
        ev = cfg.evaluate
        return cls(scheduler=ev.scheduler, num_inference_steps=int(ev.num_inference_steps),
                   guidance_scale=float(ev.guidance_scale), negative_prompt=ev.negative_prompt or "",
                   conditioning_factor=float(ev.conditioning_factor), seed=int(ev.seed),
                   config_scale=float(ev.conditioning_scales[0]) if ev.conditioning_scales else 1.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Base:
    """The base model, loaded once and shared by every engine built on it (an adapter swap
    builds a new engine on the same Base). ``lock`` serialises generation on its modules."""

    model: Any  # t2iops.models.resolve.BaseModel, on ``device``
    ref: Any  # its BaseModelRef
    device: str
    settings: SamplerSettings
    lock: Any = dataclasses.field(default_factory=threading.Lock, repr=False)

    def describe(self) -> dict:
        return {"base_model": self.ref.to_dict(), "family": self.model.family, "device": self.device,
                "dtype": str(self.model.dtype).replace("torch.", "")}


def load_base(cfg: Any, ref: Any = None, device: Optional[str] = None) -> Base:
    """Load the base model ``ref`` names (default: the ``model.*`` settings; an adapter's own
    record: ``LoadedAdapter.base_reference(cfg.model)``) on ``device`` (default: the
    accelerator when there is one), in fp32 on the CPU. The request defaults are ``cfg.evaluate``'s."""
    from ..devices import default_device, inference_dtype
    from ..models.resolve import load_base_model
    from ..models.reference import BaseModelRef

    ref = ref if ref is not None else BaseModelRef.from_config(cfg.model)
    device = device or default_device().type
    model = load_base_model(ref, cfg.storage, dtype=inference_dtype(ref.dtype, device),
                            local_files_only=cfg.model.local_files_only)
    model.to(device)
    return Base(model=model, ref=ref, device=device, settings=SamplerSettings.from_config(cfg))


class Engine:
    """Generates with ``adapter`` on ``base``; refuses an adapter that does not fit the base."""

    def __init__(self, base: Base, adapter: LoadedAdapter, settings: Optional[SamplerSettings] = None,
                 limits: Optional[Limits] = None):
        from ..evaluate.sampling import build_generators, make_scheduler
        from ..models.family import check_adapter_fits

        self.base, self.adapter = base, adapter
        self.settings = settings or base.settings
        self.limits = limits or Limits()
        check_adapter_fits(adapter.config, base.model.unet_config, vae_scale_factor=base.model.vae_scale_factor)
        make_scheduler(base.model.scheduler, self.settings.scheduler)  # an unknown name fails here, not per request
        if adapter.module.dtype == base.model.dtype:  # diffusers warns about any cast, even a no-op one
            adapter.module.to(base.device)
        else:
            adapter.module.to(base.device, base.model.dtype)
        self.size_multiple = math.lcm(int(base.model.vae_scale_factor), int(adapter.total_downscale_factor))
        self.generators = build_generators(base.model, adapter.module, self.settings.scheduler, base.device)

    @property
    def default_scale(self) -> float:
        s = self.settings
        if s.conditioning_scale is not None:
            return float(s.conditioning_scale)
        if self.adapter.recommended_scale is not None:
            return float(self.adapter.recommended_scale)
        return float(s.config_scale)

    # -- checking ------------------------------------------------------------------------
    def check(self, req: GenerateRequest) -> None:
        """Raise :class:`BadRequest` naming the first field that is wrong (see the module docstring)."""
        lim = self.limits
        for field, value, required in (("prompt", req.prompt, True), ("negative_prompt", req.negative_prompt, False)):
            if value is None and not required:
                continue
            if not isinstance(value, str):
                raise BadRequest(field, f"must be a string, got {type(value).__name__}")
            if required and not value.strip():
                raise BadRequest(field, "is empty; describe the image to generate")
            if len(value) > lim.max_prompt_chars:
                raise BadRequest(field, f"{len(value)} characters, more than the limit of {lim.max_prompt_chars}")
        self._check_condition(req.condition)
        _check_number("scale", req.scale, 0.0, lim.max_scale)
        _check_number("steps", req.steps, 1, lim.max_steps, integer=True)
        _check_number("guidance", req.guidance, 0.0, lim.max_guidance)
        _check_number("seed", req.seed, 0, lim.max_seed, integer=True)

    def _check_condition(self, condition: Any) -> None:
        from PIL import Image

        from ..export.ort_adapter import nearest_valid_sizes

        if not isinstance(condition, Image.Image):
            raise BadRequest("condition", f"must be an image, got {type(condition).__name__}")
        width, height = condition.size
        if width * height > self.limits.max_pixels:
            side = math.isqrt(self.limits.max_pixels)
            raise BadRequest("condition", f"{width}x{height} is {width * height} pixels, more than the limit of "
                             f"{self.limits.max_pixels} ({side}x{side}); send a smaller condition")
        m = self.size_multiple
        bad = [f"{name} {value} (nearest valid: {' or '.join(str(s) for s in nearest_valid_sizes(value, m))})"
               for name, value in (("width", width), ("height", height)) if value <= 0 or value % m]
        if bad:
            raise BadRequest("condition", f"{'; '.join(bad)}: each side must be a multiple of {m}, the adapter's "
                             "size multiple; the condition's size is the generated image's")

    # -- generating ----------------------------------------------------------------------
    def resolve(self, req: GenerateRequest) -> dict:
        """The settings ``req`` generates with: its own values, else the defaults."""
        s = self.settings
        return {
            "scale": float(req.scale) if req.scale is not None else self.default_scale,
            "steps": int(req.steps) if req.steps is not None else s.num_inference_steps,
            "guidance": float(req.guidance) if req.guidance is not None else s.guidance_scale,
            "seed": int(req.seed) if req.seed is not None else s.seed,
            "negative_prompt": req.negative_prompt if req.negative_prompt is not None else s.negative_prompt,
            "scheduler": s.scheduler,
            "conditioning_factor": s.conditioning_factor,
            "width": req.condition.size[0],
            "height": req.condition.size[1],
        }

    def generate(self, req: GenerateRequest):
        """One RGB PIL image the condition's size. Thread-safe: generation holds the base's lock."""
        from PIL import Image

        from ..evaluate.sampling import generate

        self.check(req)
        used = self.resolve(req)
        sampler = dataclasses.replace(self.settings, num_inference_steps=used["steps"],
                                      guidance_scale=used["guidance"], negative_prompt=used["negative_prompt"])
        condition = req.condition.convert("RGB")
        with self.base.lock:
            images = generate(self.generators, [req.prompt], [used["seed"]], (used["height"], used["width"]),
                              sampler, conditions=[condition], scale=used["scale"])
        return Image.fromarray(images[0])

    def describe(self) -> dict:
        return {
            **self.base.describe(),
            "adapter": self.adapter.describe(),
            "size_multiple": self.size_multiple,
            "sampler": {**self.settings.to_dict(), "conditioning_scale": self.default_scale},
            "limits": dataclasses.asdict(self.limits),
        }


def _check_number(field: str, value: Any, low: float, high: float, integer: bool = False) -> None:
    if value is None:
        return
    kind = f"an integer from {low} to {high}" if integer else f"a number from {low:g} to {high:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise BadRequest(field, f"must be {kind}, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise BadRequest(field, f"{value!r} is out of range: give {kind}")
