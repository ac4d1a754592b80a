"""ddim_sched.invert and ddim_sched.sample with a FlowMatchDDIMScheduler: Euler inversion on the flow path
x = (1 − σ)·x0 + σ·ε, with the same fixed-point refinement and InversionReport as on the VP path.

Models: the exact velocity of a Gaussian mixture (tests/sampling/exact_models.py), checked here against
the closed form of a single Gaussian; and a tiny SD3 transformer with random weights.
"""

from __future__ import annotations

import logging

import pytest
import torch

from ddim_sched import FlowMatchDDIMScheduler, invert, sample
from ddim_sched.sampling.loops import InversionReport
from tests.sampling.exact_models import data, flow_model
from tests.tolerances import EXACT_RTOL, LOOP_RTOL, rel_l2


def flow_scheduler(S: int, **config) -> FlowMatchDDIMScheduler:
    scheduler = FlowMatchDDIMScheduler(**{"shift": 3.0, **config})
    scheduler.set_timesteps(S, mu=0.8 if scheduler.flow_config.use_dynamic_shifting else None)
    return scheduler


def round_trip_error(scheduler, k, dtype=torch.float64, model_fn=None):
    model_fn = model_fn or flow_model(scheduler)
    x0 = data(8, dtype)
    return rel_l2(sample(model_fn, invert(model_fn, x0, scheduler, fixed_point_iterations=k), scheduler), x0)


def test_the_exact_velocity_of_one_gaussian_is_its_closed_form():
    # Data N(μ, c²I), x = (1 − σ)x0 + σε: with v = (1 − σ)²c² + σ², E[x0|x] = μ + (1 − σ)c²(x − (1 − σ)μ)/v
    # and E[ε|x] = σ(x − (1 − σ)μ)/v; u = E[ε|x] − E[x0|x].
    from ddim_sched.toy import GaussianMixture

    scheduler = flow_scheduler(6)
    mu, c = torch.linspace(-0.5, 0.5, 16, dtype=torch.float64), 0.4
    sigma = scheduler.noise_levels[:-1]
    norm = ((1 - sigma) ** 2 + sigma**2).sqrt()
    gaussian = GaussianMixture.gaussian(mu, c, alpha_bar=((1 - sigma) / norm) ** 2)
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for i, s in enumerate(sigma.tolist()):
        v = (1 - s) ** 2 * c**2 + s**2
        residual = x - (1 - s) * mu
        expected = s * residual / v - (mu + (1 - s) * c**2 * residual / v)
        got = gaussian.eps(x / norm[i], i) - gaussian.x0(x / norm[i], i)
        assert rel_l2(got, expected) < EXACT_RTOL[torch.float64]


def test_classic_inversion_is_euler_run_backwards():
    # k = 0: x_i = x_{i+1} + (σ_i − σ_{i+1})·u(x_{i+1}, t_i), σ from the scheduler's float64 levels.
    scheduler = flow_scheduler(7)
    model_fn = flow_model(scheduler)
    x0 = data()
    sigma = scheduler.noise_levels.tolist()
    expected = x0
    for i in reversed(range(7)):
        expected = expected + (sigma[i] - sigma[i + 1]) * model_fn(expected, scheduler.timesteps[i])
    assert rel_l2(invert(model_fn, x0, scheduler), expected) < EXACT_RTOL[torch.float64]


def test_fixed_point_iterations_reduce_the_round_trip_error():
    scheduler = flow_scheduler(20)
    errors = [round_trip_error(scheduler, k) for k in (0, 1, 2, 5)]
    assert all(b < a / 3 for a, b in zip(errors, errors[1:], strict=False)), errors


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"shift": 1.0},
        {"use_dynamic_shifting": True},
        {"use_karras_sigmas": True},
        {"shift_terminal": 0.1},
    ],
    ids=["sd3", "no-shift", "dynamic", "karras", "terminal"],
)
def test_fixed_point_inversion_is_exact(config):
    assert round_trip_error(flow_scheduler(50, **config), 10) < 1e-9


def test_inverted_sigmas_read_the_model_output_as_x0_minus_eps():
    scheduler = flow_scheduler(50, invert_sigmas=True)
    velocity = flow_model(scheduler)
    assert round_trip_error(scheduler, 10, model_fn=lambda x, t: -velocity(x, t)) < 1e-9


def test_float32_fixed_point_inversion():
    assert round_trip_error(flow_scheduler(50), 10, dtype=torch.float32) < LOOP_RTOL[torch.float32]


def test_model_calls_timesteps_and_scheduler_untouched():
    scheduler = flow_scheduler(5)
    calls = []
    model_fn = flow_model(scheduler, calls)
    timesteps = scheduler.timesteps.clone()
    latent, report = invert(model_fn, data(), scheduler, fixed_point_iterations=2, return_report=True)
    assert len(calls) == 5 * 4  # k = 2: x_next, x_1, x_2, x_3 evaluated per step
    assert {(t.dtype, t.dim()) for t in calls} == {(torch.float32, 0)}
    assert [float(t) for t in calls[::4]] == timesteps.flip(0).tolist()
    assert isinstance(report, InversionReport) and report.timesteps == timesteps.flip(0).tolist()
    assert all(isinstance(t, float) for t in report.timesteps)
    assert torch.equal(scheduler.timesteps, timesteps) and scheduler.step_index is None


def test_sample_is_the_flow_scheduler_loop():
    scheduler = flow_scheduler(9, eta=0.3)
    model_fn = flow_model(scheduler)
    x_T = torch.randn(3, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for eta in (None, 0.7):  # None: the config's η
        expected, generator = x_T, torch.Generator().manual_seed(2)
        for t in scheduler.timesteps:
            kwargs = {} if eta is None else {"eta": eta}
            expected = scheduler.step(model_fn(expected, t), t, expected, generator=generator, **kwargs).prev_sample
        got = sample(model_fn, x_T, scheduler, eta=eta, generator=torch.Generator().manual_seed(2))
        assert torch.equal(got, expected)


def test_stochastic_sampling_has_no_inversion():
    scheduler = flow_scheduler(4, stochastic_sampling=True)
    model_fn = flow_model(scheduler)
    with pytest.raises(ValueError, match="stochastic_sampling"):
        invert(model_fn, data(), scheduler)
    assert sample(model_fn, data(), scheduler, generator=torch.Generator().manual_seed(0)).isfinite().all()


def test_tolerance_and_the_report(caplog):
    scheduler = flow_scheduler(20)
    model_fn = flow_model(scheduler)
    x0 = data()
    with caplog.at_level(logging.WARNING, logger="ddim_sched"):
        latent, report = invert(model_fn, x0, scheduler, fixed_point_iterations=50, tol=1e-10, return_report=True)
    assert report.converged and max(report.iterations) < 50 and not caplog.records
    assert rel_l2(sample(model_fn, latent, scheduler), x0) < 1e-8


# ---------------------------------------------------------------------------- a tiny SD3 transformer


@pytest.fixture(scope="module")
def sd3_velocity():
    """model_fn(x, t) of a random-weight SD3Transformer2DModel on 4×8×8 latents, one fixed prompt, in float64."""
    diffusers = pytest.importorskip("diffusers")
    from tests.tiny_models import single_thread

    with single_thread():
        torch.manual_seed(0)
        transformer = diffusers.SD3Transformer2DModel(
            sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
            joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
            pos_embed_max_size=16,
        ).eval().double()  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    prompt = torch.randn(1, 8, 16, generator=generator, dtype=torch.float64)
    pooled = torch.randn(1, 16, generator=generator, dtype=torch.float64)
    calls = []

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        B = x.shape[0]
        with torch.no_grad():
            return transformer(
                hidden_states=x, timestep=t.expand(B), encoder_hidden_states=prompt.expand(B, -1, -1),
                pooled_projections=pooled.expand(B, -1),
            ).sample  # fmt: skip

    model_fn.calls = calls
    return model_fn


def test_tiny_sd3_round_trip_error_falls_with_k(sd3_velocity, one_thread):
    scheduler = flow_scheduler(8)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    errors = []
    for k in (0, 1, 2, 5):
        del sd3_velocity.calls[:]
        latent = invert(sd3_velocity, x0, scheduler, fixed_point_iterations=k)
        assert len(sd3_velocity.calls) == 8 * (1 if k == 0 else k + 2)
        errors.append(rel_l2(sample(sd3_velocity, latent, scheduler), x0))
    assert all(b < a / 3 for a, b in zip(errors, errors[1:], strict=False)), errors
