"""CLIP score through torchmetrics with locally provided weights.

The model is a tiny *random* CLIPModel saved with save_pretrained: the loading path and the
score's shape/range are real, the values mean nothing about image-text agreement."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from t2iops.errors import ModelError
from t2iops.evaluate.clip_score import ClipScorer, dataset_clip_score


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from t2iops.models.tokenizer import build_clip_tokenizer

    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    tokenizer = build_clip_tokenizer(folder / "tok", ["red circle with blue background", "green"], model_max_length=16)
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.mark.slow
def test_clip_score_per_image_from_a_local_folder(tiny_clip):
    scorer = ClipScorer(tiny_clip)
    assert tiny_clip in scorer.backbone and "patch 8" in scorer.backbone
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    prompts = ["red circle with blue background", "green circle", "blue circle with red background"]
    scores = scorer(images, prompts)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert (np.abs(scores) <= 100).all()
    # Per image: a batch of one gives the same score as inside the batch.
    np.testing.assert_allclose(scorer(images[1:2], prompts[1:2]), scores[1:2], rtol=1e-4, atol=1e-4)

    # Independent check: CLIPModel's forward returns the normalised projected embeddings.
    with torch.inference_mode():
        inputs = scorer.processor(text=prompts, images=list(images), return_tensors="pt", padding=True)
        out = scorer.model(**inputs)
    expected = 100 * (out.image_embeds * out.text_embeds).sum(-1)
    np.testing.assert_allclose(scores, expected.double().numpy(), rtol=1e-4, atol=1e-4)


def test_dataset_clip_score_is_clamped_at_zero_like_torchmetrics():
    assert dataset_clip_score(np.array([-5.0, 1.0])) == 0.0
    assert dataset_clip_score(np.array([20.0, 30.0])) == 25.0


def test_missing_clip_weights_are_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="evaluate.clip_model: cannot load CLIP"):
        ClipScorer(str(tmp_path / "missing-clip"))
