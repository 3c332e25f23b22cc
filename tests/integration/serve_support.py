"""What the serve tests share: a real registry of exported tiny adapters (the export stage and
the pipeline's publish step, as a run would make them) and a real ``t2iops serve`` process on
127.0.0.1, talked to over HTTP with the standard library."""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

from t2iops.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = "t2i-adapter"


def export_tiny_adapter(base_path: str, out: Path, seed: int) -> Path:
    """A tiny full_adapter on ``base_path`` (weights from ``seed``), through the export stage."""
    import torch
    from diffusers import T2IAdapter

    from t2iops.config import load_config
    from t2iops.export.stage import export_adapter
    from t2iops.models.family import adapter_kwargs_for, vae_scale_factor_of

    base = Path(base_path)
    unet = json.loads((base / "unet" / "config.json").read_text())
    vae = json.loads((base / "vae" / "config.json").read_text())
    kwargs = adapter_kwargs_for(unet, "full_adapter", num_res_blocks=1, vae_scale_factor=vae_scale_factor_of(vae))
    torch.manual_seed(seed)
    adapter = T2IAdapter(**kwargs).eval()
    with torch.no_grad():  # weights large enough that versions draw visibly different images
        for p in adapter.parameters():
            p.mul_(4.0)
    adapter.save_pretrained(str(out / "adapter"))
    cfg = load_config(None, [f"model.base_model={base_path}", "model.dtype=fp32", "export.pipeline_check=skip",
                             "export.resolutions=[64]", "encode.buckets=square"])
    export_adapter(str(out / "adapter"), str(out / "export"), cfg)
    return out / "export"


def publish(export: Path, registry: str, version: str) -> str:
    from t2iops.config import load_config
    from t2iops.pipelines.registry import publish_model

    metrics = export.parent / "metrics.json"
    metrics.write_text(json.dumps({"num_samples": 8, "gate": {"passed": True, "checks": []},
                                   "circle_iou": {"with_adapter": 0.5, "without_adapter": 0.2, "lift": 0.3}}))
    return publish_model(str(export), registry, MODEL, version, load_config(None), metrics_path=str(metrics),
                         lineage={"run_id": f"run-{version}"})


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "t2iops.cli", *args], capture_output=True, text=True, timeout=300,
                          env=_env())
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def condition_png(size: int = 64, colour=(255, 255, 255)) -> str:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (0, 0, 0))
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), outline=colour, width=3)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def infer_body(prompt: str = "a red circle", condition: Optional[str] = None, **parameters: Any) -> dict:
    body: dict[str, Any] = {"inputs": [
        {"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [prompt]},
        {"name": "condition", "datatype": "BYTES", "shape": [1], "data": [condition or condition_png()]},
    ]}
    if parameters:
        body["parameters"] = parameters
    return body


class Server:
    """``t2iops serve`` in a subprocess; ``request`` speaks HTTP to it."""

    def __init__(self, registry: str, base_path: str, work: Path, poll_seconds: float = 0.5, *extra: str):
        self.registry, self.base_path = registry, base_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / f"serve-{self.port}.log"
        self._log = open(self.log, "w")
        self.tmp = work / f"tmp-{self.port}"  # the server's temporary folder (its adapters' local copies)
        self.tmp.mkdir()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "t2iops.cli", "serve", "--registry", registry, "--port", str(self.port),
             "--poll-seconds", str(poll_seconds), "--params", str(ROOT / "src/t2iops/presets/toy.yaml"),
             "-S", f"model.base_model={base_path}", "-S", "evaluate.num_inference_steps=2", *extra],
            stdout=self._log, stderr=subprocess.STDOUT, env={**_env(), "TMPDIR": str(self.tmp)}, cwd=str(work))

    def request(self, method: str, path: str, body: Any = None, raw: Optional[bytes] = None,
                timeout: float = 120) -> tuple[int, dict, bytes]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, method: str, path: str, body: Any = None, **kw) -> tuple[int, dict]:
        status, _, data = self.request(method, path, body, **kw)
        return status, json.loads(data) if data else {}

    def wait_live(self, timeout: float = 60) -> None:
        """Until /v2/health/live answers (the HTTP server is up; the model may still be loading)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            assert self.proc.poll() is None, f"t2iops serve exited {self.proc.returncode}:\n{self.log.read_text()}"
            try:
                if self.json("GET", "/v2/health/live", timeout=5)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"not live after {timeout} s:\n{self.log.read_text()}")

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds until /v2/health/ready answered 200; checks live answered first."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            assert self.proc.poll() is None, f"t2iops serve exited {self.proc.returncode}:\n{self.log.read_text()}"
            try:
                status, _ = self.json("GET", "/v2/health/ready", timeout=5)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
                continue
            if status == 200:
                return time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError(f"not ready after {timeout} s:\n{self.log.read_text()}")

    def version(self) -> str:
        status, doc = self.json("POST", f"/v2/models/{MODEL}/infer", infer_body(seed=1))
        assert status == 200, doc
        return doc["model_version"]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def leftovers(self) -> list[str]:
        """What the server left in its temporary folder (torch's own compile cache aside)."""
        return sorted(p.name for p in self.tmp.iterdir() if p.name.startswith("t2iops-"))
