"""`t2iops pipeline run-local --runner docker` as a person types it, when something is missing:
one line that names the fix, exit 2, no traceback, nothing run."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.container


def run_local(tmp_path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t2iops.cli", "pipeline", "run-local", "--work", str(tmp_path / "w"),
                           "--runner", "docker", *args], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**os.environ, **(env or {})})


def test_an_image_not_built_here_names_the_build_command(docker, tmp_path):
    done = run_local(tmp_path, "--image", "t2iops:never-built")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "image 't2iops:never-built' is not on this machine: build it with `bash scripts/build_image.sh --tag " \
           "t2iops:never-built`" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "w" / "kfp-root").exists()


def test_no_daemon_names_what_to_start(tmp_path):
    done = run_local(tmp_path, "--image", "t2iops:dev", env={"DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--runner docker: no docker daemon answers" in done.stderr and "start dockerd" in done.stderr
    assert "Traceback" not in done.stderr
