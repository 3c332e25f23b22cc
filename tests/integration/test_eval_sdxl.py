"""SDXL evaluation on the tiny SDXL-shaped model: the plain StableDiffusionXLPipeline as the
baseline, the adapter pipeline with adapter_conditioning_factor, a scale sweep, FID off.

The adapter is freshly initialised (``build_adapter``), not trained: this test is about the
SDXL sampling path and the outputs, not about the metric values."""
from __future__ import annotations

import json

import pytest

from t2iops.evaluate.stage import evaluate
from t2iops.presets import preset_config

pytestmark = pytest.mark.slow


def test_sdxl_with_conditioning_factor_and_scale_sweep(tiny_sdxl_path, tmp_path):
    from t2iops.data.synth import synthesize
    from t2iops.data.validate import validate
    from t2iops.models.family import build_adapter
    from t2iops.models.resolve import load_base_model

    cfg = preset_config("toy", [  # CPU-sized (64 px), with guidance 5 and no gate
        "evaluate.guidance_scale=5.0", "evaluate.gate.min_circle_iou=null",
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


def test_scale_zero_is_the_plain_generator_bit_for_bit(tiny_sdxl_path, tmp_path):
    """Evaluate reuses the without-adapter images for a sweep entry of scale 0; that is only
    right if the adapter generator at scale 0 denoises exactly as the plain one does."""
    import numpy as np
    from PIL import Image

    from t2iops.evaluate.sampling import build_generators, generate
    from t2iops.models.family import build_adapter
    from t2iops.models.resolve import load_base_model

    cfg = preset_config("toy", [f"model.base_model={tiny_sdxl_path}", "evaluate.num_inference_steps=3",
                                "evaluate.guidance_scale=5.0", "evaluate.conditioning_factor=0.5",
                                f"storage.cache_dir={tmp_path / 'cache'}"])
    base = load_base_model(cfg.model)
    adapter = build_adapter(base, cfg.model)
    generators = build_generators(base, adapter, "default", "cpu")
    rng = np.random.default_rng(0)
    conditions = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    prompts, seeds = ["red circle with blue background", "a"], [5, 6]
    plain = generate(generators, prompts, seeds, 64, cfg.evaluate)
    at_zero = generate(generators, prompts, seeds, 64, cfg.evaluate, conditions, 0.0)
    at_one = generate(generators, prompts, seeds, 64, cfg.evaluate, conditions, 1.0)
    np.testing.assert_array_equal(at_zero, plain)
    assert not np.array_equal(at_one, plain)  # the adapter does act at scale 1
