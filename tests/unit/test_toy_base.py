"""The toy SDXL base: colour check, a few real training steps end to end, and the saved folder
loaded by the stock diffusers pipelines (with and without a T2I-Adapter)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from t2iops.config import ModelConfig, load_config
from t2iops.data.synth import PALETTE, render_sample, sample_rng
from t2iops.errors import ModelError
from t2iops.models.toy_colours import colour_accuracy, colour_pairs, judge_colours

TINY_RUN = [
    "toy_base.vae_steps=2",
    "toy_base.unet_steps=2",
    "toy_base.num_samples=32",
    "toy_base.batch_size=4",
    "toy_base.vae_batch_size=4",
    "toy_base.eval_samples=3",
    "toy_base.eval_steps=2",
    "toy_base.num_threads=1",
]


# ---------------------------------------------------------------------------------------
# Colour check
def _rendered(n: int, resolution: int = 64):
    cfg = load_config()
    images, pairs = [], []
    for i in range(n):
        image, _, meta = render_sample(sample_rng(7, i), resolution, cfg.data.synth)
        images.append(image)
        pairs.append((meta["color"], meta["background"]))
    return images, pairs


def test_colour_check_reads_rendered_circles_correctly():
    images, pairs = _rendered(40)
    result = colour_accuracy(images, pairs, PALETTE)
    assert result["colour_accuracy"] == 1.0
    assert result["circle_accuracy"] == result["background_accuracy"] == 1.0
    assert all(s["ok"] for s in result["samples"])


def test_colour_check_fails_swapped_colours_and_blank_images():
    images, pairs = _rendered(40)
    swapped = [(background, circle) for circle, background in pairs]
    assert colour_accuracy(images, swapped, PALETTE)["colour_accuracy"] == 0.0
    blank = Image.new("RGB", (64, 64), PALETTE["red"])
    assert judge_colours(blank, PALETTE) == ("red", None)
    assert colour_accuracy([blank], [("blue", "red")], PALETTE)["colour_accuracy"] == 0.0


def test_colour_check_tolerates_noise_and_uses_nearest_palette_colour():
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64, 3), dtype=np.float32) + PALETTE["gray"]
    image[20:40, 24:44] = PALETTE["cyan"]
    noisy = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    assert judge_colours(Image.fromarray(noisy), PALETTE) == ("gray", "cyan")


def test_colour_pairs_are_distinct_and_seeded():
    pairs = colour_pairs(list(PALETTE), 50, seed=3)
    assert pairs == colour_pairs(list(PALETTE), 50, seed=3)
    assert all(c != b and c in PALETTE and b in PALETTE for c, b in pairs)
    with pytest.raises(ValueError, match="2 images but 1"):
        colour_accuracy([Image.new("RGB", (8, 8))] * 2, [("red", "blue")], PALETTE)


# ---------------------------------------------------------------------------------------
# A few real training steps, then the stock pipelines on the saved folder
@pytest.fixture(scope="module")
def trained_toy(tmp_path_factory):
    from t2iops.models.toy_base import train_toy_base

    out = tmp_path_factory.mktemp("toy") / "toy-base"
    report = train_toy_base(str(out), load_config(None, TINY_RUN))
    return out, report


@pytest.mark.slow
def test_toy_base_publishes_a_diffusers_folder_and_report(trained_toy):
    out, report = trained_toy
    for name in ("model_index.json", "_manifest.json", "config.resolved.yaml", "samples.png", "toy_base_report.json"):
        assert (out / name).is_file(), name
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (out / sub).is_dir(), sub
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    on_disk = json.loads((out / "toy_base_report.json").read_text())
    assert on_disk["steps"] == {"vae": 2, "unet": 2, "batch_size": 4}
    assert 0.0 <= on_disk["colour_accuracy"] <= 1.0 and len(on_disk["samples"]) == 3
    assert on_disk["parameters"]["unet"] > 100_000
    assert on_disk["times"]["train_cpu_s"] > 0
    assert report["colour_accuracy"] == on_disk["colour_accuracy"]
    with Image.open(out / "samples.png") as grid:
        assert grid.width >= 3 * 64
    unet_cfg = json.loads((out / "unet" / "config.json").read_text())
    assert unet_cfg["addition_embed_type"] == "text_time"
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction" and sched["rescale_betas_zero_snr"] is True
    vae_cfg = json.loads((out / "vae" / "config.json").read_text())
    assert vae_cfg["scaling_factor"] != 1.0  # measured from the trained latents


@pytest.mark.slow
def test_saved_toy_base_samples_with_stock_sdxl_pipeline(trained_toy):
    import torch
    from diffusers import StableDiffusionXLPipeline

    out, _ = trained_toy
    pipe = StableDiffusionXLPipeline.from_pretrained(str(out))
    pipe.set_progress_bar_config(disable=True)
    for tokenizer in (pipe.tokenizer, pipe.tokenizer_2):
        for colour in PALETTE:
            assert len(tokenizer(colour, add_special_tokens=False).input_ids) == 1, colour
    image = pipe(
        "red circle with blue background",
        height=64,
        width=64,
        num_inference_steps=2,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (64, 64)
    assert np.asarray(image).std() > 0  # a real decoded image, not a constant fill


@pytest.mark.slow
def test_training_text_encoding_matches_the_pipeline(trained_toy):
    """The UNet was trained on embeddings computed by toy_components.encode_text; sampling uses
    the pipeline's encode_prompt and t2iops.models.text.encode_prompts. They must agree."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    from t2iops.models import toy_components as parts
    from t2iops.models.resolve import load_base_model
    from t2iops.models.text import encode_prompts

    out, _ = trained_toy
    prompts = ["red circle with blue background", "gray circle with pink background"]
    pipe = StableDiffusionXLPipeline.from_pretrained(str(out))
    with torch.no_grad():
        ids = [parts.token_ids(t, prompts) for t in (pipe.tokenizer, pipe.tokenizer_2)]
        embeds, pooled = parts.encode_text(pipe.text_encoder, pipe.text_encoder_2, *ids)
        ref_embeds, _, ref_pooled, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
    torch.testing.assert_close(embeds, ref_embeds)
    torch.testing.assert_close(pooled, ref_pooled)
    base = load_base_model(ModelConfig(base_model=str(out), dtype="fp32"), components=("text_encoders",))
    ours = encode_prompts(base, prompts)
    torch.testing.assert_close(ours["prompt_embeds"], embeds)
    torch.testing.assert_close(ours["pooled_prompt_embeds"], pooled)


@pytest.mark.slow
def test_derived_t2i_adapter_fits_and_runs_in_the_sdxl_adapter_pipeline(trained_toy):
    import torch
    from diffusers import StableDiffusionXLAdapterPipeline

    from t2iops.models.family import build_adapter, check_adapter_fits
    from t2iops.models.resolve import load_base_model

    out, _ = trained_toy
    model_cfg = ModelConfig(base_model=str(out))
    base = load_base_model(model_cfg, components=("unet", "vae"))
    assert base.family == "sdxl"
    adapter = build_adapter(base, model_cfg)
    assert adapter.config.adapter_type == "full_adapter_xl"
    check_adapter_fits(adapter, base, resolution=64)
    pipe = StableDiffusionXLAdapterPipeline.from_pretrained(str(out), adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    condition = Image.new("RGB", (64, 64))
    image = pipe(
        "red circle with blue background",
        image=condition,
        height=64,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (64, 64)


def test_resolution_that_the_unet_cannot_halve_is_refused(tmp_path):
    from t2iops.models.toy_base import train_toy_base

    cfg = load_config(None, TINY_RUN + ["toy_base.resolution=72"])
    with pytest.raises(ModelError, match="toy_base.resolution 72"):
        train_toy_base(str(tmp_path / "out"), cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.s3
def test_cli_trains_to_s3(s3_bucket, capsys):
    from t2iops import storage
    from t2iops.cli import main

    endpoint, bucket = s3_bucket
    uri = f"s3://{bucket}/models/toy"
    rc = main(["toy-base", "--out", uri, "-S", f"storage.endpoint_url={endpoint}"] + sum((["-S", o] for o in TINY_RUN), []))
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == uri and summary["steps"]["unet"] == 2
    cfg = load_config(None, [f"storage.endpoint_url={endpoint}"])
    manifest = storage.read_manifest(uri, cfg)
    assert "unet/diffusion_pytorch_model.safetensors" in manifest["files"]
    assert "toy_base_report.json" in manifest["files"]
