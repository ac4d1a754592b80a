"""snr_shift_scale (CogVideoX's SNR shift, docs/concepts.md (beta schedules)) against diffusers'
CogVideoXDDIMScheduler."""

import warnings

import pytest
import torch
from diffusers import CogVideoXDDIMScheduler

from ddim_sched import DDIMScheduler, schedules
from tests.tolerances import EXACT_RTOL, PARITY_RTOL, rel_l2

SCHEDULES = {
    "linear": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},  # CogVideoX defaults differ
    # CogVideoX's own: scaled_linear 0.00085 .. 0.012, v-prediction, zero SNR, trailing.
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
}


def cogvideox(**config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CogVideoXDDIMScheduler(**config)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("snr_shift_scale", [1.0, 3.0, 0.5, 7.25])
@pytest.mark.parametrize("rescale_betas_zero_snr", [False, True])
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_alphas_cumprod_match_cogvideox(schedule, snr_shift_scale, rescale_betas_zero_snr, set_alpha_to_one):
    config = dict(
        SCHEDULES[schedule],
        snr_shift_scale=snr_shift_scale,
        rescale_betas_zero_snr=rescale_betas_zero_snr,
        set_alpha_to_one=set_alpha_to_one,
    )
    reference = cogvideox(**config)
    ours = DDIMScheduler(**config)
    assert rel_l2(ours.alphas_cumprod, reference.alphas_cumprod) <= PARITY_RTOL[torch.float32]
    assert float(ours.final_alpha_cumprod) == pytest.approx(float(reference.final_alpha_cumprod), rel=1e-6)
    if rescale_betas_zero_snr:
        assert float(ours.alpha_bar[-1]) == 0.0


@pytest.mark.parametrize("scale", [3.0, 0.25])
def test_shift_divides_the_snr(scale):
    # Closed form: SNR = ᾱ/(1−ᾱ) is divided by the scale at every timestep, before any rescale.
    plain, shifted = DDIMScheduler().alpha_bar, DDIMScheduler(snr_shift_scale=scale).alpha_bar
    snr_ratio = (plain / (1 - plain)) / (shifted / (1 - shifted))
    assert rel_l2(snr_ratio, torch.full_like(snr_ratio, scale)) < 1e-9
    assert rel_l2(schedules.shift_snr(plain, scale), shifted) < EXACT_RTOL[torch.float64]


def test_default_is_off():
    assert torch.equal(DDIMScheduler().alpha_bar, DDIMScheduler(snr_shift_scale=1.0).alpha_bar)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_sampling_loop_matches_cogvideox(spacing):
    # CogVideoX's step is DDIM with σ = 0 written as x_prev = a·x_t + b·x̂0; with its config the whole
    # loop must agree with ours.
    config = dict(
        SCHEDULES["scaled_linear"],
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing=spacing,
        snr_shift_scale=3.0,
        clip_sample=False,
        set_alpha_to_one=True,
    )
    reference = cogvideox(**config)
    ours = DDIMScheduler(**config)
    reference.set_timesteps(50)
    ours.set_timesteps(50)
    assert ours.timesteps.tolist() == reference.timesteps.tolist()
    x = y = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in ours.timesteps:
        x = ours.step(0.2 * x + 0.1 * torch.tanh(x), t, x).prev_sample
        y = reference.step(0.2 * y + 0.1 * torch.tanh(y), t, y).prev_sample
    assert rel_l2(x, y) <= PARITY_RTOL[torch.float32]


def test_rejects_bad_scale():
    with pytest.raises(ValueError, match="snr_shift_scale"):
        DDIMScheduler(snr_shift_scale=0.0)
    with pytest.raises(TypeError, match="snr_shift_scale"):
        DDIMScheduler(snr_shift_scale="3")
