"""DDIMScheduler.sigmas and the k-diffusion equivalence: DDIM η=0 is Euler on σ in x/√ᾱ coordinates
(docs/reference.md (k-diffusion's view))."""

import warnings

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from ddim_sched import DDIMScheduler
from tests.tolerances import EXACT_RTOL, PARITY_RTOL, rel_l2

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def model(x, t):
    """A smooth nonlinear stand-in network."""
    return 0.4 * x + 0.2 * torch.tanh(x) + 1e-4 * float(t)


def to_x0_eps(output, x, alpha_bar, prediction_type):
    """(x̂0, ε̂) from a model output at x on level ᾱ (docs/reference.md (k-diffusion's view)), written out
    independently."""
    a, b = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return (x - b * output) / a, output
    if prediction_type == "v_prediction":
        return a * x - b * output, a * output + b * x
    return output, (x - a * output) / b


def test_sigmas_values():
    scheduler = DDIMScheduler(**SD, steps_offset=1)
    scheduler.set_timesteps(5)
    alpha_bar = scheduler.alpha_bar
    sigmas = scheduler.sigmas
    assert sigmas.dtype == torch.float64 and sigmas.shape == (6,)
    for sigma, t in zip(sigmas[:-1], scheduler.timesteps.tolist(), strict=True):
        assert float(sigma) == pytest.approx(float(((1 - alpha_bar[t]) / alpha_bar[t]).sqrt()), rel=1e-15)
    assert float(sigmas[-1]) == 0.0  # set_alpha_to_one: the final ᾱ is 1
    other = DDIMScheduler(**SD, steps_offset=1, set_alpha_to_one=False)
    other.set_timesteps(5)
    assert float(other.sigmas[-1]) == pytest.approx(float(((1 - alpha_bar[0]) / alpha_bar[0]).sqrt()))
    assert torch.all(sigmas[:-1].diff() < 0)


def test_sigmas_before_set_timesteps_and_zero_snr():
    assert DDIMScheduler(num_train_timesteps=20).sigmas.shape == (21,)  # the full schedule
    zero = DDIMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")
    zero.set_timesteps(4)
    assert zero.sigmas[0] == float("inf") and torch.isfinite(zero.sigmas[1:]).all()


@pytest.mark.parametrize("set_alpha_to_one, final_sigmas_type", [(True, "zero"), (False, "sigma_min")])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])  # Euler's linspace timesteps are fractional
def test_sigmas_equal_diffusers_euler(set_alpha_to_one, final_sigmas_type, spacing):
    ours = DDIMScheduler(**SD, steps_offset=1, timestep_spacing=spacing, set_alpha_to_one=set_alpha_to_one)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        euler = EulerDiscreteScheduler(
            **SD, steps_offset=1, timestep_spacing=spacing, final_sigmas_type=final_sigmas_type
        )
    ours.set_timesteps(25)
    euler.set_timesteps(25)
    assert ours.timesteps.tolist() == euler.timesteps.long().tolist()
    assert rel_l2(ours.sigmas, euler.sigmas) <= PARITY_RTOL[torch.float32]
    # σ(ᾱ_0) needs 1 − ᾱ_0 ≈ 8.5e-4, where diffusers' float32 table keeps about four digits.
    assert float(ours.sigmas[-1]) == pytest.approx(float(euler.sigmas[-1]), rel=PARITY_RTOL[torch.float32], abs=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize(
    "config",
    [
        {"timestep_spacing": "leading", "steps_offset": 1},
        {"timestep_spacing": "linspace", "prev_timestep_rule": "schedule"},
        {"timestep_spacing": "karras", "prev_timestep_rule": "schedule", "set_alpha_to_one": False},
    ],
)
def test_ddim_is_euler_on_sigmas(prediction_type, config):
    # k-diffusion: x̃ = x/√ᾱ, denoiser D(x̃, σ) = x̂0, d = (x̃ − D)/σ, x̃' = x̃ + (σ' − σ)·d, x' = x̃'/√(1+σ'²).
    config = dict(SD, clip_sample=False, prediction_type=prediction_type, **config)
    if prediction_type == "sample":
        config["set_alpha_to_one"] = False
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(12)
    sigmas = scheduler.sigmas
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for i, t in enumerate(scheduler.timesteps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        alpha_bar = 1 / (1 + sigma**2)
        output = model(x, t)
        x0, _ = to_x0_eps(output, x, alpha_bar, prediction_type)
        x_tilde = x / alpha_bar.sqrt()
        derivative = (x_tilde - x0) / sigma
        euler = (x_tilde + (sigma_next - sigma) * derivative) / (1 + sigma_next**2).sqrt()
        x = scheduler.step(output, t, x).prev_sample
        assert rel_l2(x, euler) < EXACT_RTOL[torch.float64], i


def test_diffusers_stride_rule_with_linspace_is_not_euler_on_its_sigmas():
    # docs/migration.md (diffusers defects): with "stride", linspace's first step lands on 899 although 888 comes next,
    # so the equivalence (and the sampler) breaks; ddim_sched's "schedule" rule restores it.
    scheduler = DDIMScheduler(clip_sample=False, timestep_spacing="linspace")
    scheduler.set_timesteps(10)
    assert scheduler.timesteps[:2].tolist() == [999, 888] and scheduler.previous_timestep(999) == 899


def test_ddim_loop_equals_diffusers_euler_loop():
    # The same statement against diffusers' EulerDiscreteScheduler, whose samples live in x̃ = x/√ᾱ:
    # both loops from the same start visit the same points, step for step.
    ours = DDIMScheduler(**SD, clip_sample=False, steps_offset=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        euler = EulerDiscreteScheduler(**SD, steps_offset=1, timestep_spacing="leading", final_sigmas_type="zero")
    ours.set_timesteps(20)
    euler.set_timesteps(20)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    x_tilde = x * (1 + ours.sigmas[0] ** 2).sqrt().float()
    for i, t in enumerate(ours.timesteps):
        x = ours.step(model(x, t), t, x).prev_sample
        model_input = euler.scale_model_input(x_tilde, euler.timesteps[i])  # x̃/√(σ²+1) = x
        x_tilde = euler.step(model(model_input, euler.timesteps[i]), euler.timesteps[i], x_tilde).prev_sample
        scale = (1 + ours.sigmas[i + 1] ** 2).sqrt().float()
        assert rel_l2(x, x_tilde / scale) <= PARITY_RTOL[torch.float32], i
