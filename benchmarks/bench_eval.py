"""Evaluation speed: Inception feature extraction, sampling on the tiny model, and a whole
evaluation sharded 2 ways (2 processes, 1 thread each) vs 1 way (1 process, 2 threads).

    python benchmarks/bench_eval.py [--samples 256] [--steps 10] [--batch 16] [--work DIR]

Speed only: the Inception network has random weights (real layout) and the adapter is freshly
initialised, so no metric printed here means anything. Each configuration gets its own
real-feature cache, so neither reuses the other's Inception work.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

# In-process runs: the toy preset (CPU-sized, fp32) with guidance 5, one conditioning scale and no
# gate, the settings the figures in benchmarks/RESULTS.md were measured with.
MEASURED_WITH = [
    "evaluate.guidance_scale=5.0", "evaluate.conditioning_scales=[1.0]", "evaluate.gate.min_circle_iou=null",
]


def setup(work: Path, samples: int, steps: int, batch: int, fid: str) -> list[str]:
    """Tiny SD1.5, synthetic data with >= ``samples`` test rows, validation, an untrained
    adapter, random Inception weights. Returns the -S overrides that point at them."""
    from t2iops.data.synth import synthesize
    from t2iops.data.validate import validate
    from t2iops.evaluate.fid import save_random_inception_weights
    from t2iops.models.family import build_adapter
    from t2iops.models.resolve import load_base_model
    from t2iops.models.tiny import build_tiny_model
    from t2iops.presets import preset_config

    overrides = [
        f"model.base_model={work / 'tiny-sd15'}", f"data.synth.count={int(samples * 2.2)}",
        "data.val_fraction=0.05", "data.test_fraction=0.5", f"evaluate.num_samples={samples}",
        f"evaluate.batch_size={batch}", f"evaluate.num_inference_steps={steps}",
        f"evaluate.inception_weights={work / 'pt_inception_random.pth'}", "evaluate.kid_subsets=10",
        f"evaluate.fid={fid}",
    ]
    cfg = preset_config("toy", [*MEASURED_WITH, *overrides])
    if not (work / "tiny-sd15").exists():
        build_tiny_model("sd15", work / "tiny-sd15")
    if not (work / "data").exists():
        synthesize(str(work / "data"), cfg)
        validate(str(work / "data"), str(work / "validated"), cfg)
    if not (work / "O").exists():
        base = load_base_model(cfg.model, components=("unet",))
        build_adapter(base, cfg.model).save_pretrained(str(work / "O" / "adapter"))
    if not (work / "pt_inception_random.pth").exists():
        save_random_inception_weights(work / "pt_inception_random.pth")
    return overrides


def bench_inception(work: Path, batch: int, images: int = 64) -> float:
    import torch

    from t2iops.evaluate.fid import InceptionFeatures

    extractor = InceptionFeatures(work / "pt_inception_random.pth")
    x = torch.randint(0, 256, (batch, 3, 64, 64), dtype=torch.uint8)
    extractor(x[:2])  # warm-up
    start = time.perf_counter()
    for _ in range(images // batch):
        extractor(x)
    return (images // batch) * batch / (time.perf_counter() - start)


def bench_sampling(overrides: list[str], work: Path, batch: int, batches: int = 2) -> dict:
    from PIL import Image

    from t2iops.evaluate.sampling import build_generators, generate
    from t2iops.models.resolve import load_adapter, load_base_model
    from t2iops.presets import preset_config

    cfg = preset_config("toy", [*MEASURED_WITH, *overrides])
    pipes = build_generators(load_base_model(cfg.model), load_adapter(str(work / "O"), cfg.model), "default", "cpu")
    prompts, conds = ["red circle with blue background"] * batch, [Image.new("RGB", (64, 64))] * batch
    generate(pipes, prompts[:1], [0], 64, cfg.evaluate, conds[:1], 1.0)  # warm-up
    out = {}
    for name, kwargs in (("without adapter", {}), ("with adapter", {"conditions": conds, "scale": 1.0})):
        start = time.perf_counter()
        for b in range(batches):
            generate(pipes, prompts, list(range(b * batch, (b + 1) * batch)), 64, cfg.evaluate, **kwargs)
        out[name] = batches * batch / (time.perf_counter() - start)
    return out


def run_cli(args: list[str], threads: int, cache: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), T2IOPS_CACHE=str(cache))
    return subprocess.Popen([sys.executable, "-m", "t2iops.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_ok(proc: subprocess.Popen) -> str:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {err[-2000:]}")
    return out


def bench_sharding(overrides: list[str], work: Path) -> dict:
    sets = [a for o in overrides for a in ("-S", o)]
    common = ["--adapter", str(work / "O"), "--data", str(work / "data"), "--validated", str(work / "validated")]
    # Storage cache comes from T2IOPS_CACHE: a fresh one per configuration.
    start = time.perf_counter()
    wait_ok(run_cli(["evaluate", *common, "--out", str(work / "E1"), *sets], 2, work / "cache-1way"))
    one_way = time.perf_counter() - start

    start = time.perf_counter()
    shards = [run_cli(["evaluate", *common, "--shard", f"{i}/2", "--out", str(work / f"S{i}"), *sets], 1,
                      work / "cache-2way") for i in range(2)]
    for p in shards:
        wait_ok(p)
    sampled = time.perf_counter() - start
    merged = json.loads(wait_ok(run_cli(["evaluate", "merge", "--shards", str(work / "S0"), str(work / "S1"),
                                         "--out", str(work / "E2"), *sets], 2, work / "cache-2way")))
    two_way = time.perf_counter() - start
    single = json.loads((work / "E1" / "metrics.json").read_text())
    same = all(single[k] == merged[k] for k in ("edge_f1", "circle_iou"))
    fid_diff = (abs(single["fid"]["with_adapter"] - merged["fid"]["with_adapter"]) / single["fid"]["with_adapter"]
                if "fid" in single else float("nan"))
    return {"1 way (1 process, 2 threads) s": one_way, "2 ways (2 processes x 1 thread) + merge s": two_way,
            "2 ways, shards only s": sampled, "speed-up": one_way / two_way,
            "fidelity metrics identical": same, "FID relative difference": fid_diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--fid", choices=("required", "off"), default="required",
                        help="off: time sampling + fidelity only in the sharding comparison")
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(2)
    overrides = setup(work, args.samples, args.steps, args.batch, args.fid)
    print(f"work: {work}; torch threads {torch.get_num_threads()}; {args.samples} samples, "
          f"{args.steps} steps, batch {args.batch}, 64 px, fid {args.fid}")
    print(f"inception features (299 px, random weights): {bench_inception(work, args.batch):.2f} images/s")
    for name, ips in bench_sampling(overrides, work, args.batch).items():
        print(f"sampling tiny SD1.5 {name}, {args.steps} steps: {ips:.2f} images/s")
    for name, value in bench_sharding(overrides, work).items():
        print(f"{name}: {value:.3g}" if isinstance(value, float) else f"{name}: {value}")


if __name__ == "__main__":
    main()
