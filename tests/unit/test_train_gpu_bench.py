"""The GPU benchmark script runs end to end on small configs (--tiny) and writes its results."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_train_bench_tiny_runs_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_train_bench.py"), "--tiny", "--steps", "1",
                           "--warmup", "1", "--no-deepspeed", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cached / per-step encode speed-up" in proc.stdout
    result = json.loads((tmp_path / "gpu_results.json").read_text())
    assert result["optimizer"] == "torch-adamw"
    paths = {r["path"]: r for r in result["results"]}
    assert set(paths) == {"cached", "per_step_encode"}
    # The per-step path does strictly more work: the VAE and both text encoders.
    assert paths["per_step_encode"]["flops_per_step"] > paths["cached"]["flops_per_step"] > 0
    assert all(r["step_s"] > 0 for r in result["results"])
