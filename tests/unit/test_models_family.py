"""Family detection and adapter shapes derived from the UNet, on the tiny models and on the real
SD1.5 / SDXL UNet layouts (their configs only: no weights are needed to derive shapes)."""
import pytest
import torch

from t2iops.config import ModelConfig
from t2iops.errors import ModelError
from t2iops.models.family import (
    adapter_feature_shapes,
    adapter_kwargs_for,
    build_adapter,
    check_adapter_fits,
    detect_family,
    unet_residual_shapes,
)
from t2iops.models.resolve import load_base_model
from t2iops.models.text import encode_prompts, sdxl_time_ids

# The block layout of the published UNets (stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0
# unet/config.json), and of the published TencentARC adapters for them.
SD15_UNET = {
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "addition_embed_type": None,
    "sample_size": 64,
}
SDXL_UNET = {
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "addition_embed_type": "text_time",
    "sample_size": 128,
}


@pytest.fixture(scope="module")
def sd15(tiny_sd15_path):
    return load_base_model(ModelConfig(base_model=tiny_sd15_path, dtype="fp32"), components=("unet", "text_encoders"))


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_path):
    return load_base_model(ModelConfig(base_model=tiny_sdxl_path, dtype="fp32"), components=("unet", "text_encoders"))


def test_family_detection_on_tiny_models(sd15, sdxl):
    assert detect_family(sd15.unet) == sd15.family == "sd15"
    assert detect_family(sdxl.unet.config) == sdxl.family == "sdxl"
    assert len(sd15.text_encoders) == 1 and len(sdxl.text_encoders) == 2
    assert sd15.vae_scale_factor == sdxl.vae_scale_factor == 4


def test_family_detection_refuses_unknown_additional_embeddings():
    with pytest.raises(ModelError, match="addition_embed_type='image'"):
        detect_family({**SD15_UNET, "addition_embed_type": "image"})


def test_real_layouts_derive_the_published_adapters():
    # TencentARC/t2iadapter_*_sd15v2
    assert adapter_kwargs_for(SD15_UNET) == dict(
        in_channels=3, channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=8, adapter_type="full_adapter"
    )
    # TencentARC/t2iadapter_color_sd14v1 (light): channels [320, 640, 1280], 4 res blocks
    light = adapter_kwargs_for(SD15_UNET, "light_adapter", num_res_blocks=4)
    assert light["channels"] == [320, 640, 1280] and light["downscale_factor"] == 8
    # TencentARC/t2i-adapter-*-sdxl-1.0
    assert adapter_kwargs_for(SDXL_UNET) == dict(
        in_channels=3, channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=16, adapter_type="full_adapter_xl"
    )
    down, mid = unet_residual_shapes(SDXL_UNET, 8, 1024)
    assert down == [(320, 64, 64), (640, 64, 64), (1280, 32, 32)] and mid == (1280, 32, 32)


@pytest.mark.parametrize(
    "family, adapter_type, channels, downscale",
    [
        ("sd15", "full_adapter", [32, 64, 64], 4),
        ("sd15", "light_adapter", [32, 64], 4),
        ("sdxl", "full_adapter_xl", [32, 64, 64, 64], 8),
    ],
)
def test_derived_adapter_runs_through_the_unet(request, family, adapter_type, channels, downscale):
    base = request.getfixturevalue(family)
    adapter = build_adapter(base, ModelConfig(adapter_type=adapter_type, num_res_blocks=1))
    assert adapter.config.adapter_type == adapter_type
    assert list(adapter.config.channels) == channels and adapter.config.downscale_factor == downscale
    check_adapter_fits(adapter, base, resolution=32)

    batch, px = 2, 32
    with torch.no_grad():
        features = adapter(torch.rand(batch, 3, px, px))
    # The analytic shapes used by check_adapter_fits are what the adapter really produces.
    assert [tuple(f.shape[1:]) for f in features] == adapter_feature_shapes(adapter.config, px)

    text = encode_prompts(base, ["red circle with blue background", ""])
    extra = {}
    if family == "sdxl":
        extra["added_cond_kwargs"] = {
            "text_embeds": text["pooled_prompt_embeds"],
            "time_ids": sdxl_time_ids([(px, px)] * batch, (0, 0), (px, px)),
        }
    residuals = list(features)
    latents = torch.randn(batch, 4, px // base.vae_scale_factor, px // base.vae_scale_factor)
    with torch.no_grad():
        plain = base.unet(latents, torch.tensor([10, 500]), text["prompt_embeds"], **extra).sample
        out = base.unet(
            latents, torch.tensor([10, 500]), text["prompt_embeds"], down_intrablock_additional_residuals=residuals, **extra
        ).sample
    assert out.shape == latents.shape
    # The UNet pops every residual it uses: none may be left over (a dropped one would be silent).
    assert residuals == []
    assert not torch.allclose(out, plain)


def test_mismatching_adapter_is_refused_with_both_shapes(sd15, sdxl):
    from diffusers import T2IAdapter

    sd15_adapter = build_adapter(sd15, ModelConfig(num_res_blocks=1))
    with pytest.raises(ModelError) as err:
        check_adapter_fits(sd15_adapter, sdxl)
    msg = str(err.value)
    # adapter at 64 px (downscale 4): (32, 16, 16) ...; the SDXL UNet takes (32, 8, 8) ...
    assert "(32, 16, 16)" in msg and "(32, 8, 8)" in msg
    assert "adapter produces" in msg and "UNet takes" in msg

    # A full-size SDXL adapter on the tiny SDXL UNet: the crash diffusers' example hits.
    stock = T2IAdapter(channels=[320, 640, 1280, 1280], num_res_blocks=1, downscale_factor=16, adapter_type="full_adapter_xl")
    with pytest.raises(ModelError, match=r"\(320, 4, 4\).*\(32, 8, 8\)"):
        check_adapter_fits(stock, sdxl)


def test_mismatching_pretrained_adapter_is_refused(sd15, tmp_path):
    from diffusers import T2IAdapter

    T2IAdapter(channels=[32, 32], num_res_blocks=1, downscale_factor=4).save_pretrained(tmp_path / "adapter")
    with pytest.raises(ModelError, match="does not fit"):
        build_adapter(sd15, ModelConfig(pretrained_adapter=str(tmp_path / "adapter")))
    good = build_adapter(sd15, ModelConfig(num_res_blocks=1))
    good.save_pretrained(tmp_path / "out" / "adapter")  # a training output's layout
    loaded = build_adapter(sd15, ModelConfig(pretrained_adapter=str(tmp_path / "out")))
    assert list(loaded.config.channels) == [32, 64, 64]


def test_adapter_that_cannot_fit_is_explained():
    # Light adapters repeat their last channel count: a UNet whose last two blocks differ
    # cannot take one.
    unet = {**SD15_UNET, "block_out_channels": [320, 640, 1280, 2560]}
    with pytest.raises(ModelError, match="light_adapter cannot fit"):
        adapter_kwargs_for(unet, "light_adapter")
    with pytest.raises(ModelError, match="check model.adapter_channels"):
        adapter_kwargs_for(SD15_UNET, channels=[320, 640, 1280])


def test_image_not_divisible_by_unshuffle_factor():
    with pytest.raises(ModelError, match="not divisible"):
        adapter_feature_shapes(adapter_kwargs_for(SDXL_UNET), 1000)


def test_time_ids_keep_each_samples_own_size():
    one = sdxl_time_ids((64, 48), (2, 3), (32, 32))
    assert one.tolist() == [64, 48, 2, 3, 32, 32]
    batch = sdxl_time_ids([(64, 64), (80, 40)], [(0, 0), (5, 1)], (64, 64))
    assert batch.shape == (2, 6)
    assert batch[1].tolist() == [80, 40, 5, 1, 64, 64]
    with pytest.raises(ValueError):
        sdxl_time_ids([(64, 64), (80, 40)], [(0, 0)] * 3, (64, 64))
