"""The objective matches diffusers' own noise schedule math."""
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from t2iops.config import TrainConfig
from t2iops.train.diffusion import Objective, add_noise, latents_from_cache, sample_timesteps, snr_weights, target_for


@pytest.fixture()
def scheduler():
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)


def test_cubic_sampling_favours_high_noise_and_stays_in_range():
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    cubic = sample_timesteps(u, 1000, "cubic")
    uniform = sample_timesteps(u, 1000, "uniform")
    assert cubic.dtype == torch.long and cubic.min() >= 0 and cubic.max() <= 999
    assert uniform.min() >= 0 and uniform.max() <= 999
    # t = (1 - u^3) T: P(t > T/2) = P(u^3 < 1/2) = 0.794
    assert abs((cubic > 500).float().mean().item() - 0.794) < 0.02
    assert abs((uniform > 500).float().mean().item() - 0.5) < 0.02
    assert sample_timesteps(torch.tensor([0.0]), 1000, "cubic").item() == 999


def test_noise_and_targets_match_diffusers(scheduler):
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    ac = scheduler.alphas_cumprod
    torch.testing.assert_close(add_noise(x0, noise, t, ac), scheduler.add_noise(x0, noise, t))
    torch.testing.assert_close(target_for(x0, noise, t, ac, "v_prediction"), scheduler.get_velocity(x0, noise, t))
    assert target_for(x0, noise, t, ac, "epsilon") is noise


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_the_reference_formula(scheduler, prediction):
    t = torch.tensor([1, 100, 400, 900])
    snr = compute_snr(scheduler, t)
    gamma = 5.0
    expected = torch.minimum(snr, torch.full_like(snr, gamma))
    expected = expected / (snr + 1) if prediction == "v_prediction" else expected / snr
    torch.testing.assert_close(snr_weights(t, scheduler.alphas_cumprod, gamma, prediction), expected)


def test_posterior_sampling_from_cached_moments():
    mean = torch.full((2, 4, 4, 4), 0.5)
    logvar = torch.full((2, 4, 4, 4), -2.0)
    obj = Objective(torch.ones(10), 10, "epsilon", "cubic", None, 1.0, scaling_factor=0.5)
    eps = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    out = latents_from_cache(torch.cat([mean, logvar], 1), eps, obj)
    torch.testing.assert_close(out, (mean + torch.exp(torch.tensor(-1.0)) * eps) * 0.5)
    # A mean-only cache is used as it is, scaled.
    torch.testing.assert_close(latents_from_cache(mean, None, obj), mean * 0.5)


def test_prediction_type_auto_follows_the_scheduler():
    sched = DDPMScheduler(prediction_type="v_prediction")
    obj = Objective.from_scheduler(sched, TrainConfig(), scaling_factor=0.18)
    assert obj.prediction_type == "v_prediction"
    obj = Objective.from_scheduler(sched, TrainConfig(prediction_type="epsilon"), scaling_factor=0.18)
    assert obj.prediction_type == "epsilon"
    from t2iops.errors import UsageError

    with pytest.raises(UsageError, match="train.prediction_type"):
        Objective.from_scheduler(DDPMScheduler(prediction_type="sample"), TrainConfig(), scaling_factor=0.18)
