"""Configs carried over from diffusers' other schedulers with a noise-level respacing flag set
(docs/recipes.md (configs from other schedulers)): the flag is ignored as diffusers' DDIMScheduler ignores
it, with one warning naming the equivalent timestep_spacing; passing that spacing takes it.

References, computed live: diffusers' DDIMScheduler loading the same config (the default), and the
respaced schedules of its EulerDiscreteScheduler (fractional timesteps, linspace spacing: the grid over the
whole table) and DPMSolverMultistepScheduler (integer timesteps) for the opt-in.
"""

import warnings

import diffusers
import numpy as np
import pytest

from ddim_sched import DDIMConfig, DDIMInverseScheduler, DDIMParallelScheduler, DDIMScheduler

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
EQUIVALENT = {
    "use_karras_sigmas": "karras",
    "use_exponential_sigmas": "exponential",
    "use_beta_sigmas": "beta",
    "use_lu_lambdas": "exponential",
}
S = 10


def peer(cls, **config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**SD, **config)


def source_config(flag, spacing):
    """A config of the diffusers scheduler that has the flag, with the flag set."""
    cls = diffusers.DPMSolverMultistepScheduler if flag == "use_lu_lambdas" else diffusers.EulerDiscreteScheduler
    return peer(cls, timestep_spacing=spacing, **{flag: True}).config


def ddim_warnings(records):
    return [r.getMessage() for r in records() if r.name.startswith("ddim_sched")]


@pytest.mark.parametrize("flag", list(EQUIVALENT))
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_the_flag_is_ignored_as_diffusers_ignores_it_with_one_warning(flag, spacing, warnings_logged):
    config = source_config(flag, spacing)
    ours = DDIMScheduler.from_config(config)
    messages = ddim_warnings(warnings_logged)
    assert len(messages) == 1, messages
    name = EQUIVALENT[flag]
    assert f"{flag}=True" in messages[0] and f"timestep_spacing={spacing!r}" in messages[0]
    assert f"DDIMScheduler.from_config(config, timestep_spacing={name!r})" in messages[0]
    # The default stays diffusers' behaviour: the schedule diffusers' DDIMScheduler takes from this config.
    theirs = peer(diffusers.DDIMScheduler).from_config(config)
    ours.set_timesteps(S)
    theirs.set_timesteps(S)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    assert ours.config[flag] is True  # kept, so that a switch back to the source scheduler finds it


@pytest.mark.parametrize("flag", ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"])
def test_opting_in_takes_the_grid_at_eulers_nearest_timesteps(flag, warnings_logged):
    # Euler's respacing with linspace spacing spans the whole table (σ_0 … σ_999), as our spacings do; each of
    # its fractional timesteps (interpolated in log σ) rounds to ours.
    ours = DDIMScheduler.from_config(source_config(flag, "trailing"), timestep_spacing=EQUIVALENT[flag])
    assert ddim_warnings(warnings_logged) == []
    ours.set_timesteps(S)
    euler = peer(diffusers.EulerDiscreteScheduler, timestep_spacing="linspace", **{flag: True})
    euler.set_timesteps(S)
    assert ours.timesteps.tolist() == np.rint(euler.timesteps.numpy()).astype(np.int64).tolist()


@pytest.mark.parametrize("flag", ["use_karras_sigmas", "use_lu_lambdas"])
def test_opting_in_takes_dpm_solvers_integer_timesteps(flag):
    # DPM-Solver rounds its karras and Lu-λ timesteps to integers (its exponential and beta ones it truncates,
    # docs/recipes.md (spacings by name)), over the whole table whatever its spacing.
    config = source_config(flag, "linspace")
    ours = DDIMScheduler.from_config(config, timestep_spacing=EQUIVALENT[flag])
    ours.set_timesteps(S)
    dpm = diffusers.DPMSolverMultistepScheduler.from_config(config)
    dpm.set_timesteps(S)
    assert ours.timesteps.tolist() == dpm.timesteps.tolist()


def test_eulers_trailing_karras_spans_only_its_own_range(observe):
    # The example configs carry: Euler-Karras with trailing spacing places the grid between σ of its first and
    # last trailing timesteps (999 … 124 at S = 8), not over the whole table; timestep_spacing="karras" is the
    # whole-table grid, so it differs there (docs/recipes.md).
    config = source_config("use_karras_sigmas", "trailing")
    euler = diffusers.EulerDiscreteScheduler.from_config(config)
    euler.set_timesteps(8)
    ours = DDIMScheduler.from_config(config, timestep_spacing="karras")
    ours.set_timesteps(8)
    assert ours.timesteps.tolist() == [999, 890, 746, 549, 299, 90, 12, 0]  # = DPM-Solver's, tested above
    observe(f"diffusers' Euler karras trailing S=8 timesteps: {np.round(euler.timesteps.numpy(), 2).tolist()}")
    default = DDIMScheduler.from_config(config)
    default.set_timesteps(8)
    assert default.timesteps.tolist() == [999, 874, 749, 624, 499, 374, 249, 124]  # trailing, the flag ignored
    # Euler's own levels, given as sigmas, visit the nearest timesteps to its fractional ones.
    ours.set_timesteps(sigmas=euler.sigmas)
    assert ours.timesteps.tolist() == np.rint(euler.timesteps.numpy()).astype(np.int64).tolist()


def test_one_warning_for_several_flags_each_class_and_from_mapping(warnings_logged):
    # (_use_default_values lists the fields the source left at their defaults: from_config would drop the second)
    config = dict(source_config("use_lu_lambdas", "linspace"), use_karras_sigmas=True, _use_default_values=[])
    DDIMInverseScheduler.from_config(config)
    # As diffusers' inverse scheduler (no compatibles), it also names DPM-Solver's other keys it ignores; the
    # respacing flags are named in their own warning only.
    *others, message = ddim_warnings(warnings_logged)
    assert all("use_karras_sigmas" not in m and "use_lu_lambdas" not in m for m in others)
    assert message.startswith("DDIMInverseScheduler: ")
    assert "use_karras_sigmas=True, use_lu_lambdas=True" in message
    assert "timestep_spacing='exponential' or timestep_spacing='karras'" in message
    DDIMParallelScheduler.from_config(config, timestep_spacing="karras")  # takes one; the other is still ignored
    assert "use_lu_lambdas=True" in ddim_warnings(warnings_logged)[-1]
    assert "use_karras_sigmas" not in ddim_warnings(warnings_logged)[-1]
    count = len(ddim_warnings(warnings_logged))
    parsed = DDIMConfig.from_mapping(config)
    assert parsed.timestep_spacing == "linspace" and len(ddim_warnings(warnings_logged)) == count + 1
    assert ddim_warnings(warnings_logged)[-1].startswith("DDIMConfig: ")
    scheduler, unused = DDIMScheduler.from_config(config, return_unused_kwargs=True)
    assert isinstance(scheduler, DDIMScheduler) and unused == {}
    assert len(ddim_warnings(warnings_logged)) == count + 2


def test_no_warning_without_a_flag_or_when_the_spacing_is_already_its_own(warnings_logged):
    DDIMScheduler.from_config(peer(diffusers.EulerDiscreteScheduler).config)
    DDIMScheduler.from_config({**SD, "use_karras_sigmas": False})
    saved = DDIMScheduler.from_config(source_config("use_karras_sigmas", "linspace"), timestep_spacing="karras")
    DDIMScheduler.from_config(saved.config)  # our own config, saved with both: already karras
    assert ddim_warnings(warnings_logged) == []
