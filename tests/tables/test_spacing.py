"""The "quad" and "karras" timestep spacings, the registry-driven config message, and the spacing helpers."""

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from ddim_sched import DDIMConfig, DDIMInverseScheduler, DDIMScheduler, spacing

SCHEDULES = [
    {},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
]


def log_sigmas(scheduler):
    a = scheduler.alpha_bar.numpy()
    with np.errstate(divide="ignore"):
        return 0.5 * np.log((1 - a) / a)


# ------------------------------------------------------------------ quad


def test_quad_reference_row():
    # docs/concepts.md (timestep spacings) (the DDIM paper's code): T=1000, S=10.
    assert spacing.quad(1000, 10).tolist() == [800, 632, 483, 355, 246, 158, 88, 39, 9, 0]
    scheduler = DDIMScheduler(timestep_spacing="quad")
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == [800, 632, 483, 355, 246, 158, 88, 39, 9, 0]


def test_quad_steps_offset_gives_compvis_quad():
    # docs/concepts.md (timestep spacings): CompVis' quad is the ermongroup rule + 1.
    assert spacing.quad(1000, 10, steps_offset=1).tolist() == [801, 633, 484, 356, 247, 159, 89, 40, 10, 1]


def test_quad_drops_duplicates():
    # docs/concepts.md (timestep spacings): quad at S=50 has 49 unique timesteps; the duplicate is dropped, not
    # visited twice.
    timesteps = spacing.quad(1000, 50)
    assert len(timesteps) == 49
    scheduler = DDIMScheduler(timestep_spacing="quad", prev_timestep_rule="schedule")
    scheduler.set_timesteps(50)
    assert scheduler.num_inference_steps == 49 == len(scheduler.timesteps)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 2000), st.data())
def test_quad_defining_property(T, data):
    S = data.draw(st.integers(1, T))
    timesteps = spacing.quad(T, S)
    # The paper's code (ermongroup/ddim, skip_type "quad"), duplicates removed, noisiest first.
    paper = [int(s) for s in list(np.linspace(0, np.sqrt(T * 0.8), S) ** 2)]
    assert timesteps.tolist() == sorted(set(paper), reverse=True)
    # Quadratic: the i-th grid point's timestep is ⌊0.8·T·(i/(S−1))²⌋, exact up to the float rounding
    # of that code (which can land one below an exact integer).
    for i, t in enumerate(paper):
        exact = Fraction(4 * T * i * i, 5 * (S - 1) ** 2) if S > 1 else Fraction(0)
        assert math.floor(exact) - 1 <= t <= math.floor(exact)
    assert np.all(np.diff(timesteps) < 0) and timesteps[-1] == 0


# ------------------------------------------------------------------ karras


def test_karras_sigmas_are_rho_7_interpolation():
    sigmas = spacing.karras_sigmas(0.03, 80.0, 9)
    assert sigmas[0] == pytest.approx(80.0) and sigmas[-1] == pytest.approx(0.03)
    root = sigmas ** (1 / 7)
    assert np.allclose(np.diff(root), np.diff(root)[0])  # σ^{1/ρ} evenly spaced, ρ = 7 (Karras et al. eq. 5)


@pytest.mark.parametrize("config", SCHEDULES, ids=["linear", "scaled_linear", "cosine"])
@pytest.mark.parametrize("S", [2, 5, 10, 20, 30, 50])
def test_karras_are_the_nearest_timesteps_in_log_sigma(config, S):
    scheduler = DDIMScheduler(timestep_spacing="karras", **config)
    scheduler.set_timesteps(S)
    timesteps = scheduler.timesteps.numpy()
    ls = log_sigmas(scheduler)
    assert timesteps[0] == 999 and timesteps[-1] == 0  # σ_max and σ_min of the schedule
    assert np.all(np.diff(timesteps) < 0) and len(timesteps) == S
    targets = np.log(spacing.karras_sigmas(math.exp(ls[0]), math.exp(ls[-1]), S))
    nearest = np.abs(ls[None, :] - targets[:, None]).argmin(axis=1)
    if len(set(nearest.tolist())) == S:
        assert timesteps.tolist() == nearest.tolist()
    else:  # collisions at the dense low-noise end are moved to free neighbours, never elsewhere
        moved = timesteps != nearest
        assert moved.any()
        assert np.abs(timesteps - nearest).max() < S


@pytest.mark.parametrize("config", SCHEDULES, ids=["linear", "scaled_linear", "cosine"])
@pytest.mark.parametrize("S", [5, 10, 25, 50])
def test_karras_matches_rounded_diffusers_euler_karras(config, S):
    # diffusers' EulerDiscreteScheduler(use_karras_sigmas=True, linspace) interpolates the same
    # sigmas to fractional timesteps; where rounding them gives distinct timesteps, they are ours.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        euler = EulerDiscreteScheduler(use_karras_sigmas=True, timestep_spacing="linspace", **config)
    euler.set_timesteps(S)
    rounded = np.round(euler.timesteps.numpy().astype(np.float64)).astype(np.int64)
    ours = spacing.karras(1000, S, alpha_bar=DDIMScheduler(**config).alpha_bar)
    if len(np.unique(rounded)) == S:
        assert ours.tolist() == rounded.tolist()
    else:
        assert len(np.unique(ours)) == S


@settings(max_examples=30, deadline=None)
@given(st.sampled_from([10, 100, 1000]), st.data())
def test_karras_is_always_distinct_and_in_range(T, data):
    S = data.draw(st.integers(1, T))
    timesteps = spacing.karras(
        T, S, alpha_bar=DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2").alpha_bar
    )
    assert len(timesteps) == S and np.all(np.diff(timesteps) < 0)
    assert timesteps[0] == T - 1 and 0 <= timesteps[-1]
    if S > 1:
        assert timesteps[-1] == 0


def test_karras_skips_zero_terminal_snr():
    scheduler = DDIMScheduler(timestep_spacing="karras", rescale_betas_zero_snr=True)
    assert float(scheduler.alpha_bar[-1]) == 0.0
    scheduler.set_timesteps(10)  # epsilon prediction would refuse a schedule visiting ᾱ = 0
    assert scheduler.timesteps[0] == 998 and scheduler.timesteps[-1] == 0


def test_karras_errors():
    with pytest.raises(ValueError, match="alpha_bar"):
        spacing.karras(1000, 10)


def test_karras_beyond_the_finite_levels_visits_every_one_and_the_lowest_zero_snr_timesteps():
    # S = 3 > the 2 timesteps with ᾱ > 0: both, and the lowest with ᾱ = 0 above them (not the top one).
    alpha_bar = torch.tensor([0.9, 0.5, 0.0, 0.0], dtype=torch.float64)
    assert spacing.karras(4, 3, alpha_bar=alpha_bar).tolist() == [2, 1, 0]
    assert spacing.karras(4, 2, alpha_bar=alpha_bar).tolist() == [1, 0]


# ------------------------------------------------------------------ registry and helpers


def test_config_message_lists_every_registered_spacing():
    with pytest.raises(ValueError) as error:
        DDIMConfig(timestep_spacing="cubic")
    for name in spacing.SPACINGS:
        assert repr(name) in str(error.value)
    assert "'cubic'" in str(error.value)
    for name in spacing.SPACINGS:
        DDIMConfig(timestep_spacing=name)


def test_every_registered_spacing_gives_a_valid_schedule():
    alpha_bar = DDIMScheduler().alpha_bar
    for name, rule in spacing.SPACINGS.items():
        for S in (1, 7, 100, 1000):
            timesteps = rule(1000, S, steps_offset=0, alpha_bar=alpha_bar)
            assert timesteps.dtype == np.int64, name
            spacing.check_timesteps(timesteps, 1000, name)


def test_predecessors():
    schedule = np.array([9, 5, 2])
    assert spacing.predecessors(schedule, 10).tolist() == [-1, -1, -1, 2, 2, 2, 5, 5, 5, 5]
    assert spacing.predecessors(schedule, 10, stride=3).tolist() == [-1, -1, -1, 0, 1, 2, 3, 4, 5, 6]


def test_check_timesteps_increasing():
    assert spacing.check_timesteps([1, 4, 9], 10, increasing=True).tolist() == [1, 4, 9]
    with pytest.raises(ValueError, match="strictly increasing; got 4 then 1 at position 1"):
        spacing.check_timesteps([0, 4, 1], 10, increasing=True)


@pytest.mark.parametrize("spacing_name", ["quad", "karras"])
@pytest.mark.parametrize("rule", ["stride", "schedule"])
def test_uneven_spacings_step_along_their_own_schedule(spacing_name, rule):
    """diffusers' stride t − T // S would land off a quad or karras schedule; ddim_sched steps to the
    next visited timestep under either rule (forward and inverse schedulers alike)."""
    scheduler = DDIMScheduler(timestep_spacing=spacing_name, prev_timestep_rule=rule, clip_sample=False)
    scheduler.set_timesteps(10)
    visited = scheduler.timesteps.tolist()
    landed = [scheduler.previous_timestep(t) for t in visited]
    assert landed == visited[1:] + [-1]
    inverse = DDIMInverseScheduler.from_config(scheduler.config)
    inverse.set_timesteps(10)
    assert inverse.timesteps.tolist() == visited[::-1]
