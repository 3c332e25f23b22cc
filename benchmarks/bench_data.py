"""Time the synthetic dataset path against its budget: synth N samples + validate them.

Target: 1,000 samples at 64 px, synth + validate, well under 30 s on the 2-core CPU machine.

    python benchmarks/bench_data.py [--count 1000] [--resolution 64] [--budget 30]
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--budget", type=float, default=30.0, help="seconds allowed for synth + validate")
    args = parser.parse_args()

    from t2iops.config import load_config
    from t2iops.data.synth import synthesize
    from t2iops.data.validate import validate

    cfg = load_config(overrides=[f"data.synth.count={args.count}", f"data.synth.resolution={args.resolution}"])
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        data, validated = Path(tmp) / "circles", Path(tmp) / "validated"
        t0 = time.perf_counter()
        synthesize(str(data), cfg)
        t1 = time.perf_counter()
        report = validate(str(data), str(validated), cfg)
        t2 = time.perf_counter()
        size_mb = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) / 1e6
    assert report["good"] == args.count, report
    synth_s, validate_s, total = t1 - t0, t2 - t1, t2 - t0
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"load average {load} (shared machine: other work inflates these times)")
    print(f"samples: {args.count} at {args.resolution} px ({size_mb:.1f} MB on disk)")
    print(f"synth:    {synth_s:7.2f} s  ({args.count / synth_s:7.0f} samples/s)")
    print(f"validate: {validate_s:7.2f} s  ({args.count / validate_s:7.0f} rows/s)")
    print(f"total:    {total:7.2f} s  = {total / args.budget:.3f} x the {args.budget:.0f} s budget "
          f"({'within' if total <= args.budget else 'OVER'} budget)")


if __name__ == "__main__":
    main()
