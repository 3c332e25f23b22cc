"""Prompt embeddings the way the diffusers pipelines compute them.

* sd15: the text encoder's last hidden state (``StableDiffusionPipeline.encode_prompt``).
* sdxl: the penultimate hidden states of both encoders, concatenated on the feature axis, plus
  the pooled, projected output of text_encoder_2 (``StableDiffusionXLPipeline.encode_prompt``).

Training caches and evaluation both call :func:`encode_prompts`, so cached embeddings match
what the pipeline feeds the UNet at sampling time.
"""
from __future__ import annotations

from typing import Any, Sequence


def _token_ids(tokenizer, prompts: list[str]):
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_prompts(base: Any, prompts: Sequence[str]) -> dict:
    """``{"prompt_embeds": [B, L, D]}`` and for sdxl also ``"pooled_prompt_embeds": [B, D2]``.

    Runs without gradients on the text encoders' device and dtype; an empty string is a real
    (unconditional) prompt, as in the pipelines when ``negative_prompt=""``.
    """
    import torch

    prompts = [str(p) for p in prompts]
    if not base.text_encoders or len(base.tokenizers) < len(base.text_encoders):
        raise ValueError("encode_prompts needs a BaseModel loaded with components including 'text_encoders'")
    with torch.no_grad():
        if base.family == "sd15":
            encoder, tokenizer = base.text_encoders[0], base.tokenizers[0]
            ids = _token_ids(tokenizer, prompts).to(encoder.device)
            return {"prompt_embeds": encoder(ids)[0]}
        hidden, pooled = [], None
        for tokenizer, encoder in zip(base.tokenizers, base.text_encoders):
            ids = _token_ids(tokenizer, prompts).to(encoder.device)
            out = encoder(ids, output_hidden_states=True)
            # As StableDiffusionXLPipeline: the pooled output that counts is the last encoder's
            # (CLIPTextModelWithProjection's text_embeds).
            pooled = out[0]
            hidden.append(out.hidden_states[-2])
        return {"prompt_embeds": torch.cat(hidden, dim=-1), "pooled_prompt_embeds": pooled}


def sdxl_time_ids(original_size, crop_top_left, target_size, dtype=None):
    """SDXL's micro-conditioning ids ``(orig_h, orig_w, crop_top, crop_left, target_h, target_w)``.

    One sample: ``(h, w), (top, left), (h, w)`` -> tensor [6]. A batch: sequences of pairs (one
    per sample; a single pair is broadcast) -> [B, 6]. Each sample keeps its own size and crop:
    giving the whole batch the first sample's ids is a known bug of the reference script.
    """
    import torch

    dtype = dtype or torch.float32

    def is_pair(x) -> bool:
        return len(x) == 2 and all(isinstance(v, (int, float)) or (hasattr(v, "ndim") and v.ndim == 0) for v in x)

    parts = [original_size, crop_top_left, target_size]
    if all(is_pair(p) for p in parts):
        return torch.tensor([float(v) for p in parts for v in p], dtype=dtype)
    sizes = {len(p) for p in parts if not is_pair(p)}
    if len(sizes) != 1:
        raise ValueError(f"sdxl_time_ids: batch arguments disagree in length: {sorted(sizes)}")
    (n,) = sizes
    rows = []
    for i in range(n):
        row = []
        for p in parts:
            pair = p if is_pair(p) else p[i]
            row.extend(float(v) for v in pair)
        rows.append(row)
    return torch.tensor(rows, dtype=dtype)
