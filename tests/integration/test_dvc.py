"""Real `dvc` commands: `dvc repro` twice (second a no-op) and a push/pull round trip through
the loopback S3 server, on the repository's own dvc.yaml."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow]


def _env(extra=None):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.update(extra or {})
    return env


def _run(args, cwd, env=None, check=True):
    proc = subprocess.run(args, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture()
def dvc_project(tmp_path):
    """A fresh git + DVC project holding the repository's dvc.yaml and params.yaml, with the
    synthetic dataset shrunk so the stages take seconds."""
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(REPO / "dvc.yaml", proj / "dvc.yaml")
    (proj / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "t2iops", proj / "scripts" / "t2iops")  # what dvc.yaml's stages run
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["synth"]["count"] = 40
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], proj)
    _run(["git", "config", "user.email", "ci@example.com"], proj)
    _run(["git", "config", "user.name", "ci"], proj)
    _run(["dvc", "init", "-q"], proj)
    _run(["dvc", "config", "core.analytics", "false"], proj)
    return proj


def test_repro_twice_second_run_is_a_noop(dvc_project):
    first = _run(["dvc", "repro", "validate"], dvc_project)
    assert "Running stage 'synth'" in first.stdout and "Running stage 'validate'" in first.stdout
    rows = (dvc_project / "outputs" / "validated" / "rows.jsonl").read_text().splitlines()
    assert len(rows) == 40
    lock = yaml.safe_load((dvc_project / "dvc.lock").read_text())
    assert {"synth", "validate"} <= set(lock["stages"])
    before = (dvc_project / "dvc.lock").read_text()

    second = _run(["dvc", "repro", "validate"], dvc_project)
    assert "Running stage" not in second.stdout, second.stdout
    assert "didn't change" in second.stdout or "up to date" in second.stdout
    assert (dvc_project / "dvc.lock").read_text() == before

    # A param change re-runs exactly the affected stages.
    params = yaml.safe_load((dvc_project / "params.yaml").read_text())
    params["data"]["val_fraction"] = 0.2
    (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run(["dvc", "repro", "validate"], dvc_project)
    assert "Running stage 'validate'" in third.stdout
    assert "Running stage 'synth'" not in third.stdout


@pytest.mark.s3
def test_push_and_pull_through_s3_remote(dvc_project, s3_bucket):
    endpoint, bucket = s3_bucket
    proj = dvc_project
    _run(["dvc", "remote", "add", "-d", "store", f"s3://{bucket}/dvcstore"], proj)
    _run(["dvc", "remote", "modify", "store", "endpointurl", endpoint], proj)
    env = _env({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    _run(["dvc", "repro", "synth"], proj, env)
    original = {p.relative_to(proj): p.read_bytes() for p in (proj / "data" / "circles").rglob("*") if p.is_file()}
    assert len(original) > 40
    push = _run(["dvc", "push"], proj, env)
    assert "pushed" in (push.stdout + push.stderr).lower()

    import boto3

    keys = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").list_objects_v2(
        Bucket=bucket, Prefix="dvcstore/"
    )
    assert keys.get("KeyCount", 0) > 0, "dvc push wrote objects to the S3 remote"

    shutil.rmtree(proj / "data")
    shutil.rmtree(proj / ".dvc" / "cache")
    _run(["dvc", "pull", "synth"], proj, env)
    pulled = {p.relative_to(proj): p.read_bytes() for p in (proj / "data" / "circles").rglob("*") if p.is_file()}
    assert pulled == original
