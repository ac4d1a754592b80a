"""set_timesteps(sigmas=...) on the three DDIM schedulers (docs/recipes.md (align your steps and sigmas)):
k-diffusion levels σ = √((1 − ᾱ)/ᾱ) to the nearest training timesteps, stepped along as custom timesteps.

References: the published Align Your Steps timesteps (docs/reference.md (align your steps)), diffusers'
``retrieve_timesteps`` and its ``EulerDiscreteScheduler.set_timesteps(sigmas=...)`` (fractional timesteps,
interpolated in log σ) computed live, and our own ``sigmas`` view read back.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.schedulers.scheduling_utils import AysSchedules

from ddim_sched import DDIMInverseScheduler, DDIMParallelScheduler, DDIMScheduler, ays

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
# The published 10-step lists (docs/reference.md (align your steps)).
PUBLISHED = {
    "sd15": [999, 850, 736, 645, 545, 455, 343, 233, 124, 24],
    "sdxl": [999, 845, 730, 587, 443, 310, 193, 116, 53, 13],
}
FORWARD = [DDIMScheduler, DDIMParallelScheduler]


def visited(scheduler):
    """The timesteps noisiest first, whatever order the scheduler visits them in."""
    timesteps = scheduler.timesteps.tolist()
    return timesteps[::-1] if isinstance(scheduler, DDIMInverseScheduler) else timesteps


@pytest.mark.parametrize("cls", [*FORWARD, DDIMInverseScheduler])
@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_align_your_steps_by_name_gives_the_published_timesteps(cls, model):
    by_sigmas = cls(**SD)
    by_sigmas.set_timesteps(sigmas=ays.ays_sigmas(model, 10))
    assert visited(by_sigmas) == PUBLISHED[model]
    assert by_sigmas.num_inference_steps == 10
    by_spacing = cls(**SD, timestep_spacing=f"ays_{model}")
    by_spacing.set_timesteps(10)
    assert visited(by_spacing) == PUBLISHED[model]
    if isinstance(by_sigmas, DDIMInverseScheduler):
        assert by_sigmas.timesteps.tolist() == sorted(PUBLISHED[model])


@pytest.mark.parametrize("cls", [*FORWARD, DDIMInverseScheduler])
@pytest.mark.parametrize("key", ["StableDiffusionSigmas", "StableDiffusionXLSigmas"])
def test_retrieve_timesteps_takes_sigmas_and_maps_them_as_euler_interpolates(cls, key):
    # diffusers' pipelines: retrieve_timesteps(scheduler, sigmas=...) inspects set_timesteps for `sigmas`,
    # calls set_timesteps(sigmas=..., device=...) and reads scheduler.timesteps. Its EulerDiscreteScheduler
    # interpolates each σ to a fractional timestep linear in log σ; ours is the nearest integer to it.
    scheduler = cls(**SD)
    sigmas = AysSchedules[key]
    timesteps, count = retrieve_timesteps(scheduler, sigmas=sigmas, device="cpu")
    assert timesteps is scheduler.timesteps and count == len(sigmas) - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        euler = EulerDiscreteScheduler(**SD)
    euler.set_timesteps(sigmas=sigmas)
    fractional = euler.timesteps.numpy().astype(np.float64)
    ours = np.array(visited(scheduler))
    assert np.all(np.abs(ours - fractional) <= 0.5 + 1e-3)  # float32 table there, float64 here


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "karras", "quad"])
def test_the_sigmas_view_read_back_gives_the_same_schedule(set_alpha_to_one, spacing):
    # A schedule's own k-diffusion levels (the `sigmas` attribute: its visited levels, then the final one, 0 or
    # σ of ᾱ_0) are exactly table levels: set_timesteps(sigmas=...) must give its timesteps back.
    source = DDIMScheduler(**SD, steps_offset=1, timestep_spacing=spacing, set_alpha_to_one=set_alpha_to_one)
    source.set_timesteps(12)
    target = DDIMScheduler(**SD, set_alpha_to_one=set_alpha_to_one)
    target.set_timesteps(sigmas=source.sigmas)
    assert target.timesteps.tolist() == source.timesteps.tolist()
    assert torch.equal(target.sigmas, source.sigmas)
    # The float32 view, as a pipeline may hold it, maps to the same timesteps.
    target.set_timesteps(sigmas=source.sigmas.float()[:-1].tolist() + [0.0])
    assert target.timesteps.tolist() == source.timesteps.tolist()


@pytest.mark.parametrize("cls", FORWARD)
def test_steps_land_on_the_next_level_as_with_custom_timesteps(cls):
    # The default "stride" rule (t − T // S) is diffusers' rule for its spacings only: a schedule from sigmas
    # steps along itself, exactly as the same list given as timesteps does.
    by_sigmas, by_timesteps = cls(**SD, clip_sample=False), cls(**SD, clip_sample=False)
    by_sigmas.set_timesteps(sigmas=ays.ays_sigmas("sd15", 10))
    by_timesteps.set_timesteps(timesteps=PUBLISHED["sd15"])
    assert [by_sigmas.previous_timestep(t) for t in PUBLISHED["sd15"]] == PUBLISHED["sd15"][1:] + [-1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    x_a = x_b = x
    for t in by_sigmas.timesteps:
        eps = 0.3 * x_a + 0.01 * float(t) / 1000
        x_a = by_sigmas.step(eps, t, x_a, eta=0.5, variance_noise=x).prev_sample
        x_b = by_timesteps.step(eps, t, x_b, eta=0.5, variance_noise=x).prev_sample
        assert torch.equal(x_a, x_b)


def test_other_step_counts_and_tensor_input():
    scheduler = DDIMScheduler(**SD)
    # The interpolated AYS schedule at 20 steps keeps every published level at the even positions.
    scheduler.set_timesteps(sigmas=ays.ays_sigmas("sdxl", 20))
    assert scheduler.timesteps[::2].tolist() == PUBLISHED["sdxl"]
    # A float32 tensor on the timesteps' device, as a pipeline may pass it.
    scheduler.set_timesteps(sigmas=torch.tensor(ays.ays_sigmas("sd15", 10), dtype=torch.float32), device="cpu")
    assert scheduler.timesteps.tolist() == PUBLISHED["sd15"]
    # A config change re-derives the schedule from the same request.
    scheduler.register_to_config(prediction_type="v_prediction")
    assert scheduler.timesteps.tolist() == PUBLISHED["sd15"]


def test_zero_terminal_snr_takes_infinity_and_refuses_it_under_epsilon():
    sigmas = [math.inf, 3.0, 0.5, 0.0]
    v = DDIMScheduler(**SD, rescale_betas_zero_snr=True, prediction_type="v_prediction")
    v.set_timesteps(sigmas=sigmas)
    assert v.timesteps[0] == 999 and float(v.alpha_bar[999]) == 0.0
    epsilon = DDIMScheduler(**SD, rescale_betas_zero_snr=True)
    with pytest.raises(ValueError, match="timestep 999: alpha_bar is 0 there"):
        epsilon.set_timesteps(sigmas=sigmas)


GIVEN = [1.0, 0.5, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one of num_inference_steps, timesteps and sigmas; got none of them"),
        ({"num_inference_steps": 10, "sigmas": GIVEN}, r"got num_inference_steps=10 and sigmas=\[1.0, 0.5, 0.0\]$"),
        ({"timesteps": [900, 100], "sigmas": GIVEN}, r"got timesteps=\[900, 100\] and sigmas=\[1.0, 0.5, 0.0\]$"),
        (
            {"num_inference_steps": 2, "timesteps": [900, 100], "sigmas": GIVEN},
            r"got num_inference_steps=2 and timesteps=\[900, 100\] and sigmas=",
        ),
        ({"sigmas": [2.0, 3.0, 0.0]}, "sigmas must be strictly decreasing; got 2.0 then 3.0 at position 0"),
        ({"sigmas": [2.0, 0.5]}, "must be 0; got 0.5"),
        ({"sigmas": [100.0, 0.0]}, r"sigmas\[0\] = 100 lies outside this alpha_bar table's noise levels"),
        ({"sigmas": [14.6, 14.599, 0.0]}, "are both nearest to timestep 999"),
    ],
    ids=["none", "count-and-sigmas", "timesteps-and-sigmas", "all-three", "increasing", "last", "range", "same"],
)
@pytest.mark.parametrize("cls", [DDIMScheduler, DDIMInverseScheduler])
def test_errors_name_what_was_given(cls, kwargs, match):
    scheduler = cls(**SD)
    scheduler.set_timesteps(5)
    before = scheduler.timesteps.clone()
    with pytest.raises(ValueError, match=match):
        scheduler.set_timesteps(**kwargs)
    assert torch.equal(scheduler.timesteps, before)  # raised before changing anything


def test_non_numbers_are_a_type_error():
    with pytest.raises(TypeError, match="sigmas must be a sequence of real numbers"):
        DDIMScheduler(**SD).set_timesteps(sigmas=["a", "b"])
