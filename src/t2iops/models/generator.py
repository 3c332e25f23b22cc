"""The one place that builds a diffusers generator (the diffusers "pipeline" object that turns
prompts into images; in t2iops "pipeline" means the KFP pipeline).

Evaluation, validation during training and the export's end-to-end check all build theirs here
from already loaded modules, so the same components, scheduler and SDXL settings reach every one.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

# The diffusers classes per family: with an adapter, and the plain text-to-image one.
ADAPTER_GENERATORS = {"sd15": "StableDiffusionAdapterPipeline", "sdxl": "StableDiffusionXLAdapterPipeline"}
PLAIN_GENERATORS = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}


def build_generator(
    family: str,
    *,
    unet: Any,
    vae: Any,
    scheduler: Any,
    text_encoders: Sequence[Any] = (None, None),
    tokenizers: Sequence[Any] = (None, None),
    adapter: Any = None,
    force_zeros_for_empty_prompt: Optional[bool] = None,
):
    """A generator for ``family`` (sd15 | sdxl) with ``adapter`` (or without one: the plain
    text-to-image class). Text encoders/tokenizers may be None when the caller passes prompt
    embeddings (validation reads them from the cache). The progress bar is off: callers count
    their own batches."""
    import diffusers

    classes = ADAPTER_GENERATORS if adapter is not None else PLAIN_GENERATORS
    cls = getattr(diffusers, classes[family])
    kwargs: dict[str, Any] = dict(vae=vae, unet=unet, scheduler=scheduler, text_encoder=text_encoders[0],
                                  tokenizer=tokenizers[0])
    if adapter is not None:
        kwargs["adapter"] = adapter
    if family == "sdxl":
        kwargs.update(text_encoder_2=_second(text_encoders), tokenizer_2=_second(tokenizers))
        if force_zeros_for_empty_prompt is not None:
            kwargs["force_zeros_for_empty_prompt"] = bool(force_zeros_for_empty_prompt)
    else:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    generator = cls(**kwargs)
    generator.set_progress_bar_config(disable=True)
    return generator


def _second(items: Sequence[Any]) -> Any:
    return items[1] if len(items) > 1 else None
