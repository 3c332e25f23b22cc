"""Base-model resolution from local folders, the offline hub, options and errors."""
import json
import logging

import pytest
import torch

from t2iops.cli import main
from t2iops.config import ModelConfig
from t2iops.errors import ModelError
from t2iops.models.resolve import SDXL_FP16_VAE, load_base_model, resolve_model_path


def test_local_folder_loads_every_component(tiny_sd15_path):
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    base = load_base_model(ModelConfig(base_model=tiny_sd15_path, dtype="fp32"),
                           components=("unet", "vae", "text_encoders", "scheduler"))
    assert base.family == "sd15" and base.path == tiny_sd15_path and base.source == tiny_sd15_path
    assert isinstance(base.unet, UNet2DConditionModel) and isinstance(base.vae, AutoencoderKL)
    assert isinstance(base.text_encoders[0], CLIPTextModel) and isinstance(base.scheduler, PNDMScheduler)
    assert base.unet.dtype == torch.float32 and not base.unet.training
    tokenizer = base.tokenizers[0]
    assert len(tokenizer) == base.text_encoders[0].config.vocab_size
    assert len(tokenizer("red circle with blue background", add_special_tokens=False).input_ids) == 5


def test_configs_only_and_dtype(tiny_sdxl_path):
    meta = load_base_model(ModelConfig(base_model=tiny_sdxl_path), components=())
    assert meta.unet is None and meta.family == "sdxl" and meta.vae_scale_factor == 4
    assert meta.unet_config["addition_embed_type"] == "text_time"
    half = load_base_model(ModelConfig(base_model=tiny_sdxl_path, dtype="bf16"), components=("unet",))
    assert half.unet.dtype == torch.bfloat16
    tokens_only = load_base_model(ModelConfig(base_model=tiny_sdxl_path), components=("tokenizers",))
    assert len(tokens_only.tokenizers) == 2 and tokens_only.text_encoders == []


def test_sdxl_fp16_without_fixed_vae_warns_with_the_fix(tiny_sdxl_path, caplog):
    with caplog.at_level(logging.WARNING, logger="t2iops.models.resolve"):
        load_base_model(ModelConfig(base_model=tiny_sdxl_path, dtype="fp16"), components=("vae",))
    assert SDXL_FP16_VAE in caplog.text and "model.vae" in caplog.text


def test_vae_override_from_a_folder_is_used_and_silences_the_warning(tiny_sdxl_path, tmp_path, caplog):
    from diffusers import AutoencoderKL

    torch.manual_seed(123)
    own = AutoencoderKL.from_pretrained(tiny_sdxl_path, subfolder="vae")
    fixed = AutoencoderKL.from_config(own.config)  # fresh random weights
    fixed.save_pretrained(tmp_path / "vae-fix")  # config.json at the root, as the hub's fp16-fix VAE
    with caplog.at_level(logging.WARNING, logger="t2iops.models.resolve"):
        base = load_base_model(
            ModelConfig(base_model=tiny_sdxl_path, dtype="fp16", vae=str(tmp_path / "vae-fix")), components=("vae",)
        )
    assert SDXL_FP16_VAE not in caplog.text
    assert base.vae.dtype == torch.float16
    torch.testing.assert_close(base.vae.encoder.conv_in.weight.float(), fixed.encoder.conv_in.weight.half().float())
    assert not torch.equal(base.vae.encoder.conv_in.weight.float(), own.encoder.conv_in.weight.half().float())
    # A whole diffusers model folder works as a VAE source too (its vae/ subfolder).
    again = load_base_model(ModelConfig(base_model=tiny_sdxl_path, dtype="fp32", vae=tiny_sdxl_path), components=("vae",))
    torch.testing.assert_close(again.vae.encoder.conv_in.weight, own.encoder.conv_in.weight)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("hub_id", ["stabilityai/stable-diffusion-xl-base-1.0", "t2iops-tests/never-published-model"])
def test_offline_hub_id_that_is_not_cached_gives_a_clear_error(monkeypatch, hub_id):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        load_base_model(ModelConfig(base_model=hub_id))
    msg = str(err.value)
    assert hub_id in msg and "not in the Hugging Face cache" in msg and "HF_HUB_OFFLINE" in msg
    # The three ways to provide a model.
    assert "hub id" in msg and "local diffusers folder" in msg and "s3://" in msg
    assert "does not appear to have a file" not in msg  # the library's misleading wording


@pytest.mark.timeout(120)
def test_local_files_only_is_honoured(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelError, match="model.local_files_only"):
        load_base_model(ModelConfig(base_model="stable-diffusion-v1-5/stable-diffusion-v1-5", local_files_only=True))


def test_bad_local_references(tmp_path):
    with pytest.raises(ModelError, match="no such local folder"):
        resolve_model_path(str(tmp_path / "missing" / "deeper" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"cannot load \(unet/\).*diffusers folder"):
        load_base_model(ModelConfig(base_model=str(tmp_path / "empty")))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        load_base_model(ModelConfig(base_model=str(tmp_path / "file.bin")))
    assert resolve_model_path("org/model") == ("org/model", "hub")


def test_missing_variant_names_the_option(tiny_sd15_path):
    with pytest.raises(ModelError, match=r"model.variant='fp16'"):
        load_base_model(ModelConfig(base_model=tiny_sd15_path, variant="fp16"), components=("unet",))


def test_cli_inspect_and_offline_error(tiny_sdxl_path, capsys):
    assert main(["model", "inspect", tiny_sdxl_path, "--json", "-S", "encode.resolution=128"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["family"] == "sdxl" and report["resolution"] == 128
    assert report["adapter_kwargs"]["adapter_type"] == "full_adapter_xl"
    assert report["adapter_feature_shapes"][:3] == report["unet_residual_shapes"]
    assert report["adapter_feature_shapes"][3] == report["unet_mid_shape"] == [64, 8, 8]

    assert main(["model", "inspect", "stabilityai/stable-diffusion-xl-base-1.0"]) == 1
    err = capsys.readouterr().err
    assert "t2iops model: error:" in err and "stabilityai/stable-diffusion-xl-base-1.0" in err


def test_cli_tiny_publishes_a_loadable_model(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["model", "tiny", "--family", "sd15", "--out", str(out)]) == 0
    assert (out / "_manifest.json").exists() and (out / "model_index.json").exists()
    assert (out / "config.resolved.yaml").exists()
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["family"] == "sd15" and "unet/config.json" in manifest["files"]
    assert load_base_model(ModelConfig(base_model=str(out)), components=()).family == "sd15"
