"""evaluate.scheduler: another scheduler is configured like the base model's own."""
from __future__ import annotations

import pytest
import torch

from t2iops.errors import UsageError
from t2iops.evaluate.sampling import cover_crop, cover_offset, cover_scale, make_scheduler, square_resize
from t2iops.models import toy_components as parts


def test_ddim_on_a_base_whose_config_does_not_say_keeps_latents_unclipped():
    base = parts.build_sampling_scheduler()  # DPM-Solver: its config has no clip_sample
    ddim = make_scheduler(base, "ddim")
    assert type(ddim).__name__ == "DDIMScheduler"
    assert ddim.config.clip_sample is False
    for key in ("prediction_type", "rescale_betas_zero_snr", "timestep_spacing", "beta_schedule"):
        assert ddim.config[key] == base.config[key], key
    # A latent of unit spread passes through a step at low noise unclipped: with DDIM's default
    # (clip_sample=True) the predicted clean latent would be cut to [-1, 1].
    ddim.set_timesteps(20)
    latent = torch.full((1, 4, 2, 2), 2.5)
    v = torch.zeros_like(latent)  # v = 0 at the last step predicts x0 = sqrt(alpha) * x_t
    out = ddim.step(v, ddim.timesteps[-1], latent).pred_original_sample
    assert out.abs().max() > 1.5


def test_a_base_config_that_sets_clip_sample_is_followed():
    from diffusers import DDIMScheduler

    base = DDIMScheduler(clip_sample=True, prediction_type="epsilon")
    assert make_scheduler(base, "ddim").config.clip_sample is True


def test_unknown_scheduler_is_named():
    with pytest.raises(UsageError, match="unknown scheduler 'heun'"):
        make_scheduler(parts.build_sampling_scheduler(), "heun")


def test_cover_crop_fills_a_bucket_without_stretching():
    from PIL import Image

    wide = Image.new("RGB", (200, 100))
    wide.paste((255, 0, 0), (90, 0, 110, 100))  # a red stripe in the middle
    out = cover_crop(wide, (48, 64), Image.NEAREST)  # height 48, width 64: scale 0.48 covers it
    assert out.size == (64, 48)
    assert cover_scale(200, 100, (48, 64)) == 0.48 and cover_offset(200, 100, (48, 64)) == (16, 0)
    red = [x for x in range(64) if out.getpixel((x, 24))[0] > 128]
    assert abs((red[0] + red[-1]) / 2 - 31.5) <= 1  # centred crop
    # The square bucket is the square crop, as before buckets existed.
    assert cover_crop(wide, (64, 64)).tobytes() == square_resize(wide, 64).tobytes()
    assert cover_crop(out, (48, 64)) is out
