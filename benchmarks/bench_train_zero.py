"""Per-rank optimizer + gradient state under DeepSpeed ZeRO-2 over 2 ranks vs stage 0.

Runs 2-rank ``torchrun`` jobs (gloo, CPU) that build the SDXL-size ``full_adapter_xl``
(channels 320/640/1280/1280, 2 res blocks: the adapter t2iops trains for SDXL), take two
optimizer steps through t2iops' own optimization paths and, after the next backward, sum the
bytes of every tensor the optimizer/engine holds on that rank (``state_bytes()``):

* optimizer state: Adam moments + any fp32 master copy of the weights;
* gradients: ``.grad`` of the parameters plus ZeRO's gradient partitions and buckets.

Parameters themselves are not counted (ZeRO-2 does not partition them). Configurations:

* ``torch fp32``: t2iops' stage-0 path (torch AdamW, fp32 weights, a gradient all-reduce);
* ``deepspeed stage 0 / ZeRO-2``, fp32 and bf16 mixed precision (same engine, same precision,
  only the stage differs: the comparison the ZeRO paper's memory model makes).

    python benchmarks/bench_train_zero.py [--channels 320 640 1280 1280] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = [  # (label, path, zero stage, mixed precision)
    ("torch fp32 (t2iops stage 0)", "torch", 0, "no"),
    ("deepspeed stage 0, fp32", "deepspeed", 0, "no"),
    ("deepspeed ZeRO-2, fp32", "deepspeed", 2, "no"),
    ("deepspeed stage 0, bf16", "deepspeed", 0, "bf16"),
    ("deepspeed ZeRO-2, bf16", "deepspeed", 2, "bf16"),
]


def worker(args) -> None:
    import torch
    from diffusers import T2IAdapter

    from t2iops.config import TrainConfig
    from t2iops.train.deepspeed_config import generated_config
    from t2iops.train.distributed import init_distributed
    from t2iops.train.optimization import DeepSpeedOptimization, PlainOptimization

    torch.set_num_threads(1)
    t = TrainConfig(zero_stage=args.stage, batch_size=2, grad_accum=1, mixed_precision=args.precision)
    dist = init_distributed(use_deepspeed=args.path == "deepspeed")
    torch.manual_seed(0)
    adapter = T2IAdapter(in_channels=3, channels=args.channels, num_res_blocks=2, downscale_factor=16,
                         adapter_type="full_adapter_xl")
    params = sum(p.numel() for p in adapter.parameters())
    if args.path == "deepspeed":
        opt = DeepSpeedOptimization(adapter, t, dist, generated_config(t, dist.world_size))
    else:
        opt = PlainOptimization(adapter, t, dist)
    dtype = next(opt.module.parameters()).dtype

    def backward():
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(dist.rank)).to(dtype)
        loss = sum(f.float().pow(2).mean() for f in opt.module(x))
        opt.backward(loss, bad=False)

    for _ in range(2):  # the optimizer state exists after the first step
        backward()
        opt.step(False)
    backward()  # gradients held until the next step: the steady-state peak
    held = opt.state_bytes()
    out = Path(args.out) / f"rank{dist.rank}.json"
    out.write_text(json.dumps({"rank": dist.rank, "params": params, **held}))
    dist.barrier()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, nargs="+", default=[320, 640, 1280, 1280])
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--path", default="torch", help=argparse.SUPPRESS)
    ap.add_argument("--stage", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="no", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    results = {}
    for label, path, stage, precision in CONFIGS:
        with tempfile.TemporaryDirectory(prefix="bench-zero-") as tmp:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_port()),
                   __file__, "--worker", "--path", path, "--stage", str(stage), "--precision", precision,
                   "--out", tmp, "--channels", *map(str, args.channels)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{label} failed:\n{proc.stderr[-3000:]}")
            ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(2)]
        worst = max(ranks, key=lambda r: r["optimizer_state"] + r["gradients"])
        results[label] = {"params": worst["params"], "optimizer_state": worst["optimizer_state"],
                          "gradients": worst["gradients"], "total": worst["optimizer_state"] + worst["gradients"]}
        print(f"done: {label}", file=sys.stderr)

    mib = 2**20
    params = next(iter(results.values()))["params"]
    print(f"adapter: full_adapter_xl channels {args.channels}, {params / 1e6:.1f} M parameters "
          f"({params * 4 / mib:.0f} MiB in fp32); bytes held per rank (the larger of the 2 ranks)")
    print(f"{'configuration':<32}{'optimizer MiB':>15}{'gradients MiB':>15}{'total MiB':>12}")
    for label, r in results.items():
        print(f"{label:<32}{r['optimizer_state'] / mib:>15.1f}{r['gradients'] / mib:>15.1f}{r['total'] / mib:>12.1f}")
    ratios = {
        "zero2_vs_stage0_bf16": results["deepspeed ZeRO-2, bf16"]["total"] / results["deepspeed stage 0, bf16"]["total"],
        "zero2_vs_stage0_fp32": results["deepspeed ZeRO-2, fp32"]["total"] / results["deepspeed stage 0, fp32"]["total"],
        "zero2_bf16_vs_torch_fp32": results["deepspeed ZeRO-2, bf16"]["total"] / results["torch fp32 (t2iops stage 0)"]["total"],
        "zero2_fp32_vs_torch_fp32": results["deepspeed ZeRO-2, fp32"]["total"] / results["torch fp32 (t2iops stage 0)"]["total"],
    }
    for name, value in ratios.items():
        print(f"{name:<32}{value:>8.3f}x")
    print("target: ZeRO-2 / stage 0 <= 0.55x (same engine and precision)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": "2-core CPU, shared", "channels": args.channels,
                                               "per_rank_bytes": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
