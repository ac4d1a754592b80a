"""Published numbers (docs/concepts.md and docs/reference.md) reproduced independently by ddim_sched.

Every expected value here is a published fact, cited by its page in docs/ (reference.md, concepts.md); none is copied
from our
own output. Tolerances are those of the source: diffusers' own scheduler tests check sums to 1e-2,
means to 1e-3 and variances to 1e-5; Lin et al.'s table values to half a unit of their last digit.
"""

from __future__ import annotations

import pytest
import torch

from ddim_sched import DDIMScheduler, kernel, spacing
from tests.diffusers_oracle import diffusers_scheduler, dummy_model

# --------------------------------------------------------------------------------------- §5 loops


def dummy_sample_deter() -> torch.Tensor:
    """diffusers' deterministic test sample: arange(4·3·8·8) reshaped (3, 8, 8, 4), / 768, permuted to (4, 3, 8, 8).

    docs/reference.md (diffusers' own DDIM test numbers) writes arange(384), but its sums and means (e.g. 172.0067 /
    0.223967 = 768.0)
    imply 768 elements, which is what the (4, 3, 8, 8) shape holds. The element order is irrelevant
    to the sums: the dummy model and the step act elementwise.
    """
    batch, channels, height, width = 4, 3, 8, 8
    n = batch * channels * height * width
    sample = torch.arange(n, dtype=torch.float32).reshape(channels, height, width, batch) / n
    return sample.permute(3, 0, 1, 2)


def full_loop(scheduler) -> torch.Tensor:
    """docs/reference.md (diffusers' own DDIM test numbers): set_timesteps(10), then x = step(m(x, t), t, x,
    η=0).prev_sample for each t."""
    scheduler.set_timesteps(10)
    x = dummy_sample_deter()
    for t in scheduler.timesteps:
        x = scheduler.step(dummy_model(x, t), t, x, 0.0).prev_sample
    return x


# (overrides of the default config, sum |x|, mean |x|), docs/reference.md (diffusers' own DDIM test numbers).
FULL_LOOP_CASES = [
    ({}, 172.0067, 0.223967),
    ({"prediction_type": "v_prediction"}, 52.5302, 0.0684),
    ({"set_alpha_to_one": True, "beta_start": 0.01}, 149.8295, 0.1951),
    ({"set_alpha_to_one": False, "beta_start": 0.01}, 149.0784, 0.1941),
]


@pytest.mark.parametrize("overrides, expected_sum, expected_mean", FULL_LOOP_CASES)
def test_full_loop_reproduces_diffusers_published_sums(overrides, expected_sum, expected_mean):
    config = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=True)
    config.update(overrides)
    x = full_loop(DDIMScheduler(**config))
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32
    assert abs(x.abs().sum().item() - expected_sum) < 1e-2
    assert abs(x.abs().mean().item() - expected_mean) < 1e-3
    # diffusers itself, run live, reproduces the same published numbers from the same loop.
    live = full_loop(diffusers_scheduler(config))
    assert abs(live.abs().sum().item() - expected_sum) < 1e-2


# --------------------------------------------------------------------------------------- §5 variance


@pytest.mark.parametrize(
    "t, prev, expected",
    [(0, 0, 0.0), (420, 400, 0.14771), (980, 960, 0.32460), (487, 486, 0.00979), (999, 998, 0.02)],
)
def test_ddpm_posterior_variance_matches_published_get_variance(t, prev, expected):
    """docs/reference.md (diffusers' own DDIM test numbers): diffusers' _get_variance(t, prev) = σ² at η = 1 (default
    linear schedule)."""
    alpha_bar = DDIMScheduler().alpha_bar
    coefficients = kernel.ddim_coefficients(alpha_bar[t], alpha_bar[prev], 1.0, "epsilon")
    variance = coefficients[..., kernel.COLUMN["sigma"]].item() ** 2
    assert abs(variance - expected) < 1e-5


def test_sigma_scales_linearly_with_eta():
    """σ(η) = η · σ(1) (docs/reference.md (k-diffusion's view), eq. 16), at the published (420, 400) pair."""
    alpha_bar = DDIMScheduler().alpha_bar
    sigma = [
        kernel.ddim_coefficients(alpha_bar[420], alpha_bar[400], eta, "epsilon")[..., kernel.COLUMN["sigma"]].item()
        for eta in (0.0, 0.5, 1.0)
    ]
    assert sigma[0] == 0.0
    assert sigma[1] == pytest.approx(0.5 * sigma[2], rel=1e-12)
    assert sigma[2] ** 2 == pytest.approx(0.14771, abs=1e-5)


# --------------------------------------------------------------------------------------- §3 spacing

SPACING_TABLE = {
    "leading": [900, 800, 700, 600, 500, 400, 300, 200, 100, 0],
    "trailing": [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
    "linspace": [999, 888, 777, 666, 555, 444, 333, 222, 111, 0],
}


@pytest.mark.parametrize("name", sorted(SPACING_TABLE))
def test_spacing_table_T1000_S10(name):
    """docs/concepts.md (timestep spacings), column T=1000, S=10."""
    expected = SPACING_TABLE[name]
    assert spacing.SPACINGS[name](1000, 10, steps_offset=0).tolist() == expected
    scheduler = DDIMScheduler(timestep_spacing=name)
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == expected


@pytest.mark.parametrize(
    "S, expected",
    [(5, [801, 601, 401, 201, 1]), (50, list(range(981, 0, -20)))],
)
def test_leading_steps_offset_examples(S, expected):
    """docs/concepts.md (timestep spacings): steps_offset=1 with leading, S=5 → [801, …, 1]; S=50 → 981, 961, …, 1."""
    scheduler = DDIMScheduler(steps_offset=1, timestep_spacing="leading")
    scheduler.set_timesteps(S)
    assert scheduler.timesteps.tolist() == expected
    assert len(expected) == S


@pytest.mark.parametrize("name", ["trailing", "linspace"])
def test_steps_offset_only_shifts_leading(name):
    """docs/concepts.md (timestep spacings) defines steps_offset for leading only."""
    scheduler = DDIMScheduler(timestep_spacing=name, steps_offset=1)
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == SPACING_TABLE[name]


def test_quad_spacing_row():
    """docs/concepts.md (timestep spacings) quad row (DDIM paper / ermongroup), when the spacing is registered."""
    if "quad" not in spacing.SPACINGS:
        pytest.skip("quad spacing is not registered in ddim_sched.tables.spacing.SPACINGS")
    got = spacing.SPACINGS["quad"](1000, 10, steps_offset=0)
    assert list(got) == [800, 632, 483, 355, 246, 158, 88, 39, 9, 0]


@pytest.mark.parametrize(
    "spacing_name, S, t, stride_prev, schedule_prev",
    [("linspace", 10, 999, 899, 888), ("trailing", 13, 999, 923, 922)],
)
def test_stride_rule_lands_off_schedule_as_published(spacing_name, S, t, stride_prev, schedule_prev):
    """docs/migration.md (diffusers defects, the stride rule): diffusers' t − T//S lands off the schedule.

    prev_timestep_rule="stride" (the default, diffusers' behaviour) lands there; "schedule" lands on
    the next visited timestep.
    """
    stride = DDIMScheduler(timestep_spacing=spacing_name)
    stride.set_timesteps(S)
    assert stride.timesteps.tolist()[:2] == [t, schedule_prev]
    assert stride.previous_timestep(t) == stride_prev
    fixed = DDIMScheduler(timestep_spacing=spacing_name, prev_timestep_rule="schedule")
    fixed.set_timesteps(S)
    assert fixed.previous_timestep(t) == schedule_prev


# --------------------------------------------------------------------------------------- §2 terminal SNR


@pytest.mark.parametrize(
    "config, sqrt_alpha_bar_T, snr_T",
    [
        # (config, (value, half a unit of its last published digit)) — Lin et al. 2023, Table 1.
        (dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), (0.068265, 5e-7), (0.004682, 5e-7)),
        (dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02), (0.006353, 5e-7), (4.04e-5, 5e-8)),
        (dict(beta_schedule="squaredcos_cap_v2"), (4.93e-5, 5e-8), (2.43e-9, 5e-12)),
    ],
    ids=["stable-diffusion", "linear", "cosine"],
)
def test_terminal_signal_matches_lin_et_al(config, sqrt_alpha_bar_T, snr_T):
    """docs/concepts.md (beta schedules): √ᾱ_T and SNR_T = ᾱ_T / (1 − ᾱ_T) before the zero-SNR rescale, T = 1000."""
    alpha_bar_T = DDIMScheduler(num_train_timesteps=1000, **config).alpha_bar[-1].item()
    value, tolerance = sqrt_alpha_bar_T
    assert abs(alpha_bar_T**0.5 - value) <= tolerance
    value, tolerance = snr_T
    assert abs(alpha_bar_T / (1 - alpha_bar_T) - value) <= tolerance
    rescaled = DDIMScheduler(num_train_timesteps=1000, rescale_betas_zero_snr=True, **config).alpha_bar
    assert rescaled[-1].item() == 0.0
