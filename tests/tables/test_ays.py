"""Align Your Steps presets (docs/reference.md (align your steps)): the published lists at 10 steps, the
release's log-linear interpolation to other S, and the map from its sigmas to the published timesteps."""

import math

import numpy as np
import pytest
from diffusers.schedulers.scheduling_utils import AysSchedules

from ddim_sched import DDIMScheduler
from ddim_sched.tables import ays, spacing

# The published lists (docs/reference.md): NVIDIA's 10-step timesteps on Stable Diffusion's ᾱ table.
SD15_TIMESTEPS = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]
SDXL_TIMESTEPS = [999, 845, 730, 587, 443, 310, 193, 116, 53, 13]
SD15_SIGMAS = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.0]


def sd_alpha_bar():
    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alpha_bar


def test_the_spacings_give_the_published_timesteps_at_10_steps():
    alpha_bar = sd_alpha_bar()
    assert spacing.ays_sd15(1000, 10, alpha_bar=alpha_bar).tolist() == SD15_TIMESTEPS
    assert spacing.ays_sdxl(1000, 10, alpha_bar=alpha_bar).tolist() == SDXL_TIMESTEPS
    # diffusers ships the same lists.
    assert AysSchedules["StableDiffusionTimesteps"] == SD15_TIMESTEPS
    assert AysSchedules["StableDiffusionXLTimesteps"] == SDXL_TIMESTEPS


def test_a_scheduler_accepts_the_preset_names():
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="ays_sdxl"
    )
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == SDXL_TIMESTEPS
    assert [scheduler.previous_timestep(t) for t in SDXL_TIMESTEPS] == SDXL_TIMESTEPS[1:] + [-1]


@pytest.mark.parametrize("model", ["sd15", "sdxl", "svd"])
def test_ten_steps_are_the_published_levels_then_zero(model):
    sigmas = ays.ays_sigmas(model, 10)
    assert sigmas.dtype == np.float64 and len(sigmas) == 11
    assert sigmas[:10].tolist() == list(ays.AYS_PRESETS[model].noise_levels[:10])
    assert sigmas[-1] == 0.0


@pytest.mark.parametrize(
    ("model", "key", "timesteps_key"),
    [
        ("sd15", "StableDiffusionSigmas", "StableDiffusionTimesteps"),
        ("sdxl", "StableDiffusionXLSigmas", "StableDiffusionXLTimesteps"),
        ("svd", "StableDiffusionVideoSigmas", None),
    ],
)
def test_levels_agree_with_diffusers_lists(model, key, timesteps_key):
    # diffusers' AysSchedules writes the levels to 3 decimals, not all of them NVIDIA's rounded (up to 1.4 %
    # apart, docs/reference.md (align your steps)), and the last as 0; mapped to timesteps, they agree within ±1.
    ours, theirs = ays.ays_sigmas(model, 10), np.array(AysSchedules[key])
    assert theirs[-1] == ours[-1] == 0.0
    np.testing.assert_allclose(ours[:-1], theirs[:-1], rtol=0.015)
    if timesteps_key is not None:
        mapped = spacing.timesteps_from_sigmas(theirs, sd_alpha_bar())
        assert np.abs(mapped - np.array(AysSchedules[timesteps_key])).max() <= 1


@pytest.mark.parametrize("model", ["sd15", "sdxl", "svd"])
@pytest.mark.parametrize("S", [1, 2, 4, 7, 16, 25, 50])
def test_other_step_counts_interpolate_log_linearly(model, S):
    levels = ays.AYS_PRESETS[model].noise_levels
    sigmas = ays.ays_sigmas(model, S)
    assert len(sigmas) == S + 1 and sigmas[-1] == 0.0
    # The release's recipe, written out: S + 1 evenly spaced positions u_j = j/S over the 11 published
    # levels at u_i = i/10; log σ linear between the two neighbouring published levels.
    for j in range(S):
        u = 10 * j / S
        i = min(int(math.floor(u)), 9)
        w = u - i
        expected = math.exp((1 - w) * math.log(levels[i]) + w * math.log(levels[i + 1]))
        assert sigmas[j] == pytest.approx(expected, rel=1e-12), j
    assert np.all(np.diff(sigmas) < 0)


def test_multiples_of_ten_steps_keep_every_published_level():
    levels = ays.AYS_PRESETS["sd15"].noise_levels
    sigmas = ays.ays_sigmas("sd15", 20)
    np.testing.assert_allclose(sigmas[:20:2], levels[:10], rtol=1e-12)


def test_published_sigmas_map_to_the_published_timesteps():
    alpha_bar = sd_alpha_bar()
    # NVIDIA's full-precision levels are σ of the published timesteps: the map is exact.
    for model, published in (("sd15", SD15_TIMESTEPS), ("sdxl", SDXL_TIMESTEPS)):
        levels = ays.AYS_PRESETS[model].noise_levels[:10]
        assert spacing.nearest_timesteps(levels, alpha_bar).tolist() == published
        assert list(ays.AYS_PRESETS[model].timesteps) == published
    # diffusers' 3-decimal sigmas give them within ±1 (the release's statement).
    mapped = spacing.timesteps_from_sigmas(SD15_SIGMAS, alpha_bar)
    assert np.abs(mapped - np.array(SD15_TIMESTEPS)).max() <= 1


def test_preset_errors():
    with pytest.raises(ValueError, match="'sd15', 'sdxl', 'svd'; got 'sd3'"):
        ays.ays_sigmas("sd3")
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1; got 0"):
        ays.ays_sigmas("sd15", 0)
    with pytest.raises(TypeError, match="num_inference_steps must be an int"):
        ays.ays_sigmas("sd15", 10.0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        ays.loglinear_interp([1.0, 2.0], 3)
    with pytest.raises(ValueError, match="finite and > 0"):
        ays.loglinear_interp([1.0, 0.0], 3)
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        ays.loglinear_interp([2.0, 1.0], 1)
