"""Aspect-ratio buckets against one square crop, at the same pixel count, measured side by side.

One dataset of mixed sizes (3:2 photos, 9:16 phone shots and squares, drawn here with PIL, a
third of each) is validated once and encoded twice with the tiny SDXL model:

* square: ``encode.buckets=square`` at ``--resolution`` (every sample one R x R crop);
* buckets: three buckets of exactly R x R pixels each (R=192: 192x192, 144x256 and 256x144,
  height x width; sides multiples of the model's bucket multiple, 16).

Figures, each as buckets / square:

* cache bytes per sample: every file of the cache (latent shards, condition PNGs, text
  embeddings, cache.json) over its samples, and the latent and condition parts on their own;
* loader samples/s: the trainer's own loader (``t2iops.train.data.train_loader``, no worker
  processes), blocks of micro-batches of the two caches alternating so machine load hits both
  alike, the median of the blocks;
* train step time per bucket: the trainer's loss (``adapter_loss``) and AdamW step on the tiny
  SDXL UNet and adapter, micro-batches drawn by the bucketed loader and timed by their bucket,
  next to steps on the square cache in alternating blocks (medians).

Target: bytes per sample and loader samples/s within 10 % of square (ratio 0.9 to 1.1).

    python benchmarks/bench_buckets.py [--count 96] [--resolution 192] [--batch 4] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

SOURCES = {"photo": (300, 200), "phone": (180, 320), "square": (240, 240)}  # (width, height) of the files


def equal_area_buckets(resolution: int) -> list[str]:
    """The square and a 9:16 / 16:9 pair with exactly ``resolution`` squared pixels: 3R/4 x 4R/3,
    both sides multiples of 16 when R is a multiple of 192."""
    if resolution % 192:
        raise SystemExit(f"--resolution must be a multiple of 192 (3R/4 and 4R/3 multiples of 16), got {resolution}")
    short, long = resolution * 3 // 4, resolution * 4 // 3
    return [f"{resolution}x{resolution}", f"{short}x{long}", f"{long}x{short}"]


def draw_dataset(root: Path, count: int) -> None:
    """``count`` rows in the dataset folder layout, a third of each source shape."""
    from PIL import Image, ImageDraw

    (root / "images").mkdir(parents=True)
    (root / "conditioning_images").mkdir()
    lines = []
    for i in range(count):
        kind = list(SOURCES)[i % 3]
        w, h = SOURCES[kind]
        r = min(w, h) // 4 + i % 7
        cx, cy = w // 2 + i % 11 - 5, h // 2 - i % 9 + 4
        box = (cx - r - 4, cy - r, cx + r + 4, cy + r)
        image = Image.new("RGB", (w, h), (20 + i % 200, 60, 200))
        ImageDraw.Draw(image).ellipse(box, fill=(220, 30 + i % 100, 30))
        condition = Image.new("RGB", (w, h), (0, 0, 0))
        ImageDraw.Draw(condition).ellipse(box, outline=(255, 255, 255), width=2)
        name = f"{kind}{i:04d}"
        image.save(root / "images" / f"{name}.png")
        condition.save(root / "conditioning_images" / f"{name}.png")
        lines.append(json.dumps({"id": name, "image": f"images/{name}.png",
                                 "conditioning_image": f"conditioning_images/{name}.png", "text": f"ellipse {i % 5}"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def cache_bytes(cache: Path) -> dict:
    """Bytes of the whole cache, of its latent moments and of its condition PNGs (tensors in the
    latent shards), and its sample count."""
    import numpy as np
    from safetensors import safe_open

    index = json.loads((cache / "cache.json").read_text())
    samples = sum(len(split["ids"]) for split in index["samples"].values())
    parts = {"latents": 0, "conditions": 0}
    for shard in (cache / index["latents"]["dir"]).glob("*.safetensors"):
        with safe_open(str(shard), framework="np") as handle:
            for key in handle.keys():
                part = "conditions" if key.startswith("conditions") else "latents" if key.startswith("latent") else None
                if part:
                    parts[part] += handle.get_tensor(key).nbytes
    total = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    return {"samples": samples, "total": total, **parts, "buckets": index["buckets"]}


def timed_blocks(runs: dict, blocks: int) -> dict:
    """Alternate ``runs[name]()`` (each returns a list of (key, seconds)) ``blocks`` times."""
    times: dict = {name: [] for name in runs}
    for _ in range(blocks):
        for name, run in runs.items():
            times[name].extend(run())
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=96, help="samples (a third of each shape)")
    ap.add_argument("--resolution", type=int, default=192, help="square side; every bucket has its pixel count")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--loader-blocks", type=int, default=6, help="alternating blocks of one pass over each cache")
    ap.add_argument("--step-blocks", type=int, default=4, help="alternating blocks of train steps")
    ap.add_argument("--block", type=int, default=6, help="train steps per block")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids OpenMP spinning on a shared box)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-buckets-"))
    try:
        figures = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args, figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def encode_both(args, work: Path) -> tuple[dict, dict]:
    """The two configurations and, for each, its encode seconds, cache bytes and train reader."""
    from t2iops.data.validate import validate
    from t2iops.encode import encode_dataset
    from t2iops.encode.cache import CacheReader
    from t2iops.models.tiny import build_tiny_model
    from t2iops.presets import preset_config

    model = build_tiny_model("sdxl", work / "tiny-sdxl")
    common = [f"model.base_model={model}", "data.val_fraction=0", "data.test_fraction=0",
              f"encode.resolution={args.resolution}", f"train.batch_size={args.batch}", "train.num_workers=0",
              "train.caption_dropout=0"]
    configs = {"square": preset_config("toy", [*common, "encode.buckets=square"]),
               "buckets": preset_config("toy", [*common, f"encode.buckets=[{','.join(equal_area_buckets(args.resolution))}]"])}
    draw_dataset(work / "data", args.count)
    validate(str(work / "data"), str(work / "validated"), configs["square"])
    caches = {}
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        encode_dataset(str(work / "data"), str(work / "validated"), str(work / name), cfg)
        caches[name] = {"encode_s": time.perf_counter() - t0, "bytes": cache_bytes(work / name),
                        "reader": CacheReader(work / name, "train")}
    return configs, caches


def measure(args, work: Path) -> dict:
    """Encode both ways, then time the loader and the train steps in alternating blocks."""
    import torch

    from t2iops.train.data import EpochBatches, train_loader

    configs, caches = encode_both(args, work)
    readers = {name: c["reader"] for name, c in caches.items()}
    per_epoch = {name: sum(EpochBatches(r, args.batch, 0).per_epoch) for name, r in readers.items()}

    def loader_pass(name: str):
        def run():
            loader = iter(train_loader(readers[name], configs[name].train, 0, 1))
            start = time.perf_counter()
            for _ in range(per_epoch[name]):
                next(loader)
            return [(per_epoch[name] * args.batch, time.perf_counter() - start)]
        return run

    for name in readers:  # warm-up: page cache, first-call costs
        loader_pass(name)()
    loads = timed_blocks({name: loader_pass(name) for name in readers}, args.loader_blocks)
    step = train_step(configs["square"], readers["square"])
    streams = {name: iter(train_loader(r, configs[name].train, 0, 1)) for name, r in readers.items()}
    scale = args.resolution // readers["square"].sample(0)["latent"].shape[-1]  # pixels per latent side

    def steps(name: str):
        def run():
            out = []
            for _ in range(args.block):
                batch = {k: v for k, v in next(streams[name]).items() if isinstance(v, torch.Tensor)}
                h, w = (side * scale for side in batch["latents"].shape[-2:])
                out.append((f"{h}x{w}", step(batch)))
            return out
        return run

    for name in readers:
        steps(name)()  # warm-up
    per_bucket: dict = {}
    for name, timed in timed_blocks({name: steps(name) for name in readers}, args.step_blocks).items():
        for key, seconds in timed:
            per_bucket.setdefault(f"{name} {key}", []).append(seconds)
    return {"resolution": args.resolution, "buckets": equal_area_buckets(args.resolution), "batch": args.batch,
            "cache": {name: c["bytes"] for name, c in caches.items()},
            "encode_s": {name: c["encode_s"] for name, c in caches.items()},
            "loader_samples_per_s": {name: statistics.median(k / s for k, s in v) for name, v in loads.items()},
            "loader_passes": args.loader_blocks,
            "step_s": {key: statistics.median(v) for key, v in per_bucket.items()},
            "steps": {key: len(v) for key, v in per_bucket.items()}}


def train_step(cfg, reader):
    """``step(batch) -> seconds``: the trainer's loss, backward and AdamW step on the tiny SDXL
    UNet (frozen) and a fresh adapter."""
    import torch
    from diffusers import DDPMScheduler

    from t2iops.models.family import build_adapter
    from t2iops.models.resolve import load_base_model
    from t2iops.train.diffusion import Objective, adapter_loss
    from t2iops.train.distributed import DistInfo
    from t2iops.train.optimization import PlainOptimization

    base = load_base_model(cfg.model, components=("unet", "vae", "text_encoders", "scheduler"))
    unet = base.unet.eval().requires_grad_(False)
    torch.manual_seed(0)
    opt = PlainOptimization(build_adapter(base, cfg.model).train(), cfg.train, DistInfo(0, 1, 0, torch.device("cpu")))
    objective = Objective.from_scheduler(DDPMScheduler.from_config(base.scheduler.config), cfg.train,
                                         reader.scaling_factor)

    def step(batch) -> float:
        start = time.perf_counter()
        loss = adapter_loss(unet, opt.module, batch, objective).mean()
        opt.backward(loss, bad=False)
        opt.step(False)
        return time.perf_counter() - start
    return step


def report(args, figures: dict) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    r = args.resolution
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, python {platform.python_version()}, torch threads "
          f"{args.threads}, load average {load} (shared machine: other work moves these times)")
    print(f"dataset: {args.count} rows, a third each of {', '.join(f'{k} {w}x{h}' for k, (w, h) in SOURCES.items())} "
          f"(width x height); tiny SDXL; square {r}x{r} vs buckets {', '.join(figures['buckets'])} "
          f"(height x width, {r * r} px each)")
    enc = figures["encode_s"]
    print(f"encode: square {enc['square']:.1f} s, buckets {enc['buckets']:.1f} s")
    print(f"{'':<28}{'square':>10}{'buckets':>10}{'ratio':>8}")
    sizes = figures["cache"]
    for part in ("total", "latents", "conditions"):
        a, b = (sizes[n][part] / sizes[n]["samples"] for n in ("square", "buckets"))
        print(f"{'cache bytes/sample ' + part:<28}{a:>10.0f}{b:>10.0f}{b / a:>8.3f}")
    rate = figures["loader_samples_per_s"]
    print(f"{'loader samples/s':<28}{rate['square']:>10.1f}{rate['buckets']:>10.1f}{rate['buckets'] / rate['square']:>8.3f}"
          f"   (median of {args.loader_blocks} passes over each cache)")
    square = figures["step_s"][f"square {r}x{r}"]
    print(f"train step, batch {args.batch}, median s (steps timed), ratio to the square cache's step:")
    for key, seconds in sorted(figures["step_s"].items()):
        print(f"  {key:<20}{seconds:>8.4f} s ({figures['steps'][key]:>2}){seconds / square:>8.3f}")


if __name__ == "__main__":
    main()
