"""The spacings people pick by name (docs/concepts.md (timestep spacings)): each against its definition,
computed live by diffusers where it has the schedule, else written out here from the defining formula
(ComfyUI's comfy/samplers.py, DPM-Solver, Mochi); plus the invariants every spacing keeps."""

import math
import warnings

import numpy as np
import pytest
import scipy.stats
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from ddim_sched import DDIMScheduler, spacing
from ddim_sched.tables import sigma_grids

SCHEDULES = {
    "linear": {},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
}
NOISE_LEVEL_SPACINGS = [
    "karras", "exponential", "beta", "logsnr", "kl_optimal", "linear_quadratic", "ays_sd15", "ays_sdxl",
]  # fmt: skip
TIMESTEP_AXIS_SPACINGS = ["simple", "normal", "sgm_uniform", "beta_timesteps"]
NEW_SPACINGS = NOISE_LEVEL_SPACINGS[1:] + TIMESTEP_AXIS_SPACINGS


def table(config):
    """(ᾱ as float64 numpy, log σ of the finite levels) of a config."""
    alpha_bar = DDIMScheduler(**config).alpha_bar.numpy()
    with np.errstate(divide="ignore"):
        log_sigmas = 0.5 * np.log((1 - alpha_bar) / alpha_bar)
    return alpha_bar, log_sigmas[np.isfinite(log_sigmas)]


def fractional_timesteps(levels, log_sigmas):
    """Where each level lies between integer timesteps, linear in log σ (clamped to the table)."""
    return np.interp(np.log(levels), log_sigmas, np.arange(len(log_sigmas), dtype=np.float64))


def assert_nearest(ours, fractional):
    """Our timesteps are the nearest integers to the fractional positions, wherever those are distinct and
    not (to rounding) exact halves; elsewhere the collision rule may move them."""
    nearest = np.rint(fractional).astype(np.int64)
    clear = np.abs(np.abs(fractional - np.floor(fractional)) - 0.5) > 1e-6
    if len(np.unique(nearest)) == len(nearest):
        assert ours[clear].tolist() == nearest[clear].tolist()
        assert np.all(np.abs(ours - fractional) <= 0.5 + 1e-9)
    else:
        assert np.abs(ours - nearest).max() < len(ours)


def diffusers_sigmas(cls, config, S, **flags):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = cls(timestep_spacing="linspace", **config, **flags)
    scheduler.set_timesteps(S)
    return scheduler.sigmas.numpy().astype(np.float64)[:-1]  # the last is the final 0


# ------------------------------------------------------------------ noise-level grids against diffusers, live


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("S", [5, 10, 25, 50])
@pytest.mark.parametrize(
    ("name", "cls", "flag"),
    [
        ("exponential", EulerDiscreteScheduler, "use_exponential_sigmas"),
        ("exponential", DPMSolverMultistepScheduler, "use_lu_lambdas"),
        ("beta", EulerDiscreteScheduler, "use_beta_sigmas"),
    ],
)
def test_grid_spacings_match_diffusers_sigmas(schedule, S, name, cls, flag):
    config = SCHEDULES[schedule]
    theirs = diffusers_sigmas(cls, config, S, **{flag: True})
    _, log_sigmas = table(config)
    grid = {"exponential": sigma_grids.exponential_sigmas, "beta": sigma_grids.beta_sigmas}[name]
    # The grid between diffusers' own end levels is diffusers' grid (to its float32 storage) ...
    np.testing.assert_allclose(grid(float(theirs[-1]), float(theirs[0]), S), theirs, rtol=1e-6)
    # ... and those end levels are the table's σ_min, σ_max, up to diffusers' float32 ᾱ (1 − ᾱ_0 ≈ 1e-4 keeps
    # only 3 to 4 digits there).
    np.testing.assert_allclose([theirs[-1], theirs[0]], np.exp([log_sigmas[0], log_sigmas[-1]]), rtol=1e-3)
    levels = grid(math.exp(log_sigmas[0]), math.exp(log_sigmas[-1]), S)
    ours = spacing.SPACINGS[name](1000, S, alpha_bar=DDIMScheduler(**config).alpha_bar)
    assert_nearest(ours, fractional_timesteps(levels, log_sigmas))


# ------------------------------------------------------------------ noise-level grids against their formulas


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("S", [1, 2, 10, 30])
def test_logsnr_is_dpm_solver_uniform_log_snr(schedule, S):
    # DPM-Solver: N + 1 points uniform in λ = log(√ᾱ/√(1 − ᾱ)) = −log σ from λ_T to λ_0; the sampler
    # starts from the first N.
    config = SCHEDULES[schedule]
    _, log_sigmas = table(config)
    lam = -log_sigmas
    points = np.array([lam[-1] + j * (lam[0] - lam[-1]) / S for j in range(S + 1)])
    levels = np.exp(-points[:S])
    ours = spacing.logsnr(1000, S, alpha_bar=DDIMScheduler(**config).alpha_bar)
    assert ours[0] == len(log_sigmas) - 1
    assert_nearest(ours, fractional_timesteps(levels, log_sigmas))


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("S", [1, 2, 10, 30])
def test_kl_optimal_is_uniform_in_arctan_sigma(schedule, S):
    config = SCHEDULES[schedule]
    _, log_sigmas = table(config)
    lo, hi = math.exp(log_sigmas[0]), math.exp(log_sigmas[-1])
    levels = np.array(
        [math.tan(math.atan(hi) + (j / max(S - 1, 1)) * (math.atan(lo) - math.atan(hi))) for j in range(S)]
    )
    np.testing.assert_allclose(sigma_grids.kl_optimal_sigmas(lo, hi, S), levels, rtol=1e-12)
    ours = spacing.kl_optimal(1000, S, alpha_bar=DDIMScheduler(**config).alpha_bar)
    assert_nearest(ours, fractional_timesteps(levels, log_sigmas))


def comfy_linear_quadratic(steps, threshold_noise=0.025, linear_steps=None):
    """ComfyUI's linear_quadratic_schedule (from Mochi), as its comfy/samplers.py defines it, σ_max = 1."""
    if steps == 1:
        return [1.0, 0.0]
    if linear_steps is None:
        linear_steps = steps // 2
    linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
    step_diff = linear_steps - threshold_noise * steps
    quadratic_steps = steps - linear_steps
    quadratic_coef = step_diff / (linear_steps * quadratic_steps**2)
    linear_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps**2)
    const = quadratic_coef * (linear_steps**2)
    quadratic = [quadratic_coef * (i**2) + linear_coef * i + const for i in range(linear_steps, steps)]
    return [1.0 - x for x in linear + quadratic + [1.0]]


@pytest.mark.parametrize("n", [1, 2, 3, 10, 25, 64])
def test_linear_quadratic_is_mochis_schedule(n):
    expected = comfy_linear_quadratic(n)
    assert expected[-1] == 0.0
    np.testing.assert_allclose(sigma_grids.linear_quadratic_sigmas(1.0, n), expected[:-1], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sigma_grids.linear_quadratic_sigmas(14.6, n), 14.6 * np.array(expected[:-1]), rtol=1e-12)
    if n >= 4:
        np.testing.assert_allclose(
            sigma_grids.linear_quadratic_sigmas(1.0, n, 0.05, 3), comfy_linear_quadratic(n, 0.05, 3)[:-1], rtol=1e-12
        )


def test_linear_quadratic_on_an_alpha_bar_table_is_nearest_where_distinct():
    config = SCHEDULES["scaled_linear"]
    _, log_sigmas = table(config)
    levels = math.exp(log_sigmas[-1]) * np.array(comfy_linear_quadratic(10)[:-1])
    ours = spacing.linear_quadratic(1000, 10, alpha_bar=DDIMScheduler(**config).alpha_bar)
    assert_nearest(ours, fractional_timesteps(levels, log_sigmas))


def test_grid_errors():
    with pytest.raises(ValueError, match="linear_steps must lie in \\[1, n - 1 = 9\\]; got 10"):
        sigma_grids.linear_quadratic_sigmas(1.0, 10, linear_steps=10)
    with pytest.raises(ValueError, match="threshold_noise must lie in \\(0, 1\\)"):
        sigma_grids.linear_quadratic_sigmas(1.0, 10, threshold_noise=1.5)
    for name in NOISE_LEVEL_SPACINGS:
        with pytest.raises(ValueError, match=f"the '{name}' timestep spacing needs alpha_bar"):
            spacing.SPACINGS[name](1000, 10)


def test_flow_levels_use_the_same_grids():
    # On the flow path σ ∈ (0, 1]: the grids take any σ range; kl_optimal with σ_max = 1 starts at 1.
    levels = sigma_grids.kl_optimal_sigmas(0.002, 1.0, 8)
    assert levels[0] == pytest.approx(1.0) and levels[-1] == pytest.approx(0.002)
    assert np.all(np.diff(levels) < 0)
    assert sigma_grids.linear_quadratic_sigmas(1.0, 8)[0] == 1.0


# ------------------------------------------------------------------ timestep-axis spacings (ComfyUI)


def comfy_log_interp(ts, log_sigmas_full):
    """ComfyUI's model_sampling.sigma(t): log σ linear between the integer timesteps around t."""
    low = np.floor(ts).astype(int)
    high = np.ceil(ts).astype(int)
    w = ts - low
    return np.exp((1 - w) * log_sigmas_full[low] + w * log_sigmas_full[high])


@pytest.mark.parametrize("T", [1000, 37])
@pytest.mark.parametrize("S", [1, 3, 7, 10, 33])
def test_simple(T, S):
    if S > T:
        return
    expected = [T - 1 - int(x * (T / S)) for x in range(S)]  # sigmas[-(1 + int(x * ss))], ss = T / S
    assert spacing.simple(T, S).tolist() == expected
    if T % S == 0:
        assert spacing.simple(T, S).tolist() == spacing.trailing(T, S).tolist()


@pytest.mark.parametrize("S", [1, 2, 3, 10, 13, 50])
@pytest.mark.parametrize("name", ["normal", "sgm_uniform"])
def test_normal_and_sgm_uniform(S, name):
    config = SCHEDULES["scaled_linear"]
    _, log_sigmas = table(config)
    T = len(log_sigmas)
    ts = np.linspace(T - 1, 0, S) if name == "normal" else np.linspace(T - 1, 0, S + 1)[:-1]
    levels = comfy_log_interp(ts, log_sigmas)
    ours = spacing.SPACINGS[name](T, S)
    assert ours[0] == T - 1
    assert_nearest(ours, fractional_timesteps(levels, log_sigmas))
    if name == "normal" and S > 1:  # the nearest timestep of a level interpolated at t is round(t): linspace's
        linspace = spacing.linspace(T, S)
        clear = np.abs(ts - np.floor(ts) - 0.5) > 1e-6
        assert ours[clear].tolist() == linspace[clear].tolist()


@pytest.mark.parametrize("S", [1, 2, 5, 10, 40, 200])
def test_beta_timesteps_is_comfyuis_beta(S):
    T = 1000
    quantiles = scipy.stats.beta.ppf(1 - np.linspace(0, 1, S, endpoint=False), 0.6, 0.6)
    ideal = quantiles * (T - 1)
    # ComfyUI rounds these and drops repeats; here a repeat moves to a free neighbour, so there are always S.
    assert_nearest(spacing.beta_timesteps(T, S), ideal)
    assert len(spacing.beta_timesteps(T, S)) == S


# ------------------------------------------------------------------ invariants of every registered spacing


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    name=st.sampled_from(sorted(spacing.SPACINGS)),
    schedule=st.sampled_from(list(SCHEDULES)),
    zero_snr=st.booleans(),
    T=st.sampled_from([10, 100, 1000]),
    data=st.data(),
)
def test_every_spacing_is_s_distinct_decreasing_timesteps_from_the_noisiest_level(name, schedule, zero_snr, T, data):
    S = data.draw(st.one_of(st.integers(1, min(T, 60)), st.integers(1, T)), label="S")
    scheduler = DDIMScheduler(num_train_timesteps=T, rescale_betas_zero_snr=zero_snr, **SCHEDULES[schedule])
    alpha_bar = scheduler.alpha_bar
    timesteps = spacing.SPACINGS[name](T, S, steps_offset=0, alpha_bar=alpha_bar)
    assert timesteps.dtype == np.int64
    if name == "quad":
        assert len(timesteps) <= S
    else:
        assert len(timesteps) == S
    assert np.all(np.diff(timesteps) < 0) and timesteps[-1] >= 0 and timesteps[0] < T
    finite = int((alpha_bar > 0).sum())
    if name in NOISE_LEVEL_SPACINGS and S <= finite and name not in ("ays_sd15", "ays_sdxl"):
        assert timesteps[0] == finite - 1  # σ_max: the noisiest finite level
    if name in TIMESTEP_AXIS_SPACINGS:
        assert timesteps[0] == T - 1


@pytest.mark.parametrize("name", NEW_SPACINGS)
@pytest.mark.parametrize("rule", ["stride", "schedule"])
def test_new_spacings_load_by_name_and_step_along_their_own_schedule(name, rule):
    assert name not in spacing.STRIDED_SPACINGS
    scheduler = DDIMScheduler(
        timestep_spacing=name, prev_timestep_rule=rule, clip_sample=False, **SCHEDULES["scaled_linear"]
    )
    scheduler.set_timesteps(12)
    visited = scheduler.timesteps.tolist()
    assert visited == spacing.SPACINGS[name](1000, 12, alpha_bar=scheduler.alpha_bar).tolist()
    assert [scheduler.previous_timestep(t) for t in visited] == visited[1:] + [-1]
