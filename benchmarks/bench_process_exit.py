"""Process exit after loading the ML stack: the interpreter's own shutdown vs
``t2iops.process.collect_once_at_exit`` (collect once, then freeze), side by side in one run.

Each probe is a fresh ``python`` that imports torch, diffusers, transformers and the trainer,
prints a line and ends; the figure is the time from that line to the process's exit, the part
every ``t2iops`` command, KFP step, DVC stage and torchrun rank pays once more.

    python benchmarks/bench_process_exit.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
if sys.argv[1] == "hook":
    from t2iops.process import collect_once_at_exit
    collect_once_at_exit()
import torch, diffusers, transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
import t2iops.train.trainer
print(len(sys.modules), flush=True)
"""


def exit_seconds(mode: str) -> tuple[float, int]:
    proc = subprocess.Popen([sys.executable, "-c", PROBE, mode], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=ROOT)
    modules = int(proc.stdout.readline())
    started = time.perf_counter()
    proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"probe ({mode}) exited with {proc.returncode}")
    return time.perf_counter() - started, modules


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    times: dict[str, list[float]] = {"interpreter shutdown": [], "collect once, freeze": []}
    modules = 0
    for _ in range(args.repeats):  # alternating, so a slow spell of a shared host hits both
        for label, mode in (("interpreter shutdown", "plain"), ("collect once, freeze", "hook")):
            seconds, modules = exit_seconds(mode)
            times[label].append(seconds)
    print(f"modules loaded: {modules}")
    for label, values in times.items():
        print(f"{label:<22} median {statistics.median(values):5.2f} s  runs " + ", ".join(f"{v:.2f}" for v in values))
    saved = statistics.median(times["interpreter shutdown"]) - statistics.median(times["collect once, freeze"])
    print(f"saved per process: {saved:.2f} s "
          f"({statistics.median(times['interpreter shutdown']) / statistics.median(times['collect once, freeze']):.1f}x faster exit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
