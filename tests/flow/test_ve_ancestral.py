"""The variance-exploding view of DDIM (docs/concepts.md, k-diffusion's view): on the path a = 1, b = σ with
k-diffusion's σ = √((1 − ᾱ)/ᾱ) and x_VE = x/√ᾱ, DDIM with η is k-diffusion's ancestral step:

    σ_up = min(σ_to, η·√(σ_to²·(σ_from² − σ_to²)/σ_from²)),  σ_down = √(σ_to² − σ_up²),
    x_to = x + (σ_down − σ_from)·ε̂ + σ_up·z.

η = 0 is diffusers' EulerDiscreteScheduler and η = 1 its EulerAncestralDiscreteScheduler, once both start
from the same point: DDIM starts from x_T = z, i.e. x_VE = √(σ_max² + 1)·z, while diffusers' Euler starts
its trailing and linspace schedules from σ_max·z (docs/flow.md).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddim_sched import DDIMScheduler, flow_update, update
from tests.tolerances import EXACT_RTOL, rel_l2

HYPOTHESIS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}
# A float32 sampling loop against diffusers' Euler samplers in x/√ᾱ coordinates (measured: up to 7e-7; diffusers
# computes its sigmas from float32 tables, ddim_sched in float64).
EULER_LOOP_RTOL = 1e-6


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """k-diffusion's (σ_down, σ_up), written from its formula as the independent reference."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return math.sqrt(sigma_to**2 - sigma_up**2), sigma_up


steps = st.tuples(st.floats(1e-3, 200.0), st.floats(0.0, 1.0)).map(lambda p: (p[0], p[0] * p[1]))


@settings(max_examples=300, **HYPOTHESIS)
@given(step=steps, eta=st.floats(0.0, 1.0))
def test_update_on_the_ve_path_is_the_ancestral_step(step, eta):
    sigma_from, sigma_to = step
    sigma_down, sigma_up = get_ancestral_step(sigma_from, sigma_to, eta)
    row = update.step_coefficients(1.0, sigma_from, 1.0, sigma_to, eta, "epsilon")
    # x_to = prev_x·x + prev_m·ε̂ + σ·z must be x + (σ_down − σ_from)·ε̂ + σ_up·z.
    assert row.prev_x == pytest.approx(1.0, rel=1e-12)
    assert row.prev_m == pytest.approx(sigma_down - sigma_from, rel=1e-10, abs=1e-10 * sigma_from)
    assert row.sigma == pytest.approx(sigma_up, rel=1e-10, abs=1e-12)


@settings(max_examples=200, **HYPOTHESIS)
@given(step=steps, eta=st.floats(0.0, 3.0))
def test_ve_ancestral_step_is_k_diffusions_for_every_eta(step, eta):
    # Beyond η = 1 k-diffusion clamps σ_up at σ_to; so does ddim_sched's helper (and its flow scheduler).
    got = flow_update.ve_ancestral_step(*step, eta)
    expected = get_ancestral_step(*step, eta)
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12 * step[0])


@pytest.mark.parametrize("eta", [0.0, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_step_in_ve_coordinates_is_the_ancestral_step(eta, spacing):
    # DDIMScheduler's own step (float64) mapped to x/√ᾱ = x·√(1 + σ²) is the ancestral step on its sigmas.
    scheduler = DDIMScheduler(**SD, clip_sample=False, timestep_spacing=spacing, prev_timestep_rule="schedule")
    scheduler.set_timesteps(15)
    sigmas = scheduler.sigmas
    g = torch.Generator().manual_seed(0)
    x, eps, z = torch.randn(3, 2, 4, 8, 8, generator=g, dtype=torch.float64).unbind(0)
    for i, t in enumerate(scheduler.timesteps.tolist()):
        sigma_from, sigma_to = float(sigmas[i]), float(sigmas[i + 1])
        sigma_down, sigma_up = get_ancestral_step(sigma_from, sigma_to, eta)
        x_ve = x * math.sqrt(1 + sigma_from**2)
        expected = x_ve + (sigma_down - sigma_from) * eps + sigma_up * z
        prev = scheduler.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
        assert rel_l2(prev * math.sqrt(1 + sigma_to**2), expected) <= EXACT_RTOL[torch.float64], i
        # The helper reads DDIM's η-noise in VE units off the same sigmas.
        sigma_ddim = scheduler.coefficients(t, eta).sigma
        assert flow_update.ve_ancestral_step(sigma_from, sigma_to, eta)[1] == pytest.approx(
            sigma_ddim * math.sqrt(1 + sigma_to**2), rel=1e-10, abs=1e-14
        )


def model(x: torch.Tensor, t) -> torch.Tensor:
    """A smooth nonlinear ε-prediction stand-in."""
    return 0.4 * x + 0.2 * torch.tanh(x) + 1e-4 * float(t)


def euler_loop(euler, ours, eta, start):
    """Run DDIM (ours, VP) and diffusers' Euler sampler (VE) side by side; return the largest relative
    difference in x/√ᾱ coordinates over the steps. ``start`` picks diffusers' x_VE at the first step."""
    ours.set_timesteps(20)
    euler.set_timesteps(20)
    assert ours.timesteps.tolist() == euler.timesteps.long().tolist()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    x_ve = x * start(euler)
    g_ours, g_euler = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    worst = 0.0
    for i, t in enumerate(ours.timesteps):
        x = ours.step(model(x, t), t, x, eta=eta, generator=g_ours).prev_sample
        model_input = euler.scale_model_input(x_ve, euler.timesteps[i])  # x_VE/√(σ² + 1) = x
        x_ve = euler.step(model(model_input, t), euler.timesteps[i], x_ve, generator=g_euler).prev_sample
        scale = float((1 + ours.sigmas[i + 1] ** 2).sqrt())
        worst = max(worst, rel_l2(x * scale, x_ve))
    return worst


def same_point(euler) -> float:
    """√(σ_max² + 1): x_VE of DDIM's x_T = z."""
    return float((1 + euler.sigmas[0].double() ** 2).sqrt())


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta, euler_class", [(0.0, EulerDiscreteScheduler), (1.0, EulerAncestralDiscreteScheduler)])
def test_ddim_loop_equals_diffusers_euler_samplers(spacing, eta, euler_class):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        euler = euler_class(**SD, timestep_spacing=spacing)
    ours = DDIMScheduler(**SD, clip_sample=False, timestep_spacing=spacing, prev_timestep_rule="schedule")
    assert euler_loop(euler, ours, eta, same_point) <= EULER_LOOP_RTOL


def test_euler_start_point_differs_by_one_over_two_sigma_max_squared(observe):
    # SD's largest k-diffusion σ is 14.6146 (k-diffusion and diffusers' Euler on SD). DDIM's x_T = z sits at
    # x_VE = √(σ_max² + 1)·z; starting from σ_max·z instead scales the start by 1 − 2.34e-3.
    ours = DDIMScheduler(**SD, clip_sample=False, timestep_spacing="trailing")
    ours.set_timesteps(20)
    sigma_max = float(ours.sigmas[0])
    assert sigma_max == pytest.approx(14.6146, abs=1e-4)
    difference = 1 - sigma_max / math.sqrt(sigma_max**2 + 1)
    assert difference == pytest.approx(1 / (2 * sigma_max**2), rel=1e-2) and difference == pytest.approx(
        2.34e-3, abs=1e-5
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        euler = EulerDiscreteScheduler(**SD, timestep_spacing="trailing")
    euler.set_timesteps(20)
    own_start = euler_loop(euler, ours, 0.0, lambda e: float(e.init_noise_sigma))
    observe(
        f"diffusers' Euler (trailing) starts at init_noise_sigma={float(euler.init_noise_sigma):.4f} times z "
        f"(DDIM's x_T = z is {math.sqrt(sigma_max**2 + 1):.4f} times z); from there the loops differ by up to "
        f"{own_start:.2e} (relative, x/sqrt(alpha_bar) coordinates)"
    )
