"""Train-step throughput: from the encode cache vs encoding every step (as the diffusers example does).

Both paths run the same frozen tiny SDXL UNet, the same adapter, the same loss code
(``t2iops.train.diffusion.adapter_loss``) and the same AdamW step at the same batch size, in one
process. The only difference is where latents and text embeddings come from:

* cached: a batch read from the cache built by ``t2iops encode`` (VAE posterior + embeddings);
* per-step: decode the PNGs, resize/crop, run the VAE encoder and both text encoders, every step.

Blocks of steps of the two paths alternate, so a change in machine load hits both alike; the
median step time of each path is reported.

    python benchmarks/bench_train.py [--batch 8] [--steps 24] [--resolution 64] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=24, help="timed steps per path")
    ap.add_argument("--block", type=int, default=4, help="steps per alternating block")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids OpenMP spinning on a shared box)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from diffusers import DDPMScheduler

    from t2iops.presets import preset_config
    from t2iops.data.dataset import load_rows, load_validated_ids
    from t2iops.data.synth import synthesize
    from t2iops.data.validate import validate
    from t2iops.encode import augment, encode_dataset
    from t2iops.encode.cache import CacheReader
    from t2iops.models.family import build_adapter
    from t2iops.models.resolve import load_base_model
    from t2iops.models.text import encode_prompts
    from t2iops.models.tiny import build_tiny_model
    from t2iops.train.data import train_loader
    from t2iops.train.diffusion import Objective, adapter_loss
    from t2iops.train.distributed import DistInfo
    from t2iops.train.optimization import PlainOptimization

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model = build_tiny_model("sdxl", work / "tiny-sdxl")
    cfg = preset_config("toy", [  # CPU-sized; cubic timesteps as when the figures were measured
        f"model.base_model={model}", f"data.synth.count={args.batch * 8}", f"data.synth.resolution={args.resolution}",
        "data.val_fraction=0", "data.test_fraction=0", f"encode.resolution={args.resolution}",
        f"train.batch_size={args.batch}", "train.num_workers=0", "train.timestep_sampling=cubic"])
    synthesize(str(work / "data"), cfg)
    validate(str(work / "data"), str(work / "validated"), cfg)
    t0 = time.perf_counter()
    encode_dataset(str(work / "data"), str(work / "validated"), str(work / "cache"), cfg)
    encode_seconds = time.perf_counter() - t0

    base = load_base_model(cfg.model, components=("unet", "vae", "text_encoders", "scheduler"))
    unet = base.unet.eval().requires_grad_(False)
    vae = base.vae.eval().requires_grad_(False)
    for enc in base.text_encoders:
        enc.eval().requires_grad_(False)
    torch.manual_seed(0)
    adapter = build_adapter(base, cfg.model).train()
    solo = DistInfo(0, 1, 0, torch.device("cpu"))
    opt = PlainOptimization(adapter, cfg.train, solo)
    reader = CacheReader(work / "cache", "train")
    objective = Objective.from_scheduler(DDPMScheduler.from_config(base.scheduler.config), cfg.train,
                                         reader.scaling_factor)

    cached_batches = iter(train_loader(reader, cfg.train, 0, 1))
    rows = load_rows(str(work / "data"), cfg, ids=load_validated_ids(str(work / "validated")))
    g = torch.Generator().manual_seed(0)

    def cached_batch():
        batch = next(cached_batches)
        return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}

    position = [0]

    def encoded_batch():
        """What the diffusers example does in its loop: pixels -> VAE, captions -> text encoders."""
        chosen = [rows[(position[0] + i) % len(rows)] for i in range(args.batch)]
        position[0] += args.batch
        pixels, conditions, time_ids = [], [], []
        for row in chosen:
            img, cond, plan = augment.prepare_pair(row.load_image(), row.load_condition(), args.resolution, False, 0)
            pixels.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
            conditions.append(torch.from_numpy(np.asarray(cond).copy()).permute(2, 0, 1))
            time_ids.append(plan.time_ids())
        x = torch.stack(pixels).float() / 127.5 - 1
        with torch.no_grad():
            moments = vae.encode(x).latent_dist.parameters
            text = encode_prompts(base, [r.text for r in chosen])
        shape = (moments.shape[0], moments.shape[1] // 2, *moments.shape[2:])
        return {"latents": moments, "latent_eps": torch.randn(shape, generator=g), "noise": torch.randn(shape, generator=g),
                "u": torch.rand(args.batch, generator=g), "conditions": torch.stack(conditions),
                "prompt_embeds": text["prompt_embeds"], "pooled_prompt_embeds": text["pooled_prompt_embeds"],
                "time_ids": torch.tensor(time_ids, dtype=torch.float32)}

    def step(make_batch) -> float:
        start = time.perf_counter()
        batch = make_batch()
        loss = adapter_loss(unet, opt.module, batch, objective).mean()
        opt.backward(loss, bad=False)
        opt.step(False)
        return time.perf_counter() - start

    for _ in range(2):  # warm-up both paths
        step(cached_batch)
        step(encoded_batch)
    times = {"cached": [], "per_step_encode": []}
    while len(times["cached"]) < args.steps:
        for _ in range(args.block):
            times["cached"].append(step(cached_batch))
        for _ in range(args.block):
            times["per_step_encode"].append(step(encoded_batch))

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "machine": "2-core CPU, shared",
        "model": "tiny SDXL (t2iops.models.tiny)",
        "resolution": args.resolution,
        "batch": args.batch,
        "threads": args.threads,
        "steps_per_path": len(times["cached"]),
        "median_step_s": med,
        "samples_per_s": {k: args.batch / v for k, v in med.items()},
        "speedup_cached_vs_per_step_encode": med["per_step_encode"] / med["cached"],
        "one_time_encode_s": encode_seconds,
    }
    print(f"{'path':<18}{'median step (s)':>18}{'samples/s':>12}")
    for k in ("cached", "per_step_encode"):
        print(f"{k:<18}{med[k]:>18.4f}{args.batch / med[k]:>12.1f}")
    print(f"speedup cached / per-step encode: {result['speedup_cached_vs_per_step_encode']:.2f}x "
          f"(target >= 1.5x); one-time encode of {args.batch * 8} samples: {encode_seconds:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
