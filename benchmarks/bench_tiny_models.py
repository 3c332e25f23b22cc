"""Time one adapter training step on the tiny SD1.5 / SDXL test models against its budget.

A step is what the trainer does: adapter forward on the condition, frozen-UNet forward with the
adapter's residuals (SDXL: with its time ids and pooled text embedding), MSE loss, backward into
the adapter, optimizer step. Latents and text embeddings are random tensors of the right shape
(the trainer reads them from the cache). Target: well under 1 s per step at 32-64 px on CPU.

Each configuration runs with 1 torch thread and with 2, side by side: on a shared, overloaded
2-core machine the 2-thread run can be many times slower (threads spin-wait for each other).

    python benchmarks/bench_tiny_models.py [--batch 8] [--steps 3] [--budget 1.0] [--threads 1 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def time_steps(base, px: int, batch: int, steps: int) -> float:
    import torch

    from t2iops.config import ModelConfig
    from t2iops.models.family import build_adapter
    from t2iops.models.text import sdxl_time_ids

    torch.manual_seed(0)
    adapter = build_adapter(base, ModelConfig())
    adapter.train()
    base.unet.requires_grad_(False)
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-4)
    latent = px // base.vae_scale_factor
    cond = torch.rand(batch, 3, px, px)
    latents = torch.randn(batch, 4, latent, latent)
    embeds = torch.randn(batch, base.tokenizers[0].model_max_length, base.unet.config.cross_attention_dim)
    extra = {}
    if base.family == "sdxl":
        pooled_dim = base.text_encoders[1].config.projection_dim
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled_dim),
            "time_ids": sdxl_time_ids([(px, px)] * batch, (0, 0), (px, px)),
        }
    times = []
    for i in range(steps + 1):  # the first step warms up allocators and kernels
        t0 = time.perf_counter()
        residuals = list(adapter(cond))
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,))
        pred = base.unet(latents + noise, t, embeds, down_intrablock_additional_residuals=residuals, **extra).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to compare")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds allowed per step")
    args = parser.parse_args()

    import torch

    from t2iops.config import ModelConfig
    from t2iops.models.resolve import load_base_model
    from t2iops.models.tiny import build_tiny_model

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}")
    if hasattr(os, "getloadavg"):
        print("load average: %.1f / %.1f / %.1f" % os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench-tiny-") as tmp:
        for family in ("sd15", "sdxl"):
            path = build_tiny_model(family, f"{tmp}/{family}")
            base = load_base_model(ModelConfig(base_model=str(path), dtype="fp32"), components=("unet", "text_encoders"))
            params = sum(p.numel() for p in base.unet.parameters())
            for px in (32, 64):
                timings = {}
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    timings[threads] = time_steps(base, px, args.batch, args.steps)
                first = timings[args.threads[0]]
                print(
                    f"{family} UNet {params / 1e6:.2f} M params, {px} px, batch {args.batch}: "
                    + ", ".join(
                        f"{n} thread(s) {t:.3f} s/step = {t / args.budget:.2f} x budget ({t / first:.2f} x {args.threads[0]}-thread)"
                        for n, t in timings.items()
                    )
                )

if __name__ == "__main__":
    main()
