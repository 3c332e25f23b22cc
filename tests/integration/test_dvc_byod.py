"""Bring your own data and base model through DVC: data.root and model.base_model in params.yaml
drive dvc.yaml, and `dvc repro export` trains, evaluates and exports without running the synth
or toy_base stages (they only build the embedded default). The dataset is not square (3:2 photos,
9:16 phone shots and squares) and `encode.buckets: auto` keeps each shape through every stage."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import csv
import json

import pytest
import yaml

from t2iops.config import load_config
from t2iops.data.synth import synthesize
from t2iops.pipelines.local import SMOKE_OVERRIDES

REPO = Path(__file__).resolve().parents[2]


def _run(args, cwd):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc

pytestmark = [pytest.mark.slow]


def test_own_dataset_and_base_model_through_dvc_repro(tmp_path, tiny_sdxl_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(REPO / "dvc.yaml", proj / "dvc.yaml")
    (proj / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "t2iops", proj / "scripts" / "t2iops")  # what dvc.yaml's stages run
    # The user's dataset folder (made here with the circle generator, outside any DVC stage) and
    # their own SDXL-architecture base model folder.
    synthesize(str(proj / "data" / "mine"), load_config(None, ["data.synth.count=24",
                                                               "data.synth.aspect_ratios=[1.5,0.5625,1.0]"]))
    shutil.copytree(tiny_sdxl_path, proj / "models" / "my-sdxl")
    small = {k: v for k, v in SMOKE_OVERRIDES.items() if not k.startswith("data.synth")}
    cfg = load_config(REPO / "params.yaml", {
        **small, "data.root": "data/mine", "model.base_model": "models/my-sdxl",
        "evaluate.gate.min_circle_iou": None, "evaluate.batch_size": 2, "export.pipeline_check": "skip",
        "encode.buckets": "auto", "evaluate.num_samples": 6,
    })
    (proj / "params.yaml").write_text(cfg.to_yaml())
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"], ["git", "config", "user.name", "ci"],
                ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "my project"]):  # DVCLive wants a commit
        _run(cmd, proj)

    out = _run(["dvc", "repro", "export"], proj).stdout
    for stage in ("validate", "encode", "train", "evaluate", "export"):
        assert f"Running stage '{stage}'" in out, out
    assert "Running stage 'synth'" not in out and "Running stage 'toy_base'" not in out, out
    assert not (proj / "data" / "circles").exists() and not (proj / "models" / "toy-base").exists()
    assert (proj / "outputs" / "export" / "adapter.onnx").exists()
    lock = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]
    assert {"data/mine", "models/my-sdxl"} <= {d["path"] for d in lock["encode"]["deps"]}
    assert lock["train"]["params"]["params.yaml"]["model"]["base_model"] == "models/my-sdxl"
    assert "validate --root data/mine" in lock["validate"]["cmd"]
    # No square crop: the photos and phone shots keep their shape in the cache, the training run,
    # the generated samples and the exported bucket list. The canvases at 64 px are 80x56, 48x88 and
    # 64x64 (width x height, sides of 8); auto's nearest buckets are 48x80 (5:3), 96x48 (1:2) and the
    # square (height x width).
    shapes = {"64x64", "48x80", "96x48"}
    cache = json.loads((proj / "outputs" / "cache" / "cache.json").read_text())
    names = [f"{h}x{w}" for h, w in cache["buckets"]]
    assert {names[b] for b in cache["samples"]["train"]["buckets"]} == shapes, names
    summary = json.loads((proj / "outputs" / "train" / "summary.json").read_text())
    assert {b["bucket"] for b in summary["buckets"] if b["samples"]} == shapes
    with open(proj / "outputs" / "evaluate" / "samples.csv") as fh:
        assert len({row["bucket"] for row in csv.DictReader(fh)}) > 1
    exported = json.loads((proj / "outputs" / "export" / "export.json").read_text())["buckets"]
    assert {f"{h}x{w}" for h, w in exported["sizes"]} == shapes and exported["sizes_from"].startswith("the training run")
