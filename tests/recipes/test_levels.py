"""Reading a scheduler's noise level for a timestep (levels_at, sigma_at) from its public tables."""

import math

import diffusers
import pytest
import torch

from ddim_sched import DDIMScheduler, FlowMatchDDIMScheduler, levels_at, sigma_at


def test_ddim_levels_are_the_alpha_bar_table():
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    alpha_bar = scheduler.alpha_bar
    a, b = levels_at(scheduler, 500)
    assert a.dtype == torch.float64 and a.shape == ()
    assert float(a) == math.sqrt(float(alpha_bar[500])) and float(b) == math.sqrt(1 - float(alpha_bar[500]))
    t = torch.tensor([999, 0, 42])
    a, b = levels_at(scheduler, t)
    torch.testing.assert_close(a, alpha_bar[t].sqrt(), rtol=0, atol=0)
    torch.testing.assert_close(b, (1 - alpha_bar[t]).sqrt(), rtol=0, atol=0)


def test_ddim_sigma_is_the_schedulers_own_sigmas():
    scheduler = DDIMScheduler(timestep_spacing="trailing")
    scheduler.set_timesteps(12)
    torch.testing.assert_close(sigma_at(scheduler, scheduler.timesteps), scheduler.sigmas[:-1], rtol=1e-12, atol=0)
    zero_snr = DDIMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    assert math.isinf(float(sigma_at(zero_snr, 999)))


def test_flow_levels_are_the_noise_levels_of_the_schedule():
    scheduler = FlowMatchDDIMScheduler(shift=3.0)
    scheduler.set_timesteps(8)
    sigma = scheduler.noise_levels[:-1]
    for i, t in enumerate(scheduler.timesteps):
        a, b = levels_at(scheduler, t)
        assert float(b) == float(sigma[i]) and float(a) == 1 - float(sigma[i])
        assert float(sigma_at(scheduler, float(t))) == pytest.approx(float(sigma[i] / (1 - sigma[i])), rel=1e-12)
    torch.testing.assert_close(levels_at(scheduler, scheduler.timesteps[:3])[1], sigma[:3], rtol=0, atol=0)


def test_any_scheduler_with_alphas_cumprod():
    reference = diffusers.DDIMScheduler()
    a, _ = levels_at(reference, torch.tensor([10, 20]))
    torch.testing.assert_close(a, reference.alphas_cumprod[[10, 20]].double().sqrt(), rtol=0, atol=0)


def test_errors():
    with pytest.raises(TypeError, match="must be a ddim_sched DDIM or flow scheduler.*got object"):
        levels_at(object(), 1)
    with pytest.raises(ValueError, match="timestep"):
        levels_at(DDIMScheduler(), 1000)
    with pytest.raises(TypeError, match="timestep"):
        levels_at(DDIMScheduler(), 1.5)
