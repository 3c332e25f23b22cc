"""CLIP score (torchmetrics' definition: 100 * cosine of the projected image and caption
embeddings) with weights the user provides: a local folder, an s3:// prefix or a hub id
(``evaluate.clip_model``).

Scores are kept per image so shards merge exactly; the dataset value is their mean clamped at
zero, as ``torchmetrics.multimodal.CLIPScore.compute`` does. We compute the embeddings here
rather than through torchmetrics: torchmetrics 1.9's CLIPScore expects ``get_image_features``
to return a tensor, while transformers 5 returns a model output (``pooler_output`` holds the
projected embedding), so it fails with an AttributeError.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError


class ClipScorer:
    def __init__(self, ref: str, cfg: Any = None, device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        from .. import storage

        location = str(storage.materialize(ref, cfg, kind="models")) if storage.is_s3(ref) else ref
        local = Path(location).exists()
        kwargs = {} if local else {"local_files_only": bool(getattr(cfg.model, "local_files_only", False)) if cfg else False}
        try:
            self.model = CLIPModel.from_pretrained(location, **kwargs).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(location, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(
                f"evaluate.clip_model: cannot load CLIP from {ref} ({type(exc).__name__}: {exc}); "
                "give a folder with a CLIPModel and its processor (save_pretrained), an s3:// copy, or unset it"
            ) from None
        vision = self.model.config.vision_config
        self.backbone = (
            f"{ref} (CLIP ViT, patch {vision.patch_size}, {vision.image_size} px, "
            f"projection {self.model.config.projection_dim})"
        )

    def __call__(self, images_uint8, prompts: list[str]) -> np.ndarray:
        """Per-image CLIP scores of uint8 images ``[B,3,H,W]`` against their prompts."""
        import torch

        device = next(self.model.parameters()).device
        max_len = self.model.config.text_config.max_position_embeddings
        with torch.inference_mode():
            pixels = self.processor(images=[im.cpu() for im in images_uint8], return_tensors="pt")["pixel_values"]
            text = self.processor(text=list(prompts), return_tensors="pt", padding=True, truncation=True,
                                  max_length=max_len)
            image_emb = _embedding(self.model.get_image_features(pixel_values=pixels.to(device)))
            text_emb = _embedding(self.model.get_text_features(input_ids=text["input_ids"].to(device),
                                                               attention_mask=text["attention_mask"].to(device)))
            image_emb = image_emb / image_emb.norm(p=2, dim=-1, keepdim=True)
            text_emb = text_emb / text_emb.norm(p=2, dim=-1, keepdim=True)
            scores = 100 * (image_emb * text_emb).sum(dim=-1)
        return scores.double().cpu().numpy()


def _embedding(output):
    """A tensor (transformers 4) or a model output whose ``pooler_output`` is projected (5)."""
    return output if hasattr(output, "norm") else output.pooler_output


def dataset_clip_score(per_image: np.ndarray) -> float:
    return float(max(np.mean(per_image), 0.0))
