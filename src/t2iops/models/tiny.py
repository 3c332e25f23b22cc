"""Tiny random SD1.5- and SDXL-shaped base models for tests and smoke runs.

They have the real architectures' *shape*: the same component classes, block types and folder
layout (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder(_2)/``, ``tokenizer(_2)/``,
``scheduler/``), so ``StableDiffusionAdapterPipeline.from_pretrained(path, adapter=...)`` and
``StableDiffusionXLAdapterPipeline.from_pretrained(...)`` load them, and our own code reaches
them through the same :func:`t2iops.models.resolve.load_base_model` as a hub model. Only the
sizes are tiny (about 1 M UNet parameters), so a training step at 64 px takes a fraction of a
second on a CPU.

Choices that matter for the adapter:

* VAE with 3 blocks: downscale 4 (real models: 8). Code that hard-codes 8 fails here, which is
  the point; 64 px images give a 16x16 latent.
* SD1.5 shape: down blocks CrossAttn, CrossAttn, Down with channels (32, 64, 64); like the real
  (320, 640, 1280, 1280) the last two channel counts are equal, so both ``full_adapter`` and
  ``light_adapter`` fit.
* SDXL shape: down blocks Down, CrossAttn, CrossAttn (as SDXL), two text encoders whose
  penultimate states are concatenated (cross_attention_dim 64) and ``text_time`` additional
  embeddings fed by text_encoder_2's projection; ``full_adapter_xl`` fits including its mid-block
  residual.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..storage.publishing import usual_modes
from .tokenizer import build_clip_tokenizer

TINY_RESOLUTION = 64
MAX_TOKENS = 32  # shorter than CLIP's 77 on purpose: code must read tokenizer.model_max_length

# Words for the tokenizer when the synthetic dataset's palette is not importable.
FALLBACK_COLOURS = [
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white",
    "gray", "grey", "cyan", "magenta", "teal", "navy", "olive", "maroon", "lime", "gold",
    "silver", "beige", "violet", "indigo", "turquoise", "dark", "light",
]
GENERIC_WORDS = [
    "circle", "with", "background", "a", "an", "the", "on", "of", "and", "in", "photo",
    "image", "picture", "drawing", "shape", "ring", "disc", "small", "large", "big", "plain",
    "solid", "outline", "colored", "coloured", "centered", "simple", "flat",
]


def caption_words() -> list[str]:
    """The words the tiny tokenizers encode as single tokens: the synthetic dataset's colour
    names (``t2iops.data.synth.PALETTE``) plus caption words."""
    try:
        from t2iops.data.synth import PALETTE

        colours = list(PALETTE)
    except ImportError:
        colours = []
    return colours + FALLBACK_COLOURS + GENERIC_WORDS


def _text_encoder_config(vocab_size: int, tokenizer, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,  # SDXL reads the penultimate layer
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TINY_RESOLUTION,
        scaling_factor=scaling_factor,
    )


def _sd15_components(work: Path) -> dict:
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = build_clip_tokenizer(work / "tokenizer", caption_words(), model_max_length=MAX_TOKENS)
    text_encoder = CLIPTextModel(_text_encoder_config(len(tokenizer), tokenizer))
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=32,
    )
    # The scheduler stable-diffusion-v1-5 ships with.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return dict(unet=unet, vae=_vae(0.18215), text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def _sdxl_components(work: Path) -> dict:
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    words = caption_words()
    tokenizer = build_clip_tokenizer(work / "tokenizer", words, model_max_length=MAX_TOKENS)
    tokenizer_2 = build_clip_tokenizer(work / "tokenizer_2", words, model_max_length=MAX_TOKENS)
    text_encoder = CLIPTextModel(_text_encoder_config(len(tokenizer), tokenizer))
    projection_dim = 32
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_encoder_config(len(tokenizer_2), tokenizer_2, projection_dim=projection_dim)
    )
    addition_time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        transformer_layers_per_block=(1, 1, 1),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        # Penultimate hidden states of both encoders, concatenated (as SDXL: 768 + 1280).
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        # Six time ids (original size, crop top-left, target size), each embedded, plus the pooled
        # projection of text_encoder_2 (as SDXL: 6 * 256 + 1280 = 2816).
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + projection_dim,
        norm_num_groups=32,
    )
    # The scheduler stabilityai/stable-diffusion-xl-base-1.0 ships with.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        use_karras_sigmas=False,
    )
    return dict(
        unet=unet,
        vae=_vae(0.13025),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=scheduler,
    )


def build_tiny_model(family: Literal["sd15", "sdxl"], out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny random base model of ``family`` and save it as a diffusers folder.

    The folder is written by the family's text-to-image pipeline (``StableDiffusionPipeline`` /
    ``StableDiffusionXLPipeline``), exactly as the real checkpoints on the hub are, so the adapter
    pipelines load it with ``from_pretrained(out_dir, adapter=...)``. Returns ``out_dir``.
    """
    import tempfile

    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if family not in ("sd15", "sdxl"):
        raise ValueError(f"family must be 'sd15' or 'sdxl', got {family!r}")
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="t2iops-tiny-") as work:
        if family == "sd15":
            pipe = StableDiffusionPipeline(
                **_sd15_components(Path(work)),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        else:
            pipe = StableDiffusionXLPipeline(**_sdxl_components(Path(work)))
        pipe.save_pretrained(str(out_dir), safe_serialization=True)
    usual_modes(out_dir)  # safetensors writes weights owner-only; the image's user must read them too
    return out_dir
