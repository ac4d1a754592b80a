"""k-diffusion sigmas -> DDIM training timesteps: nearest in log σ (what ``set_timesteps(sigmas=...)`` maps)."""

import math
import warnings

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import AysSchedules

from ddim_sched import DDIMScheduler, spacing

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def sigmas_of(alpha_bar):
    a = alpha_bar.numpy()
    with np.errstate(divide="ignore"):
        return np.sqrt((1 - a) / a)


@pytest.mark.parametrize("config", [{}, SD, {"beta_schedule": "squaredcos_cap_v2"}, {"rescale_betas_zero_snr": True}])
def test_every_level_of_the_table_maps_to_its_own_timestep(config):
    alpha_bar = DDIMScheduler(**config).alpha_bar
    sigmas = sigmas_of(alpha_bar)
    expected = np.arange(len(sigmas))
    assert spacing.nearest_timesteps(sigmas, alpha_bar).tolist() == expected.tolist()
    assert spacing.nearest_timesteps(torch.from_numpy(sigmas), alpha_bar).tolist() == expected.tolist()


def test_a_level_between_two_timesteps_goes_to_the_nearer_in_log_sigma():
    alpha_bar = DDIMScheduler(**SD).alpha_bar
    log_sigmas = np.log(sigmas_of(alpha_bar))
    for t in (0, 1, 250, 500, 998):
        for w, nearer in ((0.3, t), (0.7, t + 1)):
            level = math.exp((1 - w) * log_sigmas[t] + w * log_sigmas[t + 1])
            assert spacing.nearest_timesteps([level], alpha_bar).tolist() == [nearer]


def test_the_ends_and_infinity():
    alpha_bar = DDIMScheduler(**SD).alpha_bar
    sigmas = sigmas_of(alpha_bar)
    # Published lists round σ_max up (14.615 for 14.6146): within 1 % beyond the ends is the end timestep.
    assert spacing.nearest_timesteps([14.615, sigmas[0] * 0.995], alpha_bar).tolist() == [999, 0]
    zero_snr = DDIMScheduler(rescale_betas_zero_snr=True).alpha_bar
    assert spacing.nearest_timesteps([math.inf], zero_snr).tolist() == [999]
    assert spacing.timesteps_from_sigmas([math.inf, 10.0, 0.0], zero_snr)[0] == 999


def test_errors_name_the_value():
    alpha_bar = DDIMScheduler(**SD).alpha_bar
    with pytest.raises(ValueError, match=r"sigmas\[1\] = 700 lies outside .*\[0.0291672, 14.6146\]"):
        spacing.nearest_timesteps([1.0, 700.0], alpha_bar)
    with pytest.raises(ValueError, match=r"sigmas\[0\] = 0.01 lies outside"):
        spacing.nearest_timesteps([0.01], alpha_bar)
    with pytest.raises(ValueError, match=r"sigmas\[0\] = nan: noise levels must be > 0"):
        spacing.nearest_timesteps([math.nan], alpha_bar)
    with pytest.raises(ValueError, match=r"sigmas\[0\] = -1.0: noise levels must be > 0"):
        spacing.nearest_timesteps([-1.0], alpha_bar)
    with pytest.raises(ValueError, match="no zero-SNR timestep"):
        spacing.nearest_timesteps([math.inf], alpha_bar)
    with pytest.raises(TypeError, match="real numbers"):
        spacing.nearest_timesteps(["a"], alpha_bar)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        spacing.nearest_timesteps([[1.0]], alpha_bar)


def test_the_set_timesteps_convention():
    alpha_bar = DDIMScheduler(**SD).alpha_bar
    sigmas = AysSchedules["StableDiffusionXLSigmas"]
    assert spacing.timesteps_from_sigmas(sigmas, alpha_bar).tolist() == AysSchedules["StableDiffusionXLTimesteps"]
    # The last level may be σ of the final ᾱ instead of 0 (set_alpha_to_one=False: ᾱ_0).
    final = float(alpha_bar[0])
    ending_at_sigma_0 = [*sigmas[:-1], math.sqrt((1 - final) / final)]
    assert (
        spacing.timesteps_from_sigmas(ending_at_sigma_0, alpha_bar, final_alpha_bar=final).tolist()
        == (AysSchedules["StableDiffusionXLTimesteps"])
    )
    with pytest.raises(ValueError, match="must be 0 or 0.0291672, the sigma of final_alpha_bar; got 0.5"):
        spacing.timesteps_from_sigmas([10.0, 0.5], alpha_bar, final_alpha_bar=final)
    with pytest.raises(ValueError, match="must be 0; got 0.5"):
        spacing.timesteps_from_sigmas([10.0, 0.5], alpha_bar)
    with pytest.raises(ValueError, match="strictly decreasing; got 1.0 then 2.0 at position 0"):
        spacing.timesteps_from_sigmas([1.0, 2.0, 0.0], alpha_bar)
    with pytest.raises(ValueError, match="S \\+ 1 >= 2 levels"):
        spacing.timesteps_from_sigmas([0.0], alpha_bar)
    with pytest.raises(
        ValueError, match=r"sigmas\[0\] = 14.6 and sigmas\[1\] = 14.599 are both nearest to timestep 999"
    ):
        spacing.timesteps_from_sigmas([14.6, 14.599, 0.0], alpha_bar)


def test_a_last_step_onto_the_final_level_may_stay_put():
    # Visiting timestep 0 with set_alpha_to_one=False ends on ᾱ_0 again: the last level repeats the one before.
    alpha_bar = DDIMScheduler(**SD).alpha_bar
    sigma = sigmas_of(alpha_bar)
    final = float(alpha_bar[0])
    levels = [sigma[500], sigma[0], sigma[0]]
    assert spacing.timesteps_from_sigmas(levels, alpha_bar, final_alpha_bar=final).tolist() == [500, 0]
    with pytest.raises(ValueError, match="must be 0; got"):  # without that final level it is no end point
        spacing.timesteps_from_sigmas(levels, alpha_bar)
    with pytest.raises(ValueError, match="strictly decreasing"):  # and only the last step may stay put
        spacing.timesteps_from_sigmas([sigma[500], sigma[500], 0.0], alpha_bar, final_alpha_bar=final)


@pytest.mark.parametrize("key", ["StableDiffusionSigmas", "StableDiffusionXLSigmas"])
def test_rounding_diffusers_euler_fractional_timesteps_gives_ours(key):
    # diffusers' EulerDiscreteScheduler.set_timesteps(sigmas=...) interpolates each σ to a fractional
    # timestep in log σ (on its float32 table); rounding it is our nearest timestep.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        euler = EulerDiscreteScheduler(**SD)
    sigmas = AysSchedules[key]
    euler.set_timesteps(sigmas=sigmas)
    fractional = euler.timesteps.numpy().astype(np.float64)
    ours = spacing.timesteps_from_sigmas(sigmas, DDIMScheduler(**SD).alpha_bar)
    clear = np.abs(fractional - np.floor(fractional) - 0.5) > 1e-3
    assert ours[clear].tolist() == np.rint(fractional[clear]).astype(np.int64).tolist()
