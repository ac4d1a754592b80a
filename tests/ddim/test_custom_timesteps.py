"""set_timesteps(timesteps=[...]): custom schedules, their validation, and diffusers' retrieve_timesteps."""

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

from ddim_sched import DDIMScheduler
from tests.tolerances import EXACT_RTOL, rel_l2

CUSTOM = [999, 850, 600, 420, 200, 75, 10]


@pytest.mark.parametrize(
    "given",
    [
        CUSTOM,
        np.array(CUSTOM),
        torch.tensor(CUSTOM),
        torch.tensor(CUSTOM, dtype=torch.int32),
        np.array(CUSTOM, dtype=np.float64),
    ],
    ids=["list", "numpy", "tensor", "int32", "integral-floats"],
)
def test_accepts_sequences(given):
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(timesteps=given)
    assert scheduler.timesteps.tolist() == CUSTOM
    assert scheduler.timesteps.dtype == torch.int64
    assert scheduler.num_inference_steps == len(CUSTOM)


def test_each_step_lands_on_the_next_custom_timestep():
    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=False)  # "stride" rule in the config
    scheduler.set_timesteps(timesteps=CUSTOM)
    assert [scheduler.previous_timestep(t) for t in CUSTOM] == CUSTOM[1:] + [-1]
    # With the exact x0 and ε, one step from the forward marginal at t gives the marginal at the
    # next custom timestep (ᾱ[0] after the last, as set_alpha_to_one=False).
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 16, generator=generator, dtype=torch.float64)
    eps = torch.randn(2, 16, generator=generator, dtype=torch.float64)
    alpha_bar = scheduler.alpha_bar
    levels = [alpha_bar[t] for t in CUSTOM] + [alpha_bar[0]]
    for i, t in enumerate(CUSTOM):
        x_t = levels[i].sqrt() * x0 + (1 - levels[i]).sqrt() * eps
        expected = levels[i + 1].sqrt() * x0 + (1 - levels[i + 1]).sqrt() * eps
        assert rel_l2(scheduler.step(eps, t, x_t).prev_sample, expected) < EXACT_RTOL[torch.float64]


def test_custom_copy_of_leading_schedule_steps_identically():
    by_count, by_list = DDIMScheduler(steps_offset=1), DDIMScheduler(steps_offset=1)
    by_count.set_timesteps(20)
    by_list.set_timesteps(timesteps=by_count.timesteps.tolist())
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    for t in by_count.timesteps:
        x = by_count.step(0.5 * x, t, x).prev_sample
        y = by_list.step(0.5 * y, t, y).prev_sample
    assert torch.equal(x, y)


def test_count_after_custom_restores_the_config_rule():
    scheduler = DDIMScheduler(timestep_spacing="linspace")
    scheduler.set_timesteps(timesteps=[999, 888])
    assert scheduler.previous_timestep(999) == 888
    scheduler.set_timesteps(10)
    assert scheduler.previous_timestep(999) == 899  # diffusers' stride rule again, as configured


def test_device_argument():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(timesteps=CUSTOM, device="cpu")
    assert scheduler.timesteps.device == torch.device("cpu")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({}, ValueError, "exactly one of num_inference_steps, timesteps and sigmas"),
        (
            {"num_inference_steps": 7, "timesteps": CUSTOM},
            ValueError,
            "exactly one of num_inference_steps, timesteps and sigmas",
        ),
        ({"timesteps": [10, 500, 20]}, ValueError, "strictly decreasing; got 10 then 500 at position 0"),
        ({"timesteps": [900, 500, 500, 20]}, ValueError, "must not repeat a timestep; got 500 at positions 1 and 2"),
        ({"timesteps": [1000, 10]}, ValueError, r"\[0, num_train_timesteps=1000\); got timesteps\[0\] = 1000"),
        ({"timesteps": [10, -1]}, ValueError, r"got timesteps\[1\] = -1"),
        ({"timesteps": []}, ValueError, "non-empty"),
        ({"timesteps": [[9, 8], [7, 6]]}, ValueError, "1-D"),
        ({"timesteps": [9.5, 3.0]}, TypeError, "integers"),
        ({"timesteps": torch.tensor([9.0, 3.0])}, TypeError, "integers"),
        ({"timesteps": ["9", "3"]}, TypeError, "integers"),
    ],
    ids=[
        "neither",
        "both",
        "increasing",
        "duplicate",
        "too-large",
        "negative",
        "empty",
        "2-D",
        "fractional",
        "float-tensor",
        "strings",
    ],
)
def test_rejects(kwargs, error, match):
    scheduler = DDIMScheduler()
    before = scheduler.timesteps.clone()
    with pytest.raises(error, match=match):
        scheduler.set_timesteps(**kwargs)
    assert torch.equal(scheduler.timesteps, before)  # raised before changing anything


def test_diffusers_retrieve_timesteps_with_custom_list():
    scheduler = DDIMScheduler()
    timesteps, n = retrieve_timesteps(scheduler, timesteps=CUSTOM, device="cpu")
    assert timesteps.tolist() == CUSTOM and n == len(CUSTOM)
    assert scheduler.timesteps is timesteps


def test_diffusers_retrieve_timesteps_with_a_count():
    scheduler = DDIMScheduler(steps_offset=1)
    timesteps, n = retrieve_timesteps(scheduler, num_inference_steps=5, device="cpu")
    assert timesteps.tolist() == [801, 601, 401, 201, 1] and n == 5  # docs/concepts.md (timestep spacings)
