"""FlowMatchDDIMScheduler's ddim_sched schedule options (docs/recipes.md (flow schedules)): the kl_optimal
and linear_quadratic respacings, and ``shift_once``, the opt-in that applies the static shift once where
diffusers' FlowMatchEulerDiscreteScheduler applies it twice (its default schedule's range comes from its
already-shifted training table).

References: diffusers' FlowMatchEulerDiscreteScheduler and its Mochi pipeline's ``linear_quadratic_schedule``,
computed live, and the definitions written out here (the static shift s·σ/(1 + (s − 1)·σ), uniform in atan σ).
"""

import math
import warnings

import diffusers
import numpy as np
import pytest
import torch
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule

from ddim_sched import FlowMatchDDIMScheduler

T = 1000


def diffusers_flow(**config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return diffusers.FlowMatchEulerDiscreteScheduler(**config)


def shifted(sigma, s):
    """The static shift, written out."""
    return s * sigma / (1 + (s - 1) * sigma)


def levels(scheduler):
    """The visited noise levels (float64), without the final 0."""
    return scheduler.noise_levels[:-1].numpy()


# ---------------------------------------------------------------------------- shift_once


def test_at_s_equal_t_the_default_ends_where_diffusers_does_and_shift_once_at_the_training_table():
    # SD3: shift 3, T = 1000. diffusers' training table ends at shift(1/T) = 0.0030; its set_timesteps(1000)
    # spaces that (shifted) range and shifts it again, ending at shift(shift(1/T)) = 0.0089.
    theirs = diffusers_flow(shift=3.0)
    table_end = float(theirs.sigmas[-1])
    theirs.set_timesteps(T)
    once = FlowMatchDDIMScheduler(shift=3.0, shift_once=True)
    training = once.noise_levels.clone()  # before set_timesteps: the training table's levels
    default = FlowMatchDDIMScheduler(shift=3.0)
    once.set_timesteps(T)
    default.set_timesteps(T)
    # (the range read from diffusers' float32 table: float32 rounding of shift(1/T))
    assert levels(default)[-1] == pytest.approx(shifted(shifted(1 / T, 3.0), 3.0), rel=1e-6)  # 0.0089286
    assert levels(default)[-1] == pytest.approx(float(theirs.sigmas[-2]), rel=1e-6)
    assert torch.allclose(default.sigmas, theirs.sigmas, rtol=1e-6, atol=0)
    assert levels(once)[-1] == pytest.approx(shifted(1 / T, 3.0), rel=1e-15)  # 0.0029940
    assert levels(once)[-1] == pytest.approx(table_end, rel=1e-6)
    assert torch.equal(once.noise_levels[:-1], training)  # the whole training table, each level shifted once


@pytest.mark.parametrize("S", [1, 4, 28])
@pytest.mark.parametrize("shift", [3.0, 0.5])
def test_shift_once_spaces_the_unshifted_levels_and_shifts_them_once(S, shift):
    once = FlowMatchDDIMScheduler(shift=shift, shift_once=True)
    once.set_timesteps(S)
    expected = shifted(np.linspace(T, 1, S) / T, shift)
    np.testing.assert_allclose(levels(once), expected, rtol=1e-15)
    # The default stays diffusers' schedule.
    default, theirs = FlowMatchDDIMScheduler(shift=shift), diffusers_flow(shift=shift)
    default.set_timesteps(S)
    theirs.set_timesteps(S)
    assert torch.allclose(default.timesteps, theirs.timesteps, rtol=1e-6, atol=0)
    # set_shift: the new shift, once.
    once.set_shift(5.0)
    once.set_timesteps(S)
    np.testing.assert_allclose(levels(once), shifted(np.linspace(T, 1, S) / T, 5.0), rtol=1e-15)


def test_shift_once_changes_nothing_where_diffusers_shifts_once():
    # The dynamic shift (Flux) and custom sigmas or timesteps are shifted once by diffusers already.
    for config, kwargs in (
        ({"use_dynamic_shifting": True, "shift": 3.0}, {"num_inference_steps": 12, "mu": 0.9}),
        ({"shift": 3.0}, {"sigmas": [1.0, 0.6, 0.2]}),
        ({"shift": 3.0}, {"timesteps": [1000.0, 600.0, 200.0]}),
    ):
        a, b = FlowMatchDDIMScheduler(**config), FlowMatchDDIMScheduler(**config, shift_once=True)
        a.set_timesteps(**kwargs)
        b.set_timesteps(**kwargs)
        assert torch.equal(a.noise_levels, b.noise_levels) and torch.equal(a.timesteps, b.timesteps)
    # Without a shift both space 1 … 1/T (diffusers' float32 1/T against the exact one).
    a, b = FlowMatchDDIMScheduler(), FlowMatchDDIMScheduler(shift_once=True)
    a.set_timesteps(7)
    b.set_timesteps(7)
    np.testing.assert_allclose(levels(a), levels(b), rtol=1e-7)


def test_shift_once_is_a_hidden_extension_field(tmp_path):
    assert "shift_once" not in FlowMatchDDIMScheduler(shift=3.0).config
    ours = FlowMatchDDIMScheduler.from_config(diffusers_flow(shift=3.0).config, shift_once=True)
    assert ours.config["shift_once"] is True
    ours.save_pretrained(tmp_path)
    assert FlowMatchDDIMScheduler.from_pretrained(tmp_path).flow_config.shift_once is True
    with pytest.raises(TypeError, match="shift_once must be a bool; got 1"):
        FlowMatchDDIMScheduler(shift_once=1)


# ---------------------------------------------------------------------------- respacings


@pytest.mark.parametrize("S", [2, 10, 28])
@pytest.mark.parametrize("config", [{"shift": 3.0}, {"shift": 1.0, "shift_terminal": 0.1}])
def test_kl_optimal_is_uniform_in_arctan_sigma_between_the_schedules_ends(S, config):
    # Between the first and last level of diffusers' schedule for this config (live), as diffusers places its
    # karras/exponential/beta respacings; uniform in atan σ (Sabour et al. 2024; ComfyUI's kl_optimal).
    theirs = diffusers_flow(**config)
    theirs.set_timesteps(S)
    top, bottom = float(theirs.sigmas[0]), float(theirs.sigmas[-2])
    ours = FlowMatchDDIMScheduler(**config, use_kl_optimal_sigmas=True)
    ours.set_timesteps(S)
    expected = [math.tan(math.atan(top) + i / (S - 1) * (math.atan(bottom) - math.atan(top))) for i in range(S)]
    np.testing.assert_allclose(levels(ours), expected, rtol=2e-7)
    assert float(ours.sigmas[-1]) == 0.0


@pytest.mark.parametrize("S", [1, 2, 7, 50])
def test_linear_quadratic_is_mochis_schedule(S):
    # diffusers' Mochi pipeline passes linear_quadratic_schedule(S, 0.025) as sigmas to a flow scheduler with
    # invert_sigmas=True; the flag has our scheduler build the same schedule itself.
    theirs = diffusers_flow(invert_sigmas=True)
    theirs.set_timesteps(sigmas=linear_quadratic_schedule(S, 0.025) if S > 1 else [1.0])
    ours = FlowMatchDDIMScheduler(invert_sigmas=True, use_linear_quadratic_sigmas=True)
    ours.set_timesteps(S)
    assert torch.allclose(ours.timesteps, theirs.timesteps, rtol=1e-6, atol=1e-4)
    assert torch.allclose(ours.sigmas, theirs.sigmas, rtol=1e-6, atol=1e-7)


def test_at_most_one_respacing():
    with pytest.raises(ValueError, match="at most one of .*use_kl_optimal_sigmas.*; got use_karras_sigmas, "):
        FlowMatchDDIMScheduler(use_karras_sigmas=True, use_linear_quadratic_sigmas=True)
    assert "use_kl_optimal_sigmas" not in FlowMatchDDIMScheduler().config
