"""The bucket multiple a base model and its adapter need, and how samples are grouped into
shards by bucket."""
from types import SimpleNamespace

import pytest

from t2iops.config import ModelConfig
from t2iops.encode.bucketing import assign, bucket_multiple, group_rows, slice_groups

# The block layout of the published SD1.5 and SDXL UNets (unet/config.json).
SD15_UNET = {"down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "block_out_channels": [320, 640, 1280, 1280], "addition_embed_type": None, "sample_size": 64}
SDXL_UNET = {"down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "block_out_channels": [320, 640, 1280], "addition_embed_type": "text_time", "sample_size": 128}


@pytest.mark.parametrize("unet, adapter_type, expected", [
    (SD15_UNET, "auto", 64), (SD15_UNET, "light_adapter", 64), (SDXL_UNET, "auto", 32)])
def test_the_multiple_is_the_adapters_total_downscale_as_diffusers_computes_it(unet, adapter_type, expected):
    from diffusers import T2IAdapter

    from t2iops.models.family import adapter_kwargs_for

    base = SimpleNamespace(unet_config=unet, vae_scale_factor=8)
    multiple = bucket_multiple(base, ModelConfig(adapter_type=adapter_type))
    assert multiple == expected
    adapter = T2IAdapter(**adapter_kwargs_for(unet, adapter_type, vae_scale_factor=8))
    assert multiple % 8 == 0 and multiple == adapter.total_downscale_factor


def test_the_tiny_models_multiple_fits_their_vae_and_adapter(tiny_sdxl_path, tiny_sd15_path):
    from t2iops.models.family import build_adapter
    from t2iops.models.resolve import load_base_model

    for path in (tiny_sdxl_path, tiny_sd15_path):
        cfg = ModelConfig(base_model=path, dtype="fp32")
        base = load_base_model(cfg, components=())
        multiple = bucket_multiple(base, cfg)
        assert multiple % base.vae_scale_factor == 0
        assert multiple % build_adapter(base, cfg).total_downscale_factor == 0


def _rows(n):
    return [SimpleNamespace(id=f"{i:02d}") for i in range(n)]


def test_each_bucket_starts_a_shard_and_slices_cut_whole_blocks():
    rows = _rows(7)
    sizes = {"00": (64, 64), "01": (64, 128), "02": (64, 64), "03": (128, 64), "04": (64, 130),
             "05": (64, 64), "06": (64, 400)}  # (height, width)
    buckets = [(64, 64), (64, 128), (128, 64)]
    chosen, beyond = assign(rows, sizes, buckets)
    assert chosen == [0, 1, 0, 2, 1, 0, 1] and beyond == ["06"]  # 1:6 is far beyond 1:2
    groups = group_rows(rows, chosen, buckets, shard_size=2)
    assert [(g.bucket, [r.id for r in g.rows], g.first_shard) for g in groups] == [
        ((64, 64), ["00", "02", "05"], 0), ((64, 128), ["01", "04", "06"], 2), ((128, 64), ["03"], 4)]
    # Blocks of 2 rows: square 2 + 1, wide 2 + 1, tall 1 -> five blocks over two slices.
    first, second = (slice_groups(groups, 2, i, 2, 2) for i in range(2))
    assert [(g.bucket, [r.id for r in g.rows], g.first_shard) for g in first] == [
        ((64, 64), ["00", "02", "05"], 0)]
    assert [(g.bucket, [r.id for r in g.rows], g.first_shard) for g in second] == [
        ((64, 128), ["01", "04", "06"], 2), ((128, 64), ["03"], 4)]
    # One square bucket: no sample is ever out of range.
    assert assign(rows, sizes, [(64, 64)]) == ([0] * 7, [])


def test_a_square_resolution_the_model_cannot_take_is_rounded_with_a_warning(tiny_sdxl_path, caplog):
    import logging

    from t2iops.config import load_config
    from t2iops.encode.bucketing import encode_buckets

    cfg = load_config(overrides=[f"model.base_model={tiny_sdxl_path}", "encode.buckets=square", "encode.resolution=76"])
    with caplog.at_level(logging.WARNING, logger="t2iops.encode"):
        assert encode_buckets(cfg, cfg.model) == ([(80, 80)], 16)
    assert "encode.resolution 76 is not a multiple of 16" in caplog.text and "80x80" in caplog.text
    cfg = load_config(overrides=[f"model.base_model={tiny_sdxl_path}", "encode.buckets=auto", "encode.resolution=64"])
    buckets, _ = encode_buckets(cfg, cfg.model)
    assert buckets[0] == (64, 64) and all(h % 16 == 0 and w % 16 == 0 for h, w in buckets) and len(buckets) > 3


def test_one_bucket_names_the_samples_its_crop_cuts_to_its_shape(caplog):
    import logging

    from t2iops.encode.bucketing import cropped_to_one_bucket, log_buckets

    rows = _rows(4)
    sizes = {"00": (64, 64), "01": (64, 96), "02": (96, 54), "03": (64, 66)}  # (height, width): 3:2, 9:16, ~1:1
    assert cropped_to_one_bucket(rows, sizes, [(64, 64)]) == ["01", "02"]
    assert cropped_to_one_bucket(rows, sizes, [(64, 64), (64, 96)]) == []  # several buckets: assign's warning
    groups = group_rows(rows, [0] * 4, [(64, 64)], shard_size=8)
    with caplog.at_level(logging.INFO, logger="t2iops.encode"):
        log_buckets([(64, 64)], 16, groups, [], cropped_to_one_bucket(rows, sizes, [(64, 64)]))
        log_buckets([(64, 64)], 16, groups, [], [])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["encode: 2 of 4 sample(s) are not the shape of the one bucket 64x64 and are cropped to it: "
                        "01, 02; encode.buckets=auto (or a list of HxW) keeps their aspect ratio"]
