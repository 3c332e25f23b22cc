"""Compiling the training pipeline in a process that has the ML stack loaded (as `t2iops
retrain`, a notebook or a test worker has): kfp's own ``inspect.stack()`` in every task setter
vs the caller-name-only stack ``t2iops.pipelines.platform`` gives kfp, side by side in one run.

    python benchmarks/bench_pipeline_compile.py [--repeats 3] [--light]

``--light`` skips importing torch / diffusers / DeepSpeed first (a bare `t2iops pipeline compile`).
"""
from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--light", action="store_true", help="do not load torch, diffusers and DeepSpeed first")
    args = p.parse_args(argv)
    if not args.light:
        import deepspeed  # noqa: F401
        import diffusers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401

        import t2iops.evaluate.stage  # noqa: F401
        import t2iops.train.trainer  # noqa: F401
    from kfp.dsl import pipeline_task

    import t2iops.pipelines.platform  # noqa: F401  (installs the cheap stack)
    from t2iops.config import load_config
    from t2iops.pipelines.compile import compile_pipeline

    cheap = pipeline_task.inspect
    cfg = load_config(str(ROOT / "params.yaml"))
    times: dict[str, list[float]] = {"kfp inspect.stack": [], "caller names only": []}
    with tempfile.TemporaryDirectory() as tmp:
        packages = {}
        for rep in range(args.repeats):
            for label, module in (("kfp inspect.stack", inspect), ("caller names only", cheap)):
                pipeline_task.inspect = module
                started = time.perf_counter()
                packages[label] = compile_pipeline(Path(tmp) / f"{rep}-{label[:3]}.yaml", cfg=cfg).read_bytes()
                times[label].append(time.perf_counter() - started)
        pipeline_task.inspect = cheap
        same = len(set(packages.values())) == 1
    print(f"modules loaded: {len(sys.modules)}; packages identical: {same}")
    for label, values in times.items():
        print(f"{label:<20} median {statistics.median(values):6.2f} s  runs " + ", ".join(f"{v:.2f}" for v in values))
    ratio = statistics.median(times["kfp inspect.stack"]) / statistics.median(times["caller names only"])
    print(f"speed-up {ratio:.1f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
