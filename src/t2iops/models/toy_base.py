"""``t2iops toy-base``: train the offline toy SDXL base model from scratch on synthetic circles.

The toy preset (the checkout's params.yaml) needs a base model that exists without a network:
a small model with SDXL's architecture (see :mod:`t2iops.models.toy_components`) that has
learned to draw "a red circle on a blue background" at 64 px. One readable run, top to bottom:

1. render ``toy_base.num_samples`` circles images with the dataset's own ``render_sample``;
2. train the VAE (MSE + a small KL term) and measure its latents' spread (``scaling_factor``);
3. encode the images once; train the UNet and both text encoders together on the latents
   (v-prediction, zero terminal SNR, caption dropout for classifier-free guidance, AdamW,
   EMA of the weights);
4. save an ordinary ``StableDiffusionXLPipeline`` folder, load it back with ``from_pretrained``
   and sample prompts with random colour pairs; score them with the colour check
   (:mod:`t2iops.models.toy_colours`), write a sample grid and ``toy_base_report.json``.

Everything is published atomically to ``out`` (folder or s3:// prefix) with the resolved config.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from .. import storage
from ..errors import ModelError
from . import toy_components as parts
from .toy_colours import colour_accuracy, colour_pairs, sample_grid

log = logging.getLogger(__name__)

REPORT = "toy_base_report.json"
GRID = "samples.png"


class PhaseClock:
    """Wall and process (CPU, all threads) seconds per phase: on a shared machine wall time
    grows with the other load, CPU time much less."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.phases[name] = {
            "wall_s": round(time.perf_counter() - wall, 2),
            "cpu_s": round(time.process_time() - cpu, 2),
        }


# ---------------------------------------------------------------------------------------
def render_training_set(cfg: Any):
    """(images uint8 [N, 3, R, R], captions, (circle, background) pairs) from ``render_sample``."""
    import numpy as np
    import torch

    from ..data.synth import render_sample, sample_rng
    from ..progress import progress

    tb = cfg.toy_base
    images, captions, pairs = [], [], []
    for index in progress(range(tb.num_samples), desc="render", unit="img", leave=False):
        image, _, meta = render_sample(sample_rng(tb.seed, index), tb.resolution, cfg.data.synth)
        images.append(np.asarray(image, dtype=np.uint8))
        captions.append(meta["text"])
        pairs.append((meta["color"], meta["background"]))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), captions, pairs


def to_model_range(images_uint8):
    return images_uint8.float().div(127.5).sub(1.0)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def gradient_l1(recon, target):
    """Mean absolute difference of the horizontal and vertical pixel differences of two images.

    MSE alone leaves what canny sees: soft disc edges, colour rings inside the disc and a frame
    along the image border (the zero padding of the convolutions). Each is a wrong image
    gradient, and this term penalises it directly (``toy_base.vae_edge_weight``)."""
    dy = (recon[..., 1:, :] - recon[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :])
    dx = (recon[..., :, 1:] - recon[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1])
    return dy.abs().mean() + dx.abs().mean()


def train_vae(vae, images_uint8, cfg: Any, generator, device) -> dict:
    """Reconstruction MSE, an image-gradient L1 term (:func:`gradient_l1`) and a small
    per-element KL (keeps the latent smooth and bounded)."""
    import torch

    from ..progress import progress

    tb = cfg.toy_base
    opt = torch.optim.AdamW(vae.parameters(), lr=tb.vae_lr, weight_decay=0.0, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, min(50, tb.vae_steps), tb.vae_steps))
    vae.train()
    ema_loss = None
    bar = progress(range(tb.vae_steps), desc="vae", unit="step")
    for _ in bar:
        idx = torch.randint(0, images_uint8.shape[0], (tb.vae_batch_size,), generator=generator)
        x = to_model_range(images_uint8[idx]).to(device)
        posterior = vae.encode(x).latent_dist
        latent = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(device)
        recon = vae.decode(latent).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = mse + tb.vae_edge_weight * gradient_l1(recon, x) + tb.vae_kl_weight * kl
        if not torch.isfinite(loss):
            raise ModelError(f"toy base VAE: loss became {loss.item()} (lower toy_base.vae_lr)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_loss = mse.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * mse.item()
        bar.set_postfix(mse=f"{ema_loss:.4f}", kl=f"{kl.item():.3f}")
    vae.eval()
    return {"final_mse": ema_loss}


def encode_latents(vae, images_uint8, device, batch: int = 256):
    """Posterior means and standard deviations of every image (sampled per training step)."""
    import torch

    means, stds = [], []
    with torch.no_grad():
        for start in range(0, images_uint8.shape[0], batch):
            dist = vae.encode(to_model_range(images_uint8[start:start + batch]).to(device)).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def train_unet(unet, text_encoders, latent_mean, latent_std, token_ids, empty_ids, cfg: Any, generator, device) -> dict:
    """The diffusion loop on scaled latents (``latent_mean + latent_std * noise``). Captions are dropped (``caption_dropout``) for classifier-free
    guidance, half of them to zero embeddings (what the SDXL pipeline uses for an absent negative
    prompt, ``force_zeros_for_empty_prompt``) and half to the empty prompt (``negative_prompt=""``),
    so guidance works either way."""
    import torch

    from ..progress import progress

    tb = cfg.toy_base
    scheduler = parts.build_train_scheduler()
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    text_encoder, text_encoder_2 = text_encoders
    ids_1, ids_2 = token_ids
    modules = [unet, text_encoder, text_encoder_2]
    params = [p for m in modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=tb.lr, weight_decay=0.01, betas=(0.9, 0.99), fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, tb.warmup_steps, tb.unet_steps))
    ema = [p.detach().clone() for p in params]
    time_ids = parts.sdxl_time_ids(tb.resolution, tb.batch_size).to(device)
    latent_mean, latent_std = latent_mean.to(device), latent_std.to(device)
    ids_1, ids_2 = ids_1.to(device), ids_2.to(device)
    empty_ids = tuple(e.to(device) for e in empty_ids)
    for m in modules:
        m.train()
    ema_loss = None
    bar = progress(range(tb.unet_steps), desc="unet", unit="step")
    for step in bar:
        idx = torch.randint(0, latent_mean.shape[0], (tb.batch_size,), generator=generator)
        noises = torch.randn((2, tb.batch_size, *latent_mean.shape[1:]), generator=generator).to(device)
        x0 = latent_mean[idx] + latent_std[idx] * noises[0]
        drop = torch.rand(tb.batch_size, generator=generator) < tb.caption_dropout
        to_empty = drop & (torch.rand(tb.batch_size, generator=generator) < 0.5)
        drop, to_empty = drop.to(device), to_empty.to(device)
        embeds, pooled = parts.encode_text(
            text_encoder,
            text_encoder_2,
            torch.where(to_empty[:, None], empty_ids[0], ids_1[idx]),
            torch.where(to_empty[:, None], empty_ids[1], ids_2[idx]),
        )
        keep = (~(drop & ~to_empty)).float()
        embeds = embeds * keep[:, None, None]
        pooled = pooled * keep[:, None]

        noise = noises[1]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (tb.batch_size,), generator=generator).to(device)
        noisy = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t) if v_prediction else noise
        pred = unet(noisy, t, embeds, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        if not torch.isfinite(loss):
            raise ModelError(f"toy base UNet: loss became {loss.item()} at step {step} (lower toy_base.lr)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():  # EMA with the usual warm-up so early weights fade quickly
            decay = min(tb.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema_loss:.4f}")
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    for m in modules:
        m.eval()
    return {"final_loss": ema_loss}


# ---------------------------------------------------------------------------------------
def evaluate_colours(model_dir: Path, cfg: Any) -> tuple[dict, Any]:
    """Load the saved folder the way a user does and score ``eval_samples`` prompts with random
    colour pairs. Returns (metrics, grid image)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    from ..data.synth import PALETTE

    tb = cfg.toy_base
    pipe = StableDiffusionXLPipeline.from_pretrained(str(model_dir)).to(tb.device)
    pipe.set_progress_bar_config(disable=True)
    pairs = colour_pairs(list(PALETTE), tb.eval_samples, seed=tb.seed + 1)
    prompts = [f"{circle} circle with {background} background" for circle, background in pairs]
    generator = torch.Generator().manual_seed(tb.seed + 2)
    images = []
    for start in range(0, len(prompts), 32):
        with torch.no_grad():
            images += pipe(
                prompt=prompts[start:start + 32],
                height=tb.resolution,
                width=tb.resolution,
                num_inference_steps=tb.eval_steps,
                guidance_scale=tb.guidance_scale,
                generator=generator,
            ).images
    metrics = colour_accuracy(images, pairs, PALETTE)
    metrics.update(num_inference_steps=tb.eval_steps, guidance_scale=tb.guidance_scale, scheduler=type(pipe.scheduler).__name__)
    for sample, prompt in zip(metrics["samples"], prompts):
        sample["prompt"] = prompt
    grid = sample_grid(images, prompts, [s["ok"] for s in metrics["samples"]])
    return metrics, grid


def train_toy_base(out: str, cfg: Any) -> dict:
    """Train the toy SDXL base and publish it to ``out``: a diffusers folder (model_index.json,
    unet/, vae/, text_encoder(_2)/, tokenizer(_2)/, scheduler/), ``toy_base_report.json``,
    ``samples.png`` and ``config.resolved.yaml``. Returns the report."""
    import diffusers
    import torch
    from diffusers import StableDiffusionXLPipeline

    from .tiny import caption_words

    tb = cfg.toy_base
    if tb.resolution % (parts.vae_scale_factor() * 4):
        raise ModelError(f"toy_base.resolution {tb.resolution} must be a multiple of {parts.vae_scale_factor() * 4}")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(tb.num_threads)
    torch.manual_seed(tb.seed)
    device = torch.device(tb.device)
    generator = torch.Generator().manual_seed(tb.seed)
    clock = PhaseClock()
    load_start = os.getloadavg()[0]
    try:
        with storage.publish(out, cfg, extra={"stage": "toy-base", "family": "sdxl"}) as staging, \
                tempfile.TemporaryDirectory(prefix="t2iops-toy-") as work:
            with clock("render"):
                images, captions, _ = render_training_set(cfg)
            vae = parts.build_vae(tb.resolution).to(device)
            with clock("vae"):
                vae_stats = train_vae(vae, images, cfg, generator, device)
            with clock("encode"):
                mean, std = encode_latents(vae, images, device)
                # Unit-variance latents for the diffusion model, as SD's scaling_factor does.
                scaling = float(1.0 / (mean + std * torch.randn(mean.shape, generator=generator).to(device)).std())
                vae.register_to_config(scaling_factor=scaling)
                tokenizers = parts.build_tokenizers(work, caption_words())
                text_encoders = tuple(m.to(device) for m in parts.build_text_encoders(*tokenizers))
                ids = tuple(parts.token_ids(tok, captions) for tok in tokenizers)
                empty = tuple(parts.token_ids(tok, [""])[0] for tok in tokenizers)
            unet = parts.build_unet(tb.resolution).to(device)
            with clock("unet"):
                unet_stats = train_unet(unet, text_encoders, mean * scaling, std * scaling, ids, empty, cfg, generator, device)
            pipe = StableDiffusionXLPipeline(
                vae=vae,
                text_encoder=text_encoders[0],
                text_encoder_2=text_encoders[1],
                tokenizer=tokenizers[0],
                tokenizer_2=tokenizers[1],
                unet=unet,
                scheduler=parts.build_sampling_scheduler(),
            )
            pipe.save_pretrained(str(staging), safe_serialization=True)
            with clock("evaluate"):
                metrics, grid = evaluate_colours(staging, cfg)
            grid.save(staging / GRID)
            report = _toy_report(tb, metrics, vae_stats, unet_stats, (unet, vae, *text_encoders), scaling, clock,
                                 load_start)
            (staging / REPORT).write_text(json.dumps(report, indent=2))
            cfg.write(staging)
    finally:
        torch.set_num_threads(threads_before)
    log.info(
        "toy base: colour accuracy %.3f on %d samples; training %.0f s wall, %.0f s CPU -> %s",
        report["colour_accuracy"], tb.eval_samples, report["times"]["train_wall_s"], report["times"]["train_cpu_s"], out,
    )
    return report


def _toy_report(tb: Any, metrics: dict, vae_stats: dict, unet_stats: dict, modules: tuple, scaling: float,
                clock: "PhaseClock", load_start: float) -> dict:
    """``toy_base_report.json``: accuracy, losses, sizes, times and versions of one toy-base run."""
    import diffusers
    import torch

    unet, vae, text_encoder, text_encoder_2 = modules
    train_wall = sum(clock.phases[k]["wall_s"] for k in ("render", "vae", "encode", "unet"))
    train_cpu = sum(clock.phases[k]["cpu_s"] for k in ("render", "vae", "encode", "unet"))
    report = {
        "colour_accuracy": metrics["colour_accuracy"],
        "circle_accuracy": metrics["circle_accuracy"],
        "background_accuracy": metrics["background_accuracy"],
        "eval": {k: v for k, v in metrics.items() if k != "samples"},
        "steps": {"vae": tb.vae_steps, "unet": tb.unet_steps, "batch_size": tb.batch_size},
        "losses": {"vae_mse": vae_stats["final_mse"], "unet_v_mse": unet_stats["final_loss"]},
        "parameters": {
            "unet": parts.count_parameters(unet),
            "vae": parts.count_parameters(vae),
            "text_encoder": parts.count_parameters(text_encoder),
            "text_encoder_2": parts.count_parameters(text_encoder_2),
        },
        "vae_scaling_factor": scaling,
        "times": {
            "phases": clock.phases,
            "train_wall_s": round(train_wall, 1),
            "train_cpu_s": round(train_cpu, 1),
            "threads": tb.num_threads,
            "cpu_count": os.cpu_count(),
            "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        },
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "samples": metrics["samples"],
    }
    return report
