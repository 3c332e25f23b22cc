"""CLIP score (torchmetrics' definition: 100 * cosine of image and caption embeddings) with
weights the user provides: a local folder, an s3:// prefix or a hub id (``evaluate.clip_model``).

Scores are kept per image so shards merge exactly; the dataset value is their mean clamped at
zero, as ``torchmetrics.multimodal.CLIPScore.compute`` does.
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
        from torchmetrics.functional.multimodal.clip_score import _clip_score_update

        with torch.inference_mode():
            scores, _ = _clip_score_update(list(images_uint8), list(prompts), self.model, self.processor)
        return scores.double().cpu().numpy()


def dataset_clip_score(per_image: np.ndarray) -> float:
    return float(max(np.mean(per_image), 0.0))
