"""SDXL-size adapter training step on one GPU: from the cache vs encoding every step.

Random weights at the real sizes (the SDXL base UNet config below, its VAE, CLIP ViT-L/14 and
OpenCLIP ViT-bigG/14 text encoders, a ``full_adapter_xl``), 1024 px images -> 128x128 latents,
bf16. One training step is exactly the trainer's: ``t2iops.train.diffusion.adapter_loss`` under
autocast, then ``backward``/``step`` of t2iops' optimization path -- DeepSpeed ZeRO-2 (one rank)
when ``deepspeed`` imports and initialises, plain torch AdamW otherwise (the result says which).

* cached:          latents (VAE posterior moments) and text embeddings arrive precomputed;
* per-step encode: the VAE encodes the 1024 px images and both text encoders run on the
                   prompts' token ids in every step, as the diffusers training example does.

Reports step time, samples/s, peak memory and MFU (FLOPs of one step counted with
``torch.utils.flop_counter.FlopCounterMode``, over the GPU's dense bf16 peak), prints a table
and writes ``$OUT/gpu_results.json``. ``--tiny`` runs the same code with small configs on the
CPU in seconds (a check of the script, not a measurement).

    python benchmarks/gpu_train_bench.py [--batch 4] [--steps 6] [--no-checkpointing] [--tiny]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a checkout without pip install

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the keys that shape the network)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32,
)
# its vae/config.json
SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024,
    scaling_factor=0.13025, force_upcast=True,
)
# text_encoder (CLIP ViT-L/14) and text_encoder_2 (OpenCLIP ViT-bigG/14) configs
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
              num_attention_heads=20, max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")
ADAPTER = dict(in_channels=3, channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=16,
               adapter_type="full_adapter_xl")
RESOLUTION = 1024

TINY_UNET = dict(SDXL_UNET, sample_size=16, block_out_channels=(32, 64, 64), transformer_layers_per_block=(1, 1, 1),
                 attention_head_dim=(2, 4, 4), cross_attention_dim=64, addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=6 * 8 + 32)
TINY_VAE = dict(SDXL_VAE, block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=64)
TINY_L = dict(CLIP_L, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
TINY_G = dict(CLIP_G, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
TINY_ADAPTER = dict(ADAPTER, channels=[32, 64, 64, 64])
TINY_RESOLUTION = 64

# Dense bf16 tensor-core peaks (FLOP/s) by device name fragment.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def build_models(tiny: bool, device, dtype):
    import torch
    from diffusers import AutoencoderKL, T2IAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: a 2.6 B-parameter UNet inits slowly on a CPU
        unet = UNet2DConditionModel(**(TINY_UNET if tiny else SDXL_UNET)).to(dtype)
        vae = AutoencoderKL(**(TINY_VAE if tiny else SDXL_VAE)).to(dtype)
        text_l = CLIPTextModel(CLIPTextConfig(**(TINY_L if tiny else CLIP_L))).to(dtype)
        text_g = CLIPTextModelWithProjection(CLIPTextConfig(**(TINY_G if tiny else CLIP_G))).to(dtype)
        adapter = T2IAdapter(**(TINY_ADAPTER if tiny else ADAPTER))  # fp32 master weights, as the trainer
    for frozen in (unet, vae, text_l, text_g):
        frozen.requires_grad_(False).eval()
    return unet, vae, text_l, text_g, adapter


def make_optimization(adapter, train_cfg, use_deepspeed: bool):
    """t2iops' own optimization path: ZeRO-2 through DeepSpeed when it works here, else torch."""
    from t2iops.train.distributed import init_distributed
    from t2iops.train.optimization import PlainOptimization

    note = None
    if use_deepspeed:
        try:
            from t2iops.train.deepspeed_config import generated_config
            from t2iops.train.optimization import DeepSpeedOptimization

            cfg2 = train_cfg.model_copy(update={"zero_stage": 2})
            dist = init_distributed(use_deepspeed=True)
            return "deepspeed-zero2", DeepSpeedOptimization(adapter, cfg2, dist, generated_config(cfg2, 1)), None
        except Exception as exc:  # no deepspeed wheel, or it cannot initialise here: say so, go on
            note = f"DeepSpeed unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            print(f"[bench] {note}; using torch AdamW", flush=True)
    dist = init_distributed(use_deepspeed=False)
    return "torch-adamw", PlainOptimization(adapter, train_cfg, dist), note


def make_batch(batch: int, tiny: bool, device, generator):
    """What the two paths start from. Cached: posterior moments + embeddings (random, right
    shapes). Per-step: 1024 px images and 77 token ids per prompt."""
    import torch

    px = TINY_RESOLUTION if tiny else RESOLUTION
    lat = px // (2 ** (len((TINY_VAE if tiny else SDXL_VAE)["block_out_channels"]) - 1))
    dim_l, dim_g = (TINY_L if tiny else CLIP_L)["hidden_size"], (TINY_G if tiny else CLIP_G)["hidden_size"]
    pooled = (TINY_G if tiny else CLIP_G)["projection_dim"]

    def r(*shape):
        return torch.randn(*shape, generator=generator)

    out = {
        "images": torch.rand(batch, 3, px, px, generator=generator) * 2 - 1,
        "input_ids": torch.randint(0, 49407, (batch, 77), generator=generator),
        "latents": torch.cat([r(batch, 4, lat, lat), torch.full((batch, 4, lat, lat), -8.0)], 1),
        "latent_eps": r(batch, 4, lat, lat),
        "noise": r(batch, 4, lat, lat),
        "u": torch.rand(batch, generator=generator),
        "conditions": (torch.rand(batch, 3, px, px, generator=generator) * 255).to(torch.uint8),
        "prompt_embeds": r(batch, 77, dim_l + dim_g),
        "pooled_prompt_embeds": r(batch, pooled),
        "time_ids": torch.tensor([[px, px, 0, 0, px, px]] * batch, dtype=torch.float32),
    }
    return {k: v.to(device) for k, v in out.items()}, px


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="small configs on the CPU: checks the script in seconds")
    ap.add_argument("--batch", type=int, default=4, help="samples per step (default 4)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per path (default 6)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-checkpointing", action="store_true", help="no gradient checkpointing on the UNet")
    ap.add_argument("--no-deepspeed", action="store_true", help="torch AdamW even if deepspeed imports")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_results.json (default $OUT)")
    args = ap.parse_args()

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from t2iops.config import TrainConfig
    from t2iops.train.diffusion import Objective, adapter_loss

    cuda = torch.cuda.is_available() and not args.tiny
    if args.tiny:
        torch.set_num_threads(1)  # small ops: OpenMP threads only spin on a busy CPU
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    started = time.time()
    unet, vae, text_l, text_g, adapter = build_models(args.tiny, device, dtype)
    if not args.no_checkpointing:
        unet.enable_gradient_checkpointing()
    adapter = adapter.to(device).train()
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in
              (("unet", unet), ("vae", vae), ("text_encoder", text_l), ("text_encoder_2", text_g), ("adapter", adapter))}
    print(f"[bench] built on {device} in {time.time() - started:.1f} s: "
          + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in counts.items()), flush=True)

    train_cfg = TrainConfig(batch_size=args.batch, mixed_precision="bf16" if cuda else "no",
                            gradient_checkpointing=not args.no_checkpointing, lr=1e-5, max_grad_norm=1.0)
    optimizer_name, opt, note = make_optimization(adapter, train_cfg, not args.no_deepspeed)
    batch, px = make_batch(args.batch, args.tiny, device, torch.Generator().manual_seed(0))
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2  # SDXL's scaled_linear
    objective = Objective(alphas_cumprod=torch.cumprod(1 - betas, 0).float().to(device), num_train_timesteps=1000,
                          prediction_type="epsilon", timestep_sampling="cubic", snr_gamma=None,
                          conditioning_scale=1.0, scaling_factor=SDXL_VAE["scaling_factor"])
    autocast = dict(device_type=device.type, dtype=dtype, enabled=cuda)

    def encode(b: dict) -> dict:
        """The per-step path's extra work: VAE posterior of the images, both text encoders."""
        with torch.no_grad():
            # bf16, like the fp16-fix VAE in a mixed-precision run (the cheaper choice for this
            # path; the diffusers example runs SDXL's own VAE in fp32, which costs more).
            moments = vae.encode(b["images"].to(vae.dtype)).latent_dist.parameters
            out_l = text_l(b["input_ids"], output_hidden_states=True)
            out_g = text_g(b["input_ids"], output_hidden_states=True)
        return {**b, "latents": moments.float(),
                "prompt_embeds": torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], -1),
                "pooled_prompt_embeds": out_g.text_embeds}

    def step(encode_each_step: bool):
        b = encode(batch) if encode_each_step else batch
        with torch.autocast(**autocast):
            loss = adapter_loss(unet, opt.module, b, objective, dtype).mean()
        opt.backward(loss, bad=False)
        opt.step(False)
        return loss

    def sync():
        if cuda:
            torch.cuda.synchronize()

    peak = next((v for k, v in PEAK_BF16.items() if cuda and k in torch.cuda.get_device_name()), None)
    results = []
    for name, encode_each_step in (("cached", False), ("per_step_encode", True)):
        for _ in range(args.warmup):
            step(encode_each_step)
        sync()
        with FlopCounterMode(display=False) as counter:
            step(encode_each_step)
        flops = counter.get_total_flops()
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step(encode_each_step)
        sync()
        step_s = (time.perf_counter() - t0) / args.steps
        row = {
            "path": name,
            "step_s": step_s,
            "samples_per_s": args.batch / step_s,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "flops_per_step": flops,
            "tflops_per_s": flops / step_s / 1e12,
            "mfu": flops / step_s / peak if peak else None,
            "loss": float(loss.detach()),
        }
        results.append(row)
        print(f"[bench] {name}: {step_s * 1e3:.1f} ms/step", flush=True)

    speedup = results[1]["step_s"] / results[0]["step_s"]
    device_name = torch.cuda.get_device_name() if cuda else "cpu (--tiny: a script check, not a measurement)"
    print(f"\ndevice {device_name}, torch {torch.__version__}, optimizer {optimizer_name}, batch {args.batch}, "
          f"{px} px, {str(dtype).replace('torch.', '')}, gradient checkpointing {'off' if args.no_checkpointing else 'on'}")
    print(f"{'path':<17}{'ms/step':>10}{'samples/s':>11}{'peak GiB':>10}{'TFLOP/step':>12}{'TFLOP/s':>9}{'MFU':>7}")
    for r in results:
        mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{r['path']:<17}{r['step_s'] * 1e3:>10.1f}{r['samples_per_s']:>11.2f}{mem:>10}"
              f"{r['flops_per_step'] / 1e12:>12.2f}{r['tflops_per_s']:>9.1f}{mfu:>7}")
    print(f"cached / per-step encode speed-up: {speedup:.2f}x")
    summary = {
        "device": device_name, "torch": torch.__version__, "python": sys.version.split()[0],
        "optimizer": optimizer_name, "optimizer_note": note, "batch": args.batch, "resolution": px,
        "dtype": str(dtype), "gradient_checkpointing": not args.no_checkpointing, "parameters": counts,
        "peak_bf16_flops": peak, "results": results, "speedup_cached_vs_per_step_encode": speedup,
        "wall_s": time.time() - started,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_results.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {Path(args.out) / 'gpu_results.json'}")


if __name__ == "__main__":
    main()
