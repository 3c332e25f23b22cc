"""The embedded default chain on a toy base: ``t2iops toy-base`` (a few steps of the real
recipe), an adapter trained on it by the trainer, then ``t2iops evaluate --gate`` through the
CLI. Every output the report promises must be there, for the SDXL adapter pipeline the toy base
uses. The toy base here is trained for two steps, so metric values are not meaningful; the full
toy base and its workflow figures are benchmarks (benchmarks/RESULTS.md)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from t2iops.evaluate.fid import save_random_inception_weights
from t2iops.presets import preset_config

pytestmark = pytest.mark.slow

NUM_SAMPLES = 3
TOY_FEW_STEPS = [
    "toy_base.vae_steps=2", "toy_base.unet_steps=2", "toy_base.num_samples=32",
    "toy_base.batch_size=4", "toy_base.vae_batch_size=4", "toy_base.eval_samples=2",
    "toy_base.eval_steps=2", "toy_base.num_threads=1",
]


def test_toy_base_adapter_evaluates_with_every_output(tmp_path):
    from t2iops.data.synth import synthesize
    from t2iops.data.validate import validate
    from t2iops.encode import encode_dataset
    from t2iops.models.toy_base import train_toy_base
    from t2iops.train.trainer import train

    base = tmp_path / "toy-base"
    weights = tmp_path / "pt_inception_random.pth"
    save_random_inception_weights(weights)
    overrides = [
        *TOY_FEW_STEPS, f"model.base_model={base}",
        "data.synth.count=40", "data.val_fraction=0.1", "data.test_fraction=0.2",
        "encode.resolution=64", "encode.batch_size=8",
        "train.max_steps=2", "train.batch_size=4", "train.checkpoint_every=1000",
        f"evaluate.num_samples={NUM_SAMPLES}", "evaluate.batch_size=2", "evaluate.num_inference_steps=2",
        f"evaluate.inception_weights={weights}", "evaluate.kid_subsets=3", "evaluate.grid_rows=2",
        "evaluate.gate.min_circle_iou=0.0",
        f"storage.cache_dir={tmp_path / 'cache'}",
        "train.timestep_sampling=cubic", "evaluate.guidance_scale=5.0", "evaluate.conditioning_scales=[1.0]",
    ]
    cfg = preset_config("toy", overrides)
    train_toy_base(str(base), cfg)
    synthesize(str(tmp_path / "data"), cfg)
    validate(str(tmp_path / "data"), str(tmp_path / "validated"), cfg)
    encode_dataset(str(tmp_path / "data"), str(tmp_path / "validated"), str(tmp_path / "cache-latents"), cfg)
    train(str(tmp_path / "cache-latents"), str(tmp_path / "O"), cfg)
    adapter_cfg = json.loads((tmp_path / "O" / "adapter" / "config.json").read_text())
    assert adapter_cfg["adapter_type"] == "full_adapter_xl"

    params = tmp_path / "params.yaml"
    params.write_text(cfg.to_yaml())
    run = subprocess.run(
        [sys.executable, "-m", "t2iops.cli", "evaluate", "--adapter", str(tmp_path / "O"),
         "--data", str(tmp_path / "data"), "--validated", str(tmp_path / "validated"),
         "--out", str(tmp_path / "E"), "--gate", "--params", str(params)],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    out = tmp_path / "E"
    for name in ("metrics.json", "samples.csv", "grid.png", "report.md", "report.html",
                 "config.resolved.yaml", "_manifest.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == NUM_SAMPLES
    for name in ("edge_f1", "circle_iou"):
        m = metrics[name]
        assert m["lift"] == pytest.approx(m["with_adapter"] - m["without_adapter"])
    assert np.isfinite(metrics["fid"]["with_adapter"]) and np.isfinite(metrics["kid"]["without_adapter"])
    assert metrics["gate"]["passed"] is True and metrics["gate"]["checks"][0]["name"] == "circle_iou"
    assert len(list(csv.DictReader(open(out / "samples.csv")))) == NUM_SAMPLES
    for variant in ("without_adapter", "adapter@1"):
        images = sorted((out / "images" / variant).glob("*.png"))
        assert len(images) == NUM_SAMPLES
        assert Image.open(images[0]).size == (64, 64)
    md = (out / "report.md").read_text()
    assert f"{base} (sdxl)" in md and "edge_f1" in md and "circle_iou" in md
    assert "data:image/png;base64," in (out / "report.html").read_text()
