"""The tiny models work with the real diffusers adapter pipelines, and our prompt encoding matches
the pipelines' own encode_prompt."""
import numpy as np
import pytest
import torch
from PIL import Image

from t2iops.config import ModelConfig
from t2iops.models.family import build_adapter
from t2iops.models.resolve import load_base_model
from t2iops.models.text import encode_prompts

PROMPTS = ["red circle with blue background", "a purple zebra"]


def _condition(px: int = 64) -> Image.Image:
    img = np.zeros((px, px, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:px, :px]
    ring = np.abs(np.hypot(yy - px / 2, xx - px / 2) - px / 4) < 1.5
    img[ring] = 255
    return Image.fromarray(img)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_adapter_pipeline_from_pretrained_runs_two_steps(request, family):
    import diffusers

    path = request.getfixturevalue(f"tiny_{family}_path")
    base = load_base_model(ModelConfig(base_model=path, dtype="fp32"),
                           components=("unet", "vae", "text_encoders", "scheduler"))
    adapter = build_adapter(base, ModelConfig(num_res_blocks=1))
    cls = getattr(diffusers, base.generator_class_name)
    pipe = cls.from_pretrained(path, adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler) is type(base.scheduler)

    out = pipe(
        PROMPTS[0],
        image=_condition(64),
        height=64,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    )
    image = out.images[0]
    assert isinstance(image, Image.Image) and image.size == (64, 64)
    assert np.asarray(image).std() > 0  # random weights draw noise, but not a blank canvas

    # Our encoding is exactly what the pipeline feeds the UNet.
    ours = encode_prompts(base, PROMPTS)
    if family == "sd15":
        embeds, _ = pipe.encode_prompt(PROMPTS, torch.device("cpu"), 1, False)
        assert ours.keys() == {"prompt_embeds"}
        torch.testing.assert_close(ours["prompt_embeds"], embeds)
    else:
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, device=torch.device("cpu"), do_classifier_free_guidance=False)
        torch.testing.assert_close(ours["prompt_embeds"], embeds)
        torch.testing.assert_close(ours["pooled_prompt_embeds"], pooled)
        assert ours["prompt_embeds"].shape == (2, base.tokenizers[0].model_max_length, base.unet.config.cross_attention_dim)


def test_generator_built_from_loaded_components(tiny_sd15_path):
    base = load_base_model(ModelConfig(base_model=tiny_sd15_path, dtype="fp32"),
                           components=("unet", "vae", "text_encoders", "scheduler"))
    adapter = build_adapter(base, ModelConfig(adapter_type="light_adapter", num_res_blocks=1))
    pipe = base.generator(adapter)
    images = pipe(
        PROMPTS, image=[_condition(32)] * 2, height=32, width=32, num_inference_steps=1, output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
