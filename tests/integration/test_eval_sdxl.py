"""SDXL evaluation on the tiny SDXL-shaped model: the plain StableDiffusionXLPipeline as the
baseline, the adapter pipeline with adapter_conditioning_factor, a scale sweep, FID off.

The adapter is freshly initialised (``build_adapter``), not trained: this test is about the
SDXL sampling path and the outputs, not about the metric values."""
from __future__ import annotations

import json

import pytest

from t2iops.config import load_config
from t2iops.evaluate.stage import evaluate

pytestmark = pytest.mark.slow


def test_sdxl_with_conditioning_factor_and_scale_sweep(tiny_sdxl_path, tmp_path):
    from t2iops.data.synth import synthesize
    from t2iops.data.validate import validate
    from t2iops.models.family import build_adapter
    from t2iops.models.resolve import load_base_model

    cfg = load_config(None, [
        f"model.base_model={tiny_sdxl_path}", "data.synth.count=16", "data.test_fraction=0.5",
        "evaluate.num_samples=2", "evaluate.batch_size=2", "evaluate.num_inference_steps=2",
        "evaluate.conditioning_scales=[1.0, 0.5]", "evaluate.conditioning_factor=0.5",
        "evaluate.scheduler=euler", "evaluate.fid=off", "evaluate.negative_prompt=blurry",
        f"storage.cache_dir={tmp_path / 'cache'}",
    ])
    synthesize(str(tmp_path / "data"), cfg)
    validate(str(tmp_path / "data"), str(tmp_path / "validated"), cfg)
    base = load_base_model(cfg.model, components=("unet",))
    build_adapter(base, cfg.model).save_pretrained(str(tmp_path / "O" / "adapter"))

    metrics = evaluate(str(tmp_path / "O"), str(tmp_path / "data"), str(tmp_path / "validated"),
                       str(tmp_path / "E"), cfg)
    assert metrics["num_samples"] == 2
    assert set(metrics["sweep"]) == {"scale_0.5"}
    assert set(metrics["sweep"]["scale_0.5"]) == {"edge_f1", "circle_iou"}
    assert "fid" not in metrics
    report = (tmp_path / "E" / "report.md").read_text()
    assert "FID and KID are missing: FID/KID turned off (evaluate.fid=off)" in report
    assert "| conditioning factor (SDXL) | 0.5 |" in report and "| scheduler | euler |" in report
    for variant in ("without_adapter", "adapter@1", "adapter@0.5"):
        assert len(list((tmp_path / "E" / "images" / variant).glob("*.png"))) == 2
    assert json.loads((tmp_path / "E" / "metrics.json").read_text())["gate"]["passed"] is True
