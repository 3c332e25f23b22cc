"""Benchmark: train the toy SDXL base with the default recipe and check it against its targets.

Targets: colour accuracy >= 0.8 on toy_base.eval_samples generated images with random colour
pairs (circle and background both judged right by nearest palette colour), and the whole
training (render + VAE + encode + UNet) within 15 minutes on 2 CPU cores.

Prints wall and CPU (process) seconds per phase: on a shared machine wall time grows with the
other load, so the load average at start and end is printed too. CPU seconds of a 1-thread run
are the single-core work; with 2 threads they include the threads' spinning.

    HF_HUB_OFFLINE=1 python benchmarks/bench_toy_base.py --out models/toy-base [-S toy_base.num_threads=1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

TARGET_ACCURACY = 0.8
BUDGET_S = 15 * 60


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="models/toy-base", help="where the trained model is published")
    parser.add_argument("--params", default=None,
                        help="params.yaml (default: none: the schema's defaults, whose toy_base.* the toy preset shares)")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="config override key=value")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from t2iops.config import load_config
    from t2iops.models.toy_base import train_toy_base

    cfg = load_config(args.params, args.overrides)
    start = time.perf_counter()
    report = train_toy_base(args.out, cfg)
    total = time.perf_counter() - start
    times = report["times"]
    tb = cfg.toy_base

    print("\n== toy base benchmark ==")
    print(f"machine: {os.cpu_count()} CPU cores, torch threads {tb.num_threads}, "
          f"1-min load average {times['load_average_1min']['start']} at start, {times['load_average_1min']['end']} at end")
    print(f"steps: VAE {tb.vae_steps} x batch {tb.vae_batch_size}, UNet {tb.unet_steps} x batch {tb.batch_size}")
    print("parameters: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in report["parameters"].items()))
    print(f"{'phase':<10}{'wall s':>10}{'CPU s':>10}")
    for name, t in times["phases"].items():
        print(f"{name:<10}{t['wall_s']:>10.1f}{t['cpu_s']:>10.1f}")
    print(f"{'training':<10}{times['train_wall_s']:>10.1f}{times['train_cpu_s']:>10.1f}   (render + vae + encode + unet)")
    print(f"whole run incl. saving and colour check: {total:.1f} s wall")
    acc = report["colour_accuracy"]
    print(f"colour accuracy {acc:.3f} (circle {report['circle_accuracy']:.3f}, background {report['background_accuracy']:.3f}) "
          f"on {report['eval']['num_samples']} samples, {report['eval']['num_inference_steps']} steps, guidance {report['eval']['guidance_scale']}")
    print(f"ratio accuracy / target {acc / TARGET_ACCURACY:.2f} (target {TARGET_ACCURACY}); "
          f"training wall / budget {times['train_wall_s'] / BUDGET_S:.2f} (budget {BUDGET_S} s)")
    print(json.dumps({"colour_accuracy": acc, "train_wall_s": times["train_wall_s"], "train_cpu_s": times["train_cpu_s"],
                      "out": args.out}))
    return 0 if acc >= TARGET_ACCURACY else 1


if __name__ == "__main__":
    sys.exit(main())
