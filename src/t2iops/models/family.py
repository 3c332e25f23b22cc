"""Model families and adapters that fit their UNet.

A T2I-Adapter returns a list of feature maps that the UNet adds into its down path
(``down_intrablock_additional_residuals``). Where each one lands is decided by the UNet, not the
adapter (diffusers ``UNet2DConditionModel.forward``):

* a ``CrossAttnDownBlock2D`` adds its residual to the output of its last resnet/attention pair,
  *before* its downsampler: shape (block channels, block input resolution);
* any other down block (``DownBlock2D``) has it added to its output, *after* its downsampler:
  shape (block channels, half the input resolution unless it is the last block);
* a residual still left after the down path is added to the mid block's output only if the
  shapes agree (SDXL's fourth adapter feature); otherwise the UNet silently drops it.

So the residual shapes follow from ``down_block_types``, ``block_out_channels`` and the VAE's
downscale factor (pixels -> latents). We derive the adapter from them instead of assuming the
stock SD1.5/SDXL sizes, and refuse an adapter whose features would not land (``check_adapter_fits``).
"""
from __future__ import annotations

import math
from typing import Any, Literal, Mapping, Optional, Sequence

from ..errors import ModelError
from .generator import ADAPTER_GENERATORS

Family = Literal["sd15", "sdxl"]
Shape = tuple[int, int, int]  # (channels, height, width), batch left out

DEFAULT_ADAPTER = {"sd15": "full_adapter", "sdxl": "full_adapter_xl"}
ADAPTER_TYPES = ("full_adapter", "light_adapter", "full_adapter_xl")


def _config_dict(unet_or_config: Any) -> Mapping[str, Any]:
    cfg = getattr(unet_or_config, "config", unet_or_config)
    return cfg


def detect_family(unet_config: Any) -> Family:
    """``sdxl`` when the UNet takes SDXL's text+time additional embeddings, else ``sd15``.

    Accepts a UNet, its ``config`` or a plain dict (``unet/config.json``)."""
    cfg = _config_dict(unet_config)
    embed = cfg.get("addition_embed_type")
    if embed == "text_time":
        return "sdxl"
    if embed not in (None, ""):
        raise ModelError(
            f"unsupported UNet: addition_embed_type={embed!r}; supported are SD1.5-style (none) and SDXL (text_time)"
        )
    return "sd15"


def vae_scale_factor_of(vae_or_config: Any) -> int:
    """Pixels per latent cell: 2 ** (number of VAE blocks - 1), as the diffusers pipelines compute it."""
    cfg = _config_dict(vae_or_config)
    return 2 ** (len(cfg["block_out_channels"]) - 1)


def _half(n: int) -> int:
    # UNet downsamplers (3x3 conv, stride 2, padding 1) and the adapter's AvgPool2d(ceil_mode=True)
    # both round up.
    return math.ceil(n / 2)


# ---------------------------------------------------------------------------------------
# What the UNet expects
def unet_residual_shapes(
    unet_config: Any, vae_scale_factor: int, height: int, width: Optional[int] = None
) -> tuple[list[Shape], Optional[Shape]]:
    """The residual shapes the UNet's down blocks take at an image of ``height`` x ``width``
    pixels, and the mid block's output shape (the optional extra residual; None without a mid
    block). Raises ModelError for down-block types that cannot take adapter residuals."""
    cfg = _config_dict(unet_config)
    width = height if width is None else width
    h, w = height // vae_scale_factor, width // vae_scale_factor
    types = list(cfg["down_block_types"])
    channels = list(cfg["block_out_channels"])
    shapes: list[Shape] = []
    for i, (block, ch) in enumerate(zip(types, channels)):
        downsamples = i < len(types) - 1
        if block == "CrossAttnDownBlock2D":
            shapes.append((ch, h, w))
            if downsamples:
                h, w = _half(h), _half(w)
        elif "CrossAttn" in block:
            raise ModelError(f"UNet down block {block} (block {i}) does not accept adapter residuals")
        else:
            if downsamples:
                h, w = _half(h), _half(w)
            shapes.append((ch, h, w))
    mid = (channels[-1], h, w) if cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") is not None else None
    return shapes, mid


# ---------------------------------------------------------------------------------------
# What an adapter produces (mirrors diffusers FullAdapter / LightAdapter / FullAdapterXL)
def adapter_feature_shapes(adapter_config: Any, height: int, width: Optional[int] = None) -> list[Shape]:
    """Shapes of a T2IAdapter's features for an image of ``height`` x ``width`` pixels, from its
    config alone (no forward pass). Raises ModelError when the image does not divide by the
    adapter's pixel-unshuffle factor (the adapter itself would fail)."""
    cfg = _config_dict(adapter_config)
    width = height if width is None else width
    kind = cfg.get("adapter_type", "full_adapter")
    channels = list(cfg["channels"])
    factor = int(cfg.get("downscale_factor", 8))
    if height % factor or width % factor:
        raise ModelError(
            f"image size {height}x{width} is not divisible by the adapter's downscale_factor {factor}"
        )
    h, w = height // factor, width // factor
    out: list[Shape] = []
    if kind == "full_adapter":
        for i, ch in enumerate(channels):
            if i > 0:
                h, w = _half(h), _half(w)
            out.append((ch, h, w))
    elif kind == "light_adapter":
        for i, ch in enumerate(channels + channels[-1:]):
            if i > 0:
                h, w = _half(h), _half(w)
            out.append((ch, h, w))
    elif kind == "full_adapter_xl":
        for i, ch in enumerate(channels):
            if i >= 3 and ch != channels[i - 1]:
                # FullAdapterXL builds block i >= 3 as channels[i] -> channels[i]: it would crash.
                raise ModelError(f"full_adapter_xl channels {channels}: channels[{i}] must equal channels[{i - 1}]")
            if i == 2:
                h, w = _half(h), _half(w)
            out.append((ch, h, w))
    else:
        raise ModelError(f"unknown adapter_type {kind!r}; expected one of {', '.join(ADAPTER_TYPES)}")
    return out


def match_residuals(features: Sequence[Shape], down: Sequence[Shape], mid: Optional[Shape]) -> Optional[str]:
    """None when every adapter feature lands in the UNet, else the reason. Mirrors the UNet:
    one feature per down block, in order, then at most one more that must match the mid block."""
    features = list(features)
    if len(features) < len(down):
        return f"the adapter has {len(features)} features, the UNet has {len(down)} down blocks"
    for i, (got, want) in enumerate(zip(features, down)):
        if tuple(got) != tuple(want):
            return f"feature {i} has shape {tuple(got)}, down block {i} takes {tuple(want)}"
    rest = features[len(down):]
    if not rest:
        return None
    if len(rest) == 1 and mid is not None and tuple(rest[0]) == tuple(mid):
        return None
    return (
        f"{len(rest)} extra feature(s) {[tuple(r) for r in rest]} would be dropped by the UNet"
        f" (the mid block takes one of shape {mid})"
    )


# ---------------------------------------------------------------------------------------
# Deriving an adapter for a UNet
def adapter_kwargs_for(
    unet_config: Any,
    adapter_type: str = "auto",
    channels: Optional[Sequence[int]] = None,
    num_res_blocks: int = 2,
    vae_scale_factor: int = 8,
    in_channels: int = 3,
) -> dict:
    """Keyword arguments for ``diffusers.T2IAdapter`` that fit this UNet.

    ``adapter_type="auto"`` picks ``full_adapter`` for sd15 and ``full_adapter_xl`` for sdxl.
    Channels default to what the UNet's blocks need; given ``channels`` are checked. The pixel
    downscale is the first residual's downscale (VAE factor times the UNet's own)."""
    cfg = _config_dict(unet_config)
    family = detect_family(cfg)
    kind = DEFAULT_ADAPTER[family] if adapter_type in (None, "auto") else adapter_type
    if kind not in ADAPTER_TYPES:
        raise ModelError(f"unknown adapter_type {kind!r}; expected auto or one of {', '.join(ADAPTER_TYPES)}")
    # Work at a size where nothing rounds: every level divides exactly.
    probe = vae_scale_factor * 2 ** (len(cfg["block_out_channels"]) + 2)
    down, mid = unet_residual_shapes(cfg, vae_scale_factor, probe)
    downscale = probe // down[0][1]
    if kind == "full_adapter":
        derived = [c for c, _, _ in down]
    elif kind == "light_adapter":
        # Light adapters repeat their last channel count for one more, further-downscaled feature.
        derived = [c for c, _, _ in down[:-1]]
    else:
        derived = [c for c, _, _ in down] + ([mid[0]] if mid is not None else [])
    kwargs = dict(
        in_channels=in_channels,
        channels=list(channels) if channels else derived,
        num_res_blocks=num_res_blocks,
        downscale_factor=downscale,
        adapter_type=kind,
    )
    feats = adapter_feature_shapes(kwargs, probe)
    problem = match_residuals(feats, down, mid)
    if kind == "full_adapter_xl" and problem and not channels and mid is not None:
        # Without the mid-block feature the XL layout may still fit (fewer down blocks).
        kwargs["channels"] = [c for c, _, _ in down]
        feats = adapter_feature_shapes(kwargs, probe)
        problem = match_residuals(feats, down, mid)
    if problem:
        raise ModelError(
            f"a {kind} cannot fit this UNet ({family}, down blocks {list(cfg['down_block_types'])},"
            f" channels {list(cfg['block_out_channels'])}): {problem}. At {probe}x{probe} px the UNet takes"
            f" {down} (+ mid {mid}); the adapter would produce {feats}"
            + ("; try another model.adapter_type" if not channels else "; check model.adapter_channels")
        )
    return kwargs


def _unet_config_and_factor(unet_or_base: Any, vae_scale_factor: Optional[int]) -> tuple[Mapping[str, Any], int]:
    """Accept a BaseModel (preferred: it knows its VAE, even when no weights are loaded) or a bare
    UNet / UNet config plus ``vae_scale_factor`` (default 8, as in SD1.5 and SDXL)."""
    if hasattr(unet_or_base, "unet_config") and hasattr(unet_or_base, "vae_scale_factor"):
        return unet_or_base.unet_config, vae_scale_factor or unet_or_base.vae_scale_factor
    return _config_dict(unet_or_base), vae_scale_factor or 8


def build_adapter(
    unet_or_base: Any, model_cfg: Any = None, vae_scale_factor: Optional[int] = None, storage_cfg: Any = None
):
    """A new fp32 ``T2IAdapter`` for this base model, or ``model_cfg.pretrained_adapter`` (folder,
    s3://, hub id) after checking that it fits. Pass the BaseModel (or a UNet plus
    ``vae_scale_factor``, default 8)."""
    from diffusers import T2IAdapter

    ucfg, factor = _unet_config_and_factor(unet_or_base, vae_scale_factor)
    adapter_type = getattr(model_cfg, "adapter_type", "auto")
    channels = getattr(model_cfg, "adapter_channels", None)
    num_res_blocks = getattr(model_cfg, "num_res_blocks", 2)
    pretrained = getattr(model_cfg, "pretrained_adapter", None)
    if pretrained:
        from .locate import load_adapter

        adapter = load_adapter(pretrained, model_cfg, storage_cfg, dtype="fp32")
        check_adapter_fits(adapter, ucfg, vae_scale_factor=factor)
        return adapter
    kwargs = adapter_kwargs_for(ucfg, adapter_type, channels, num_res_blocks, vae_scale_factor=factor)
    return T2IAdapter(**kwargs)


def check_adapter_fits(
    adapter: Any,
    unet_or_base: Any,
    vae_scale_factor: Optional[int] = None,
    resolution: Optional[int] = None,
) -> None:
    """Raise ModelError (naming both shape lists) unless every feature of ``adapter`` lands in
    the UNet at ``resolution`` pixels (default: the UNet's native size)."""
    ucfg, factor = _unet_config_and_factor(unet_or_base, vae_scale_factor)
    acfg = _config_dict(adapter)
    if resolution is None:
        resolution = int(ucfg.get("sample_size") or 64) * factor
    down, mid = unet_residual_shapes(ucfg, factor, resolution)
    feats = adapter_feature_shapes(acfg, resolution)
    if acfg.get("in_channels", 3) != 3:
        raise ModelError(f"adapter expects {acfg.get('in_channels')}-channel conditions; t2iops feeds RGB (3)")
    problem = match_residuals(feats, down, mid)
    if problem:
        raise ModelError(
            f"the adapter ({acfg.get('adapter_type')}, channels {list(acfg.get('channels', []))},"
            f" downscale_factor {acfg.get('downscale_factor')}) does not fit the base model's UNet:"
            f" {problem}. At {resolution}x{resolution} px the adapter produces {feats};"
            f" the UNet takes {down}" + (f" (+ optional mid {mid})" if mid else "")
        )


def residual_report(unet_or_base: Any, resolution: int, model_cfg: Any = None, vae_scale_factor: Optional[int] = None) -> dict:
    """Family, adapter kwargs and residual shapes for ``t2iops model inspect``."""
    ucfg, factor = _unet_config_and_factor(unet_or_base, vae_scale_factor)
    family = detect_family(ucfg)
    kwargs = adapter_kwargs_for(
        ucfg,
        getattr(model_cfg, "adapter_type", "auto"),
        getattr(model_cfg, "adapter_channels", None),
        getattr(model_cfg, "num_res_blocks", 2),
        vae_scale_factor=factor,
    )
    down, mid = unet_residual_shapes(ucfg, factor, resolution)
    report: dict = {
        "family": family,
        "generator": ADAPTER_GENERATORS[family],
        "vae_scale_factor": factor,
        "resolution": resolution,
        "adapter_kwargs": kwargs,
        "unet_residual_shapes": [list(s) for s in down],
        "unet_mid_shape": list(mid) if mid else None,
    }
    try:
        report["adapter_feature_shapes"] = [list(s) for s in adapter_feature_shapes(kwargs, resolution)]
    except ModelError as exc:
        report["adapter_feature_shapes"] = None
        report["problem"] = str(exc)
    total = kwargs["downscale_factor"] * _total_extra_downscale(kwargs)
    report["adapter_total_downscale_factor"] = total
    if resolution % total:
        report["problem"] = f"resolution {resolution} is not a multiple of the adapter's total downscale {total}"
    return report


def _total_extra_downscale(kwargs: Mapping[str, Any]) -> int:
    n = len(kwargs["channels"])
    return {"full_adapter": 2 ** (n - 1), "light_adapter": 2**n, "full_adapter_xl": 2}[kwargs["adapter_type"]]
