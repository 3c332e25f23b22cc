"""The DVC door resumes after a kill: SIGKILL the whole `dvc repro` process group after the train
stage wrote a checkpoint, run `dvc repro` again, and the adapter is bit-equal to an uninterrupted
run's while the second run did only the remaining steps. Real dvc in a temporary repository
holding the repository's own train stage, a tiny SDXL model and a toy cache."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from t2iops.config import load_config
from t2iops.data.synth import synthesize
from t2iops.data.validate import validate
from t2iops.encode import encode_dataset

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

TRAIN = {"batch_size": 2, "max_steps": 8, "checkpoint_every": 2, "log_every": 1, "lr": 1e-3,
         "caption_dropout": 0.3, "num_workers": 0, "validate_every": 0}


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
    return env


def _run(args, cwd):
    proc = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture()
def project(tmp_path, tiny_sdxl_path):
    """A git + DVC project whose dvc.yaml is the repository's train stage, with the tiny model at
    models/toy-base and a toy cache at outputs/cache (plain dependencies here)."""
    proj = tmp_path / "proj"
    proj.mkdir()
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}, sort_keys=False))
    (proj / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "t2iops", proj / "scripts" / "t2iops")  # what the stage runs
    shutil.copytree(tiny_sdxl_path, proj / "models" / "toy-base")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update({"val_fraction": 0.0, "test_fraction": 0.0})
    params["data"]["synth"]["count"] = 12
    params["encode"].update({"resolution": 64, "shard_size": 8, "batch_size": 8})
    params["train"].update(TRAIN)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cwd = os.getcwd()
    os.chdir(proj)  # model.base_model is the relative models/toy-base, as in the real project
    try:
        cfg = load_config(proj / "params.yaml")
        synthesize(str(tmp_path / "data"), cfg)
        validate(str(tmp_path / "data"), str(tmp_path / "validated"), cfg)
        encode_dataset(str(tmp_path / "data"), str(tmp_path / "validated"), str(proj / "outputs" / "cache"), cfg)
    finally:
        os.chdir(cwd)
    for args in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                 ["git", "config", "user.name", "ci"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                 ["git", "add", "dvc.yaml", "params.yaml", ".dvc"], ["git", "commit", "-qm", "project"]):
        _run(args, proj)  # (DVCLive, which the trainer logs through, needs a commit)
    return proj


def test_dvc_repro_after_a_kill_resumes_and_matches_an_uninterrupted_run(project, tmp_path):
    straight = tmp_path / "straight"
    shutil.copytree(project, straight)
    _run(["dvc", "repro", "train"], straight)

    proc = subprocess.Popen(["dvc", "repro", "train"], cwd=project, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = project / "outputs" / "train" / "checkpoints" / "latest"
    deadline = time.time() + 600
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc, its shell and the trainer
    proc.wait()
    killed_at = latest.read_text()
    assert killed_at < "step-000008", "the run finished before it could be interrupted"
    assert not (project / "outputs" / "train" / "summary.json").exists()

    again = _run(["dvc", "repro", "train"], project)
    assert "Running stage 'train'" in again.stdout
    summary = json.loads((project / "outputs" / "train" / "summary.json").read_text())
    reference = json.loads((straight / "outputs" / "train" / "summary.json").read_text())
    assert summary["steps"] == reference["steps"] == TRAIN["max_steps"]
    assert summary["resumed_from"].endswith(killed_at)
    assert summary["steps_this_run"] == TRAIN["max_steps"] - int(killed_at.split("-")[1]) < TRAIN["max_steps"]
    assert summary["losses"] == reference["losses"]
    weights = "outputs/train/adapter/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(straight / weights)), load_file(str(project / weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (project / "outputs" / "train" / ".train.lock").exists()

    # Finished and recorded: the next `dvc repro` has nothing to do.
    third = _run(["dvc", "repro", "train"], project)
    assert "Running stage 'train'" not in third.stdout
