"""End to end: diffusers' adapter pipelines on the tiny base models, with residuals from the
ONNX graph (OrtT2IAdapter) vs from the PyTorch adapter, same seed -> the same image."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from t2iops.config import load_config
from t2iops.export.onnx_export import export_fp32
from t2iops.export.ort_adapter import OrtT2IAdapter
from t2iops.export.parity import ImageSettings, load_check_base, pipeline_parity
from t2iops.export.stage import export_adapter

pytestmark = pytest.mark.slow

# Stated tolerance for the images ([0, 1] scale). Measured here: about 2e-6 for all three layouts.
IMAGE_TOLERANCE = 1e-4


def fitted_adapter(base_path: str, adapter_type: str, seed: int = 0):
    from diffusers import T2IAdapter

    from t2iops.models.family import adapter_kwargs_for, vae_scale_factor_of

    base = Path(base_path)
    unet_config = json.loads((base / "unet" / "config.json").read_text())
    vae_config = json.loads((base / "vae" / "config.json").read_text())
    kwargs = adapter_kwargs_for(unet_config, adapter_type, num_res_blocks=1, vae_scale_factor=vae_scale_factor_of(vae_config))
    torch.manual_seed(seed)
    return T2IAdapter(**kwargs).eval().requires_grad_(False)


@pytest.mark.parametrize("family, adapter_type", [("sd15", "light_adapter"), ("sdxl", "full_adapter_xl")])
def test_onnx_residuals_give_the_same_image(family, adapter_type, tiny_sd15_path, tiny_sdxl_path, tmp_path):
    base = tiny_sd15_path if family == "sd15" else tiny_sdxl_path
    adapter = fitted_adapter(base, adapter_type)
    onnx_path = export_fp32(adapter, tmp_path / "adapter.onnx", opset=17, sample_size=64)
    onnx_adapter = OrtT2IAdapter(onnx_path, adapter.total_downscale_factor, adapter.downscale_factor,
                                 providers=["CPUExecutionProvider"])
    settings = ImageSettings(resolution=64, steps=2, seed=3, guidance_scale=5.0)
    result = pipeline_parity(load_check_base(base, family), adapter, onnx_adapter, settings)
    assert result["image_shape"] == [1, 64, 64, 3]
    assert result["max_abs_pixel_difference"] <= IMAGE_TOLERANCE
    # The residuals really steer the image, so the check above could have failed.
    assert result["adapter_effect_max_abs"] > 100 * max(result["max_abs_pixel_difference"], IMAGE_TOLERANCE / 100)


def test_export_stage_runs_the_pipeline_check(tiny_sd15_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fitted_adapter(tiny_sd15_path, "full_adapter").save_pretrained(str(tmp_path / "adapter"))
    cfg = load_config(None, [
        f"model.base_model={tiny_sd15_path}", "export.pipeline_check=required", "export.resolutions=[64]",
        "encode.buckets=square",
        f"export.pipeline_tolerance={IMAGE_TOLERANCE}",
    ])
    spec = export_adapter(str(tmp_path / "adapter"), str(tmp_path / "export"), cfg)
    pipeline = spec["validation"]["pipeline"]
    assert pipeline["status"] == "passed", pipeline
    assert pipeline["max_abs_pixel_difference"] <= IMAGE_TOLERANCE < pipeline["adapter_effect_max_abs"]
    assert "End-to-end pipeline" in (tmp_path / "export" / "README.md").read_text()

    # The published bundle plugs into the pipeline through OrtT2IAdapter.from_export.
    from diffusers import StableDiffusionAdapterPipeline

    onnx_adapter = OrtT2IAdapter.from_export(tmp_path / "export", fp16=True, providers=["CPUExecutionProvider"])
    pipe = StableDiffusionAdapterPipeline.from_pretrained(
        tiny_sd15_path, adapter=onnx_adapter, safety_checker=None, feature_extractor=None
    )
    pipe.set_progress_bar_config(disable=True)
    condition = torch.rand(1, 3, 64, 64)
    images = pipe("red circle with blue background", image=condition, num_inference_steps=1,
                  num_images_per_prompt=2, output_type="np").images
    assert images.shape == (2, 64, 64, 3)

