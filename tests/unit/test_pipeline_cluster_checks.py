"""`pipeline compile | submit | schedule` refuse what a cluster cannot run, with exit 2 and before
any network call; an endpoint that does not answer is one line naming it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from t2iops.cli import main
from t2iops.pipelines.cluster_checks import check_cron, is_local_path

CLUSTER = ["-S", "model.base_model=s3://models/sdxl-tiny"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "p.yaml"
    assert main(["pipeline", "compile", "-o", str(out), *CLUSTER]) == 0
    return out


def test_compile_refuses_a_local_base_model_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "-o", str(out)]) == 2  # params.yaml: models/toy-base
    err = capsys.readouterr().err
    assert "model.base_model 'models/toy-base' is a local path" in err and "hub id" in err and "s3://" in err
    assert not out.exists()
    assert main(["pipeline", "compile", "-o", str(out), "-S", f"model.base_model={tmp_path}"]) == 2
    assert main(["pipeline", "compile", "-o", str(out), *CLUSTER, "-S", f"data.root={tmp_path}"]) == 2
    assert "data.root" in capsys.readouterr().err


@pytest.mark.slow  # compiles the package (10-30 s on two busy cores)
def test_compile_honours_params_and_overrides(package, tmp_path):
    second = tmp_path / "b.yaml"
    assert main(["pipeline", "compile", "-o", str(second), *CLUSTER, "-S", "train.lr=1e-5"]) == 0
    assert package.read_text() != second.read_text()
    assert '1e-05' in second.read_text() and '1e-05' not in package.read_text()


@pytest.mark.slow  # compiles the package (10-30 s on two busy cores)
def test_submit_and_schedule_check_their_arguments_before_the_network(package, tmp_path, capsys):
    host = f"http://127.0.0.1:{_closed_port()}"
    base = ["--host", host, "--package", str(package), *CLUSTER]
    cases = {
        "eval_shards": ["pipeline", "submit", *base, "-p", "eval_shards=[0,2]"],
        "data_source": ["pipeline", "submit", *base, "-p", f"data_source={tmp_path}"],
        "is a local path": ["pipeline", "submit", "--host", host, "--package", str(package)],  # toy base
        "minute '61'": ["pipeline", "schedule", *base, "--cron", "61 3 * * 1"],
        "5 fields": ["pipeline", "schedule", *base, "--cron", "0 3 * *"],
    }
    for fragment, argv in cases.items():
        assert main(argv) == 2, fragment
        err = capsys.readouterr().err
        assert fragment in err and host not in err and "Retry" not in err, err


def test_cron_fields_are_checked():
    assert check_cron("0 3 * * 1") == "0 0 3 * * 1"
    assert check_cron("*/30 0-6,22 * JAN-MAR MON") == "0 */30 0-6,22 * JAN-MAR MON"
    for bad in ("0 25 * * *", "0 3 32 * *", "0 3 * 13 *", "0 3 * * 8", "x 3 * * *", "*/0 3 * * *"):
        with pytest.raises(Exception, match="--cron"):
            check_cron(bad)


def test_local_paths_are_told_from_hub_ids_and_uris(tmp_path):
    assert is_local_path(str(tmp_path)) and is_local_path("./models/x") and is_local_path("models/toy-base")
    for remote in ("s3://b/m", "stabilityai/stable-diffusion-xl-base-1.0", "https://example.com/m"):
        assert not is_local_path(remote)


@pytest.mark.slow  # compiles the package (10-30 s on two busy cores)
def test_an_unreachable_host_is_one_line_naming_it(package):
    host = f"http://127.0.0.1:{_closed_port()}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "t2iops.cli", "pipeline", "submit", "--host", host, "--package", str(package), *CLUSTER],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot reach the KFP endpoint {host}" in lines[0], proc.stderr
