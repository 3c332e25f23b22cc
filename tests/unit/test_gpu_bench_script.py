"""The GPU train-step benchmark runs end to end on small configs (--tiny, CPU) and writes its results."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_train_step_benchmark_tiny_runs_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu" / "train_step.py"), "--tiny", "--batch", "2",
         "--steps", "1", "--warmup", "1", "--no-deepspeed", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cached path speed-up over encode-every-step" in proc.stdout
    result = json.loads((tmp_path / "gpu_results.json").read_text())
    assert result["optimizer"] == "adamw"
    paths = {r["path"]: r for r in result["results"]}
    assert set(paths) == {"cached", "encode-every-step"}
    # Encoding every step does strictly more work: the VAE and both text encoders.
    assert paths["encode-every-step"]["flops_per_step"] > paths["cached"]["flops_per_step"] > 0
    assert all(r["step_s"] > 0 and r["loss"] == r["loss"] for r in result["results"])
