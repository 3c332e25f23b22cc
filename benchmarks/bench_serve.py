"""``t2iops serve`` under load: N concurrent clients on 127.0.0.1, latency p50/p95 and throughput.

Builds what it serves the way a run does (an adapter exported by the export stage, published by
the publish step into a scratch folder registry and promoted), starts a real ``t2iops serve``,
waits until it is ready, sends one warm-up request, then ``--clients`` threads each send
``--requests`` inference requests (Open Inference Protocol, base64 PNG condition, a different
seed each) and wait for the answer before sending the next. Any non-200 answer is an error.

    python benchmarks/bench_serve.py --base models/toy-base [--clients 8] [--requests 4] [--steps 20]
    python benchmarks/bench_serve.py --base tiny           # the tiny random SD1.5 of the tests

The base model is any local diffusers folder (the toy base, ``t2iops toy-base``: latency depends
on its architecture, not on how long it was trained) or ``tiny``. Generation is serialised on
the one base model, so throughput is what one process gives and latency grows with the queue:
p50 ~ clients x the time of one image.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from t2iops.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
MODEL = "t2i-adapter"


def _registry(base: Path, work: Path, size: int) -> str:
    """One version, exported and published from a seeded adapter shaped for ``base``, promoted."""
    import torch
    from diffusers import T2IAdapter

    from t2iops.config import load_config
    from t2iops.export.stage import export_adapter
    from t2iops.models.family import adapter_kwargs_for, vae_scale_factor_of
    from t2iops.pipelines.registry import publish_model

    unet = json.loads((base / "unet" / "config.json").read_text())
    vae = json.loads((base / "vae" / "config.json").read_text())
    kind = "full_adapter_xl" if (base / "text_encoder_2").is_dir() else "full_adapter"
    torch.manual_seed(0)
    adapter = T2IAdapter(**adapter_kwargs_for(unet, kind, num_res_blocks=1, vae_scale_factor=vae_scale_factor_of(vae)))
    adapter.save_pretrained(str(work / "adapter"))
    cfg = load_config(None, [f"model.base_model={base}", "model.dtype=fp32", "export.pipeline_check=skip",
                             f"export.resolutions=[{size}]", "encode.buckets=square"])
    export_adapter(str(work / "adapter"), str(work / "export"), cfg)
    metrics = work / "metrics.json"
    metrics.write_text(json.dumps({"num_samples": 1, "gate": {"passed": True, "checks": []}}))
    registry = str(work / "registry")
    publish_model(str(work / "export"), registry, MODEL, "bench", cfg, metrics_path=str(metrics))
    subprocess.run([sys.executable, "-m", "t2iops.cli", "registry", "promote", "bench", "--registry", registry],
                   check=True, capture_output=True)
    return registry


def _condition(size: int) -> str:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size))
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), outline=(255, 255, 255), width=2)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _post(url: str, body: dict, timeout: float) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"t2iops serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=5) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"not ready after {timeout} s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="a local diffusers folder (e.g. models/toy-base), or `tiny`")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--steps", type=int, default=20, help="denoising steps per image (toy preset: 20)")
    ap.add_argument("--size", type=int, default=64, help="condition (= image) side in pixels")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the server (OMP_NUM_THREADS; default 1: on a shared 2-core machine two "
                         "spin-waiting OpenMP threads made one image 10 to 100 times slower)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        if args.base == "tiny":
            from t2iops.models.tiny import build_tiny_model

            base = build_tiny_model("sd15", work / "tiny-sd15")
        else:
            base = Path(args.base).resolve()
        registry = _registry(Path(base), work, args.size)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        log = open(work / "serve.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "t2iops.cli", "serve", "--registry", registry,
                                 "--port", str(port), "--params", str(ROOT / "src/t2iops/presets/toy.yaml"),
                                 "-S", f"model.base_model={base}"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=tmp)
        try:
            ready = _wait_ready(url, proc, 300)
            infer = f"{url}/v2/models/{MODEL}/infer"
            condition = _condition(args.size)

            def body(seed: int) -> dict:
                return {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["red circle with blue background"]},
                                   {"name": "condition", "datatype": "BYTES", "shape": [1], "data": [condition]}],
                        "parameters": {"steps": args.steps, "seed": seed}}

            started = time.perf_counter()
            status, doc = _post(infer, body(0), 300)
            warm = time.perf_counter() - started
            if status != 200:
                raise SystemExit(f"warm-up request failed: {status} {doc}")
            started = time.perf_counter()
            _post(infer, body(0), 300)
            alone = time.perf_counter() - started
            latencies, errors, lock = [], [], threading.Lock()

            def client(i: int) -> None:
                for j in range(args.requests):
                    t0 = time.perf_counter()
                    status, doc = _post(infer, body(1 + i * args.requests + j), 600)
                    with lock:
                        (latencies if status == 200 else errors).append(
                            time.perf_counter() - t0 if status == 200 else (status, doc.get("error")))

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait(60)
            log.close()

    total = args.clients * args.requests
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"server torch threads {args.threads}")
    print(f"base {args.base}, {args.size}x{args.size} px, {args.steps} steps, adapter version {doc['model_version']}")
    print(f"server ready in {ready:.1f} s; first request {warm:.2f} s (warm-up), the next alone {alone:.2f} s")
    print(f"{args.clients} clients x {args.requests} requests = {total}: {len(latencies)} ok, {len(errors)} errors "
          f"{errors[:3] if errors else ''}")
    if latencies:
        print(f"latency p50 {percentile(latencies, 0.5):.2f} s, p95 {percentile(latencies, 0.95):.2f} s, "
              f"max {max(latencies):.2f} s, mean {statistics.mean(latencies):.2f} s")
        print(f"throughput {len(latencies) / wall:.2f} images/s ({wall:.1f} s wall); "
              f"one image alone {alone:.2f} s = {1 / alone:.2f} images/s")
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
