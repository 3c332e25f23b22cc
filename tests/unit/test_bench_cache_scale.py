"""The cache-scale benchmark runs end to end in its minimal mode (64 px, 24 samples, loopback S3)
and writes the figures its report and RESULTS.md rely on."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~10 s of CPU, but a subprocess with its own S3 server: 40 s on a loaded machine
def test_cache_scale_benchmark_minimal_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_cache_scale.py"), "--minimal",
                           "--json", str(tmp_path / "out.json")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    for key in ("bytes_per_sample_64", "first_step_s_streaming", "first_step_s_full_download", "transfer_speedup",
                "loader_samples_s_per_worker"):
        assert result[key] > 0, key
    # PNG conditions make even a 64 px cache smaller than raw pixels.
    assert result["bytes_per_sample_64"] < result["bytes_per_sample_old"]
    assert "first_step_s_streaming" in proc.stdout


@pytest.mark.slow
@pytest.mark.s3
def test_cache_scale_benchmark_against_a_running_server_leaves_its_bucket_as_it_was(s3_bucket, tmp_path):
    """``--endpoint``: measured against an S3 server that is already running (here the suite's
    loopback server, standing in for MinIO or a cloud bucket); what it uploaded is deleted again."""
    import boto3

    endpoint, bucket = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.put_object(Bucket=bucket, Key="keep/me.txt", Body=b"someone else's object")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_cache_scale.py"), "--minimal",
                           "--endpoint", endpoint, "--bucket", bucket, "--json", str(tmp_path / "out.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["server"] == "external" and result["cpu_pct_parallel_server"] is None
    assert result["transfer_speedup"] > 0 and result["first_step_s_streaming"] > 0
    left = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert left == ["keep/me.txt"]
