"""The denoising objective the adapter is trained on.

One function, :func:`adapter_loss`, turns a batch of cached latents + embeddings + conditions
into per-sample losses: noise the latents at sampled timesteps with the base model's training
noise schedule, run the frozen UNet with the adapter's residuals added inside its down blocks,
and compare its prediction to the target of the schedule's prediction type.

The randomness (noise, timesteps, posterior samples) arrives in the batch, drawn per sample by
:mod:`t2iops.train.data`, so this code is deterministic given its inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class Objective:
    """What the loss needs to know about the noise schedule and the training recipe."""

    alphas_cumprod: torch.Tensor  # [T], float32 on the training device
    num_train_timesteps: int
    prediction_type: str  # "epsilon" | "v_prediction"
    timestep_sampling: str  # "cubic" | "uniform"
    snr_gamma: Optional[float]
    conditioning_scale: float
    scaling_factor: float
    shift_factor: Optional[float] = None

    @classmethod
    def from_scheduler(cls, scheduler, train_cfg, scaling_factor: float, shift_factor=None, device="cpu"):
        prediction = train_cfg.prediction_type
        if prediction == "auto":
            prediction = scheduler.config.prediction_type
        if prediction not in ("epsilon", "v_prediction"):
            from ..errors import UsageError

            raise UsageError(f"the base model's scheduler predicts {prediction!r}; set train.prediction_type "
                             "to epsilon or v_prediction")
        return cls(
            alphas_cumprod=scheduler.alphas_cumprod.to(device=device, dtype=torch.float32),
            num_train_timesteps=int(scheduler.config.num_train_timesteps),
            prediction_type=prediction,
            timestep_sampling=train_cfg.timestep_sampling,
            snr_gamma=train_cfg.snr_gamma,
            conditioning_scale=train_cfg.conditioning_scale,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
        )


def sample_timesteps(u: torch.Tensor, num_train_timesteps: int, method: str) -> torch.Tensor:
    """Integer timesteps from uniform draws ``u`` in [0, 1). ``cubic`` (t = (1 - u^3) T) puts
    most samples at high noise, where the layout a condition controls is decided (T2I-Adapter
    paper, sec. 3.4); ``uniform`` is plain DDPM training."""
    if method == "cubic":
        t = (1.0 - u**3) * num_train_timesteps
    elif method == "uniform":
        t = u * num_train_timesteps
    else:
        raise ValueError(f"unknown timestep sampling {method!r}")
    return t.long().clamp(0, num_train_timesteps - 1)


def latents_from_cache(cached: torch.Tensor, eps: Optional[torch.Tensor], obj: Objective) -> torch.Tensor:
    """Scaled latents from what the cache stores: a posterior sample ``mean + std * eps`` when
    it holds the VAE's (mean, logvar) moments, else the mean itself."""
    if eps is not None:
        mean, logvar = cached.chunk(2, dim=1)
        latents = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps
    else:
        latents = cached
    if obj.shift_factor is not None:
        latents = latents - obj.shift_factor
    return latents * obj.scaling_factor


def add_noise(latents, noise, timesteps, alphas_cumprod):
    a = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    return a.sqrt() * latents + (1 - a).sqrt() * noise


def target_for(latents, noise, timesteps, alphas_cumprod, prediction_type: str):
    if prediction_type == "epsilon":
        return noise
    a = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    return a.sqrt() * noise - (1 - a).sqrt() * latents  # v-prediction


def snr_weights(timesteps, alphas_cumprod, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon,
    min(SNR, gamma) / (SNR + 1) for v-prediction."""
    a = alphas_cumprod[timesteps]
    snr = a / (1 - a)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def adapter_loss(unet, adapter, batch: dict, obj: Objective, compute_dtype=torch.float32) -> torch.Tensor:
    """Per-sample MSE (optionally min-SNR weighted) of the frozen UNet + adapter's prediction.

    ``batch`` holds tensors on the training device: ``latents`` (cached), ``latent_eps``
    (optional), ``noise``, ``u``, ``conditions`` (uint8), ``prompt_embeds`` and, for SDXL,
    ``pooled_prompt_embeds`` and ``time_ids``."""
    latents = latents_from_cache(batch["latents"].float(), batch.get("latent_eps"), obj)
    noise = batch["noise"]
    timesteps = sample_timesteps(batch["u"], obj.num_train_timesteps, obj.timestep_sampling)
    noisy = add_noise(latents, noise, timesteps, obj.alphas_cumprod)
    target = target_for(latents, noise, timesteps, obj.alphas_cumprod, obj.prediction_type)

    adapter_dtype = next(adapter.parameters()).dtype
    condition = batch["conditions"].to(adapter_dtype) / 255.0  # [0, 1], as the adapter pipelines feed it
    residuals = [r * obj.conditioning_scale for r in adapter(condition)]
    added = None
    if "time_ids" in batch:
        added = {"text_embeds": batch["pooled_prompt_embeds"].to(compute_dtype),
                 "time_ids": batch["time_ids"].to(compute_dtype)}
    prediction = unet(
        noisy.to(compute_dtype),
        timesteps,
        encoder_hidden_states=batch["prompt_embeds"].to(compute_dtype),
        added_cond_kwargs=added,
        # The UNet pops from this list, so it gets a fresh one.
        down_intrablock_additional_residuals=[r.to(compute_dtype) for r in residuals],
        return_dict=False,
    )[0]
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if obj.snr_gamma is not None:
        loss = loss * snr_weights(timesteps, obj.alphas_cumprod, obj.snr_gamma, obj.prediction_type)
    return loss
