"""dvc.yaml's stages run `scripts/t2iops`, so `dvc repro` works from a shell where nothing was
activated: the checkout's .venv when it exists, else the t2iops on PATH, else one line naming
both (exit 127)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)  # the environment running the tests: it has t2iops and dvc
BARE_PATH = os.pathsep.join(p for p in ("/usr/local/bin", "/usr/bin", "/bin") if Path(p).is_dir())


def _project(tmp_path: Path) -> Path:
    """A DVC project holding the repository's dvc.yaml and wrapper, with 8 synthetic samples."""
    proj = tmp_path / "proj"
    (proj / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", proj / "dvc.yaml")
    shutil.copy2(REPO / "scripts" / "t2iops", proj / "scripts" / "t2iops")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["synth"]["count"] = 8
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([str(VENV / "bin" / "dvc"), "init", "-q", "--no-scm"], cwd=proj, check=True, env=_bare_env())
    return proj


def _bare_env(**extra: str) -> dict:
    """A shell where only the README's commands ran: no environment on PATH, none activated."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "T2IOPS_VENV", "CONDA_PREFIX")}
    env.update({"PATH": BARE_PATH, "DVC_NO_ANALYTICS": "1", **extra})
    return env


def _on_bare_path(name: str) -> bool:
    return shutil.which(name, path=BARE_PATH) is not None


def test_every_stage_runs_the_wrapper():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert {name: s["cmd"].split()[0] for name, s in stages.items()} == {name: "scripts/t2iops" for name in stages}
    assert os.access(REPO / "scripts" / "t2iops", os.X_OK), "scripts/t2iops must be executable (git tracks the bit)"


def test_dvc_repro_uses_the_checkouts_venv_without_activating_it(tmp_path):
    if _on_bare_path("t2iops"):
        pytest.skip(f"a t2iops is installed on {BARE_PATH}: the test could not tell which one ran")
    proj = _project(tmp_path)
    (proj / ".venv").symlink_to(VENV, target_is_directory=True)
    proc = subprocess.run([str(VENV / "bin" / "dvc"), "repro", "-s", "synth"], cwd=proj, env=_bare_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "> scripts/t2iops data synth" in proc.stdout
    assert len((proj / "data" / "circles" / "metadata.jsonl").read_text().splitlines()) == 8


def test_wrapper_falls_back_to_the_t2iops_on_path(tmp_path):
    proj = _project(tmp_path)  # no .venv in this checkout: a user's own environment on PATH
    proc = subprocess.run(["scripts/t2iops", "--version"], cwd=proj, capture_output=True, text=True, timeout=60,
                          env=_bare_env(PATH=f"{VENV / 'bin'}{os.pathsep}{BARE_PATH}"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("t2iops ")


def test_wrapper_without_any_t2iops_names_both_places(tmp_path):
    if _on_bare_path("t2iops"):
        pytest.skip(f"a t2iops is installed on {BARE_PATH}")
    proj = _project(tmp_path)
    proc = subprocess.run(["scripts/t2iops", "--version"], cwd=proj, env=_bare_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 127
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"{proj.resolve()}/.venv/bin/t2iops" in lines[0] and "bash scripts/bootstrap.sh" in lines[0]
    assert "pip install t2iops" in lines[0] and "PATH" in lines[0]
