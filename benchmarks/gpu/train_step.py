"""GPU train-step benchmark: cached latents/embeddings vs encoding every step, at SDXL size.

Builds random-weight SDXL-size models (the SDXL base UNet config, its VAE, CLIP ViT-L and
OpenCLIP bigG text encoders) and a ``full_adapter_xl``, then times the adapter training step of
``t2iops.train.diffusion.adapter_loss`` (the trainer's own objective) two ways, same batch:

* cached:  latents + text embeddings come from the encode cache (here: precomputed tensors);
* encode:  the VAE encodes the 1024 px images and both text encoders run on every step, as the
           diffusers training example does.

Reports step time, samples/s, peak memory and MFU (FLOPs of one step counted with
torch.utils.flop_counter.FlopCounterMode, over the card's dense bf16 peak). The optimizer is
DeepSpeed ZeRO-2 (one rank) when deepspeed imports and initialises, plain AdamW otherwise; the
result says which. ``--tiny`` runs the same code on small configs (CPU smoke test).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from t2iops.train.diffusion import Objective, adapter_loss  # noqa: E402

SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024,
)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu", vocab_size=49408, max_position_embeddings=77)
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, hidden_act="gelu", vocab_size=49408, max_position_embeddings=77)
ADAPTER = dict(in_channels=3, channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=16,
               adapter_type="full_adapter_xl")

TINY_UNET = dict(SDXL_UNET, sample_size=16, block_out_channels=(32, 64, 64), norm_num_groups=8, transformer_layers_per_block=(1, 1, 1),
                 attention_head_dim=(2, 4, 4), cross_attention_dim=64, addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=8 * 6 + 32)
TINY_VAE = dict(SDXL_VAE, block_out_channels=(8, 16, 16, 16), layers_per_block=1, sample_size=128, norm_num_groups=8)
TINY_L = dict(CLIP_L, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, projection_dim=32)
TINY_G = dict(CLIP_G, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, projection_dim=32)
TINY_ADAPTER = dict(ADAPTER, channels=[32, 64, 64, 64])

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def build(tiny: bool, device, dtype):
    from diffusers import AutoencoderKL, T2IAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device(device):
        unet = UNet2DConditionModel(**(TINY_UNET if tiny else SDXL_UNET)).to(dtype)
        vae = AutoencoderKL(**(TINY_VAE if tiny else SDXL_VAE)).to(dtype)
        te1 = CLIPTextModel(CLIPTextConfig(**(TINY_L if tiny else CLIP_L))).to(dtype)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**(TINY_G if tiny else CLIP_G))).to(dtype)
        adapter = T2IAdapter(**(TINY_ADAPTER if tiny else ADAPTER))  # fp32 master weights
    for m in (unet, vae, te1, te2):
        m.requires_grad_(False).eval()
    return unet, vae, te1, te2, adapter


def make_optimizer(adapter, use_deepspeed: bool):
    params = [p for p in adapter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-2)
    if use_deepspeed:
        try:
            import deepspeed

            for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                         "MASTER_PORT": "29533"}.items():
                os.environ.setdefault(k, v)
            ds_cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                      "zero_optimization": {"stage": 2}, "gradient_clipping": 1.0,
                      "zero_allow_untested_optimizer": True}
            engine, _, _, _ = deepspeed.initialize(model=adapter, optimizer=opt, config=ds_cfg)
            return "deepspeed-zero2", engine
        except Exception as exc:  # report and fall back
            print(f"[gpu] DeepSpeed unavailable ({type(exc).__name__}: {exc}); plain AdamW", flush=True)
    return "adamw", opt


def run_path(name, encode_each_step, models, batch, obj, optim, steps, warmup, device, dtype):
    unet, vae, te1, te2, adapter = models
    kind, opt = optim
    module = opt.module if kind.startswith("deepspeed") else adapter

    def step():
        b = dict(batch)
        if encode_each_step:
            with torch.no_grad():
                lat = vae.encode(b["images"].to(dtype)).latent_dist
                b["latents"] = torch.cat([lat.mean, lat.logvar], dim=1).float()
                h1 = te1(b["input_ids"], output_hidden_states=True).hidden_states[-2]
                o2 = te2(b["input_ids"], output_hidden_states=True)
                b["prompt_embeds"] = torch.cat([h1, o2.hidden_states[-2]], dim=-1)
                b["pooled_prompt_embeds"] = o2.text_embeds
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = adapter_loss(unet, module, b, obj, compute_dtype=dtype).mean()
        if kind.startswith("deepspeed"):
            opt.backward(loss)
            opt.step()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"path": name, "step_s": dt, "samples_per_s": batch["latents"].shape[0] / dt, "peak_mem_gib": peak,
            "flops_per_step": flops, "achieved_tflops": flops / dt / 1e12, "loss": float(loss)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="small configs (CPU smoke test)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-deepspeed", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    t0 = time.time()
    models = build(args.tiny, device, dtype)
    unet, vae, te1, te2, adapter = models
    print(f"[gpu] models built in {time.time() - t0:.1f} s on {device}: unet "
          f"{sum(p.numel() for p in unet.parameters()) / 1e6:.0f} M, adapter "
          f"{sum(p.numel() for p in adapter.parameters()) / 1e6:.1f} M params", flush=True)
    px = 128 if args.tiny else 1024
    B = args.batch
    g = torch.Generator(device="cpu").manual_seed(0)
    emb_dim = (TINY_L if args.tiny else CLIP_L)["hidden_size"] + (TINY_G if args.tiny else CLIP_G)["hidden_size"]
    pooled_dim = (TINY_G if args.tiny else CLIP_G)["projection_dim"]
    lat = px // 8
    batch = {
        "images": (torch.rand(B, 3, px, px, generator=g) * 2 - 1).to(device),
        "input_ids": torch.randint(0, 49408, (B, 77), generator=g).to(device),
        "latents": torch.randn(B, 8, lat, lat, generator=g).to(device),
        "latent_eps": torch.randn(B, 4, lat, lat, generator=g).to(device),
        "noise": torch.randn(B, 4, lat, lat, generator=g).to(device),
        "u": torch.rand(B, generator=g).to(device),
        "conditions": (torch.rand(B, 3, px, px, generator=g) * 255).to(torch.uint8).to(device),
        "prompt_embeds": torch.randn(B, 77, emb_dim, generator=g).to(device),
        "pooled_prompt_embeds": torch.randn(B, pooled_dim, generator=g).to(device),
        "time_ids": torch.tensor([[px, px, 0, 0, px, px]] * B, dtype=torch.float32).to(device),
    }
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    obj = Objective(alphas_cumprod=torch.cumprod(1 - betas, 0).to(device), num_train_timesteps=1000,
                    prediction_type="epsilon", timestep_sampling="cubic", snr_gamma=None,
                    conditioning_scale=1.0, scaling_factor=0.13025)
    optim = make_optimizer(adapter, not args.no_deepspeed)
    results = []
    for name, enc in (("cached", False), ("encode-every-step", True)):
        r = run_path(name, enc, models, batch, obj, optim, args.steps, args.warmup, device, dtype)
        results.append(r)
        print(f"[gpu] {name}: {r['step_s'] * 1000:.1f} ms/step, {r['samples_per_s']:.2f} samples/s", flush=True)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    for r in results:
        r["mfu"] = r["achieved_tflops"] * 1e12 / peak if peak else None
    summary = {"device": gpu, "torch": torch.__version__, "optimizer": optim[0], "batch": B, "resolution": px,
               "dtype": str(dtype), "results": results,
               "cached_over_encode_speedup": results[1]["step_s"] / results[0]["step_s"]}
    print(f"\n{'path':<20}{'ms/step':>10}{'samples/s':>11}{'peak GiB':>10}{'TFLOP/s':>9}{'MFU':>7}")
    for r in results:
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "n/a"
        print(f"{r['path']:<20}{r['step_s'] * 1000:>10.1f}{r['samples_per_s']:>11.2f}{r['peak_mem_gib']:>10.1f}"
              f"{r['achieved_tflops']:>9.1f}{mfu:>7}")
    print(f"cached path speed-up over encode-every-step: {summary['cached_over_encode_speedup']:.2f}x "
          f"({gpu}, {optim[0]}, batch {B}, {px} px, {dtype})")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_results.json").write_text(json.dumps(summary, indent=2))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
