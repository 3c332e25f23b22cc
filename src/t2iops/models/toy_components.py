"""The toy base model's parts: SDXL's architecture at 64 px, small enough to train on a CPU.

Every part is a stock diffusers / transformers class, so the saved folder is an ordinary SDXL
checkpoint for ``StableDiffusionXLPipeline`` and ``StableDiffusionXLAdapterPipeline``:

* VAE (``AutoencoderKL``): three blocks, so it downscales by 4 (SDXL: 8). A 64 px image becomes
  a 16x16x4 latent; the UNet then never sees more than 16x16 cells.
* UNet (``UNet2DConditionModel``): SDXL's block layout (Down, CrossAttn, CrossAttn), so
  attention runs only at 8x8 and 4x4 latent cells, where it is cheap. The adapter residuals
  land as in SDXL: the DownBlock2D takes its residual after its downsampler (8x8), the
  cross-attention blocks before theirs (8x8, 4x4), the mid block one more (4x4), so a stock
  ``full_adapter_xl`` with ``downscale_factor`` 8 and channels (c0, c1, c2, c2) fits.
  ``text_time`` additional embeddings carry the pooled text embedding into every resnet: a
  global channel that suits a global property such as a background colour.
* Two CLIP text encoders (``CLIPTextModel`` and ``CLIPTextModelWithProjection``), as in SDXL:
  the UNet reads both penultimate hidden states concatenated, plus text_encoder_2's pooled
  projection. They are tiny and trained with the UNet, from the diffusion loss.
* Scheduler: zero terminal SNR with v-prediction and "trailing" timesteps (Lin et al. 2024,
  "Common Diffusion Noise Schedules and Sample Steps are Flawed"). With SD's usual schedule the
  noisiest training step still leaks the image's mean colour, which a sampler starting from pure
  noise cannot supply: samples come out grey and in the wrong colours. At zero terminal SNR the
  model must take the colours from the text.
"""
from __future__ import annotations

from typing import Any, Sequence

# Sizes. Three VAE blocks downscale by 4; the UNet's channels follow SDXL's (c, 2c, 4c) shape.
VAE_BLOCK_CHANNELS = (16, 32, 32)
LATENT_CHANNELS = 4
UNET_BLOCK_CHANNELS = (32, 64, 128)
UNET_HEADS = (1, 2, 4)
# Few groups: a GroupNorm with one channel per group normalises a flat-colour feature map to
# zero, which erases exactly the information this model is about (colours).
UNET_NORM_GROUPS = 8  # diffusers' "attention_head_dim" is the number of heads
TEXT_HIDDEN = (32, 64)  # text_encoder, text_encoder_2 (cross_attention_dim = their sum)
TEXT_LAYERS = 2  # SDXL reads the penultimate layer, so two layers give one contextual layer
PROJECTION_DIM = 64
ADDITION_TIME_EMBED_DIM = 16
MAX_TOKENS = 16  # "cyan circle with brown background" is 7 tokens with BOS/EOS
SCHEDULER_KWARGS = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
)


def build_vae(resolution: int):
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCK_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCK_CHANNELS),
        block_out_channels=VAE_BLOCK_CHANNELS,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        # One group: a GroupNorm over few channels maps a two-colour image to (almost) the same
        # features whatever the two colours are, and the VAE then learns colour very slowly.
        norm_num_groups=1,
        sample_size=resolution,
        # Flat colours need no global attention in the VAE; its mid-block attention at 16x16
        # would cost more than the rest of the encoder.
        mid_block_add_attention=False,
        scaling_factor=1.0,  # set from the trained latents' spread before saving
    )
    # Start nearly deterministic (posterior std ~0.05 instead of 1): with unit noise on
    # barely-trained latents the decoder first learns to ignore them and predicts grey.
    with torch.no_grad():
        vae.quant_conv.bias[LATENT_CHANNELS:] -= 6.0
    return vae


def vae_scale_factor() -> int:
    return 2 ** (len(VAE_BLOCK_CHANNELS) - 1)


def build_tokenizers(work_dir, words: Sequence[str]):
    """Two CLIP tokenizers (SDXL ships two), every caption word one token."""
    from pathlib import Path

    from .tokenizer import build_clip_tokenizer

    work_dir = Path(work_dir)
    return (
        build_clip_tokenizer(work_dir / "tokenizer", list(words), model_max_length=MAX_TOKENS),
        build_clip_tokenizer(work_dir / "tokenizer_2", list(words), model_max_length=MAX_TOKENS),
    )


def _text_config(tokenizer, hidden: int, projection_dim: int = PROJECTION_DIM):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=max(1, hidden // 16),
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_text_encoders(tokenizer, tokenizer_2):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    return (
        CLIPTextModel(_text_config(tokenizer, TEXT_HIDDEN[0])),
        CLIPTextModelWithProjection(_text_config(tokenizer_2, TEXT_HIDDEN[1])),
    )


def build_unet(resolution: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=resolution // vae_scale_factor(),
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=UNET_BLOCK_CHANNELS,
        layers_per_block=1,
        transformer_layers_per_block=1,
        attention_head_dim=UNET_HEADS,
        use_linear_projection=True,
        cross_attention_dim=sum(TEXT_HIDDEN),
        addition_embed_type="text_time",
        addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
        # Six embedded time ids plus the pooled projection (SDXL: 6 * 256 + 1280 = 2816).
        projection_class_embeddings_input_dim=6 * ADDITION_TIME_EMBED_DIM + PROJECTION_DIM,
        norm_num_groups=UNET_NORM_GROUPS,
        # The time and pooled-text embedding scales and shifts each resnet's normalised features
        # instead of being added before the norm, which would remove a per-channel offset.
        resnet_time_scale_shift="scale_shift",
    )


def build_train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_KWARGS, clip_sample=False)


def build_sampling_scheduler():
    """The scheduler saved with the model: DPM-Solver++ (2M) on the same zero-SNR schedule,
    ending on a clean image (``final_sigmas_type="zero"``)."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        **SCHEDULER_KWARGS,
        algorithm_type="dpmsolver++",
        solver_order=2,
        final_sigmas_type="zero",
    )


def token_ids(tokenizer, prompts: Sequence[str]):
    """Token ids exactly as the SDXL pipeline makes them (padded to model_max_length)."""
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def encode_text(text_encoder, text_encoder_2, ids, ids_2) -> tuple[Any, Any]:
    """(prompt_embeds [B, L, D1 + D2], pooled [B, P]) as ``StableDiffusionXLPipeline.encode_prompt``
    computes them (penultimate hidden states; text_encoder_2's projected pooled output), but with
    gradients, so the encoders learn from the diffusion loss."""
    import torch

    out_1 = text_encoder(ids, output_hidden_states=True)
    out_2 = text_encoder_2(ids_2, output_hidden_states=True)
    embeds = torch.cat([out_1.hidden_states[-2], out_2.hidden_states[-2]], dim=-1)
    return embeds, out_2.text_embeds


def sdxl_time_ids(resolution: int, batch: int):
    """SDXL micro-conditioning for ``batch`` toy images, each uncropped at ``resolution``."""
    from .text import sdxl_time_ids as time_ids

    return time_ids((resolution, resolution), (0, 0), (resolution, resolution)).expand(batch, 6)


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
