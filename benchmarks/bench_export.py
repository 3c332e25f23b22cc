"""onnxruntime (CPU) latency of an exported adapter vs PyTorch eager, side by side.

Target: onnxruntime <= 0.8x PyTorch's latency for
  * a random-weight full_adapter_xl with diffusers' default config at 1024 px (SDXL serving size),
  * a toy-sized adapter (the tiny SD1.5 layout: channels 32/64/64, downscale 4) at 64 px.

Both run fp32 on the same thread count, interleaved (torch, ort, torch, ort...) so a shared
machine's load hits both alike; the median of the timed runs is reported. onnxruntime's
default thread spinning is off (as in OrtT2IAdapter): left on, its busy-waiting threads slow
the PyTorch call that follows, which would flatter the ratio (see --sweep).

    python benchmarks/bench_export.py [--threads 2] [--repeats 5] [--toy-repeats 50]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")


def interleaved_latency(torch_fn, ort_fn, repeats: int, warmup: int = 2) -> dict:
    """Median wall-clock latency and median process CPU time of each, run alternately.

    CPU time (all threads) is the load-robust figure on a shared machine: waiting for a core
    does not count, only the work done."""
    for _ in range(warmup):
        torch_fn()
        ort_fn()
    wall = {"torch": [], "ort": []}
    cpu = {"torch": [], "ort": []}
    for _ in range(repeats):
        for name, fn in (("torch", torch_fn), ("ort", ort_fn)):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = statistics.median
    return {"torch_s": med(wall["torch"]), "ort_s": med(wall["ort"]),
            "torch_cpu_s": med(cpu["torch"]), "ort_cpu_s": med(cpu["ort"])}


def bench_case(name: str, adapter_kwargs: dict, resolution: int, repeats: int, threads: int, variants: dict) -> list[dict]:
    import numpy as np
    import torch
    from diffusers import T2IAdapter

    from t2iops.export.onnx_export import export_fp32

    torch.manual_seed(0)
    adapter = T2IAdapter(**adapter_kwargs).eval().requires_grad_(False)
    params = sum(p.numel() for p in adapter.parameters())
    x = np.random.default_rng(0).random((1, 3, resolution, resolution), dtype=np.float32)
    x_torch = torch.from_numpy(x)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        path = export_fp32(adapter, Path(tmp) / "adapter.onnx", opset=17, sample_size=min(resolution, 256))
        for variant, make_session in variants.items():
            session = make_session(path, threads)

            def run_torch():
                with torch.inference_mode():
                    adapter(x_torch)

            def run_ort():
                session.run(None, {"condition": x})

            t = interleaved_latency(run_torch, run_ort, repeats)
            rows.append({"case": name, "variant": variant, "params": params, "resolution": resolution,
                         "torch_ms": t["torch_s"] * 1e3, "ort_ms": t["ort_s"] * 1e3, "ratio": t["ort_s"] / t["torch_s"],
                         "cpu_ratio": t["ort_cpu_s"] / t["torch_cpu_s"]})
    return rows


def session_factory(level: str, spinning: bool = True):
    def make(path, threads):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        }[level]
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of the 1024 px SDXL adapter")
    parser.add_argument("--toy-repeats", type=int, default=50)
    parser.add_argument("--sweep", action="store_true", help="also time ORT optimisation levels / spinning")
    args = parser.parse_args()

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    from t2iops.export.ort_adapter import make_session

    # What OrtT2IAdapter uses: ORT_ENABLE_ALL, no spinning.
    variants = {"t2iops make_session": lambda path, threads: make_session(path, ["CPUExecutionProvider"], threads)}
    if args.sweep:
        variants.update({
            "all + spinning": session_factory("all", spinning=True),
            "extended": session_factory("extended", spinning=False),
            "basic": session_factory("basic", spinning=False),
        })
    cases = [
        ("sdxl full_adapter_xl (diffusers default)",
         dict(adapter_type="full_adapter_xl", channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=16),
         1024, args.repeats),
        ("toy full_adapter (32/64/64, downscale 4)",
         dict(adapter_type="full_adapter", channels=[32, 64, 64], num_res_blocks=1, downscale_factor=4),
         64, args.toy_repeats),
    ]
    rows = []
    for name, kwargs, resolution, repeats in cases:
        rows += bench_case(name, kwargs, resolution, repeats, args.threads, variants)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()}")
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, threads {args.threads}, target ratio <= 0.8")
    print(f"{'case':42s} {'variant':20s} {'params':>11s} {'px':>5s} {'torch ms':>10s} {'ort ms':>10s} "
          f"{'ort/torch':>9s} {'cpu-time ratio':>14s}")
    for r in rows:
        verdict = "ok" if r["ratio"] <= 0.8 else "MISSED"
        print(f"{r['case']:42s} {r['variant']:20s} {r['params']:11,d} {r['resolution']:5d} "
              f"{r['torch_ms']:10.2f} {r['ort_ms']:10.2f} {r['ratio']:9.3f} {r['cpu_ratio']:14.3f}  {verdict}")


if __name__ == "__main__":
    main()
