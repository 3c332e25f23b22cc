"""evaluate.scheduler: another scheduler is configured like the base model's own."""
from __future__ import annotations

import pytest
import torch

from t2iops.errors import UsageError
from t2iops.evaluate.sampling import make_scheduler
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
