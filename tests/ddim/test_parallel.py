"""DDIMParallelScheduler: DDIMScheduler plus batch_step_no_noise, equal to diffusers' where diffusers is right."""

from __future__ import annotations

import diffusers
import pytest
import torch

import ddim_sched
from ddim_sched import DDIMParallelScheduler, DDIMScheduler
from tests.tolerances import EXACT_RTOL, PARITY_RTOL, rel_l2


def _inputs(batch=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 8, 8, generator=g), torch.randn(batch, 3, 8, 8, generator=g)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize(
    "clip", [{"clip_sample": False}, {"clip_sample": True}, {"thresholding": True, "sample_max_value": 2.0}]
)
def test_batch_step_no_noise_equals_diffusers_at_eta_zero(prediction_type, clip):
    config = dict(prediction_type=prediction_type, **clip)
    ours, theirs = DDIMParallelScheduler(**config), diffusers.DDIMParallelScheduler(**config)
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(10)
    x, m = _inputs()
    t = theirs.timesteps[torch.tensor([0, 1, 3, 5, 8, 9])]
    expected = theirs.batch_step_no_noise(m, t, x, 0.0)
    got = ours.batch_step_no_noise(m, t, x, 0.0)
    assert rel_l2(got, expected) <= PARITY_RTOL[torch.float32]


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("rule", ["stride", "schedule"])
def test_batch_step_no_noise_is_the_step_without_noise(set_alpha_to_one, rule):
    """Per sample, batch_step_no_noise lands where step lands (ᾱ_0 after the last step without
    set_alpha_to_one, where diffusers' batch_step_no_noise takes 1) and differs from a noisy step only
    by the σ·z it leaves to the caller."""
    scheduler = DDIMParallelScheduler(
        set_alpha_to_one=set_alpha_to_one, prev_timestep_rule=rule, timestep_spacing="linspace", clip_sample=False
    )
    scheduler.set_timesteps(7)
    x, m = _inputs(batch=7)
    t = scheduler.timesteps  # includes the last step
    eta = torch.linspace(0, 1, 7)
    batched = scheduler.batch_step_no_noise(m, t, x, eta)
    z = torch.randn_like(x)
    noisy = scheduler.step(m, t, x, eta=eta, variance_noise=z).prev_sample
    sigma = scheduler._batch_get_variance(t, scheduler.previous_timestep(t)).sqrt() * eta
    assert rel_l2(batched + sigma.reshape(-1, 1, 1, 1) * z, noisy) <= EXACT_RTOL[torch.float32]
    for i in range(7):
        alone = scheduler.step(
            m[i : i + 1], int(t[i]), x[i : i + 1], eta=float(eta[i]), variance_noise=0 * z[i : i + 1]
        )
        assert rel_l2(batched[i : i + 1], alone.prev_sample) <= EXACT_RTOL[torch.float32]


def test_batch_variance_equals_the_single_one_and_honours_set_alpha_to_one():
    for set_alpha_to_one in (True, False):
        scheduler = DDIMParallelScheduler(set_alpha_to_one=set_alpha_to_one)
        t, prev = torch.tensor([999, 420, 487, 10]), torch.tensor([998, 400, 486, -1])
        batch = scheduler._batch_get_variance(t, prev)
        single = torch.stack([scheduler._get_variance(int(a), int(b)) for a, b in zip(t, prev, strict=True)])
        assert batch.dtype == torch.float32 and torch.allclose(batch, single, rtol=1e-6, atol=0)
    # After the last step the variance is (1 − ᾱ_final)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_final): 0 when ᾱ_final = 1.
    assert DDIMParallelScheduler(set_alpha_to_one=True)._batch_get_variance(torch.tensor([10]), torch.tensor([-1])) == 0


def test_parallel_scheduler_is_a_ddim_scheduler_with_its_own_output_class():
    scheduler = DDIMParallelScheduler(clip_sample=False)
    reference = DDIMScheduler(clip_sample=False)
    for s in (scheduler, reference):
        s.set_timesteps(10)
    x, m = _inputs()
    out = scheduler.step(m, 901, x)
    assert type(out) is ddim_sched.DDIMParallelSchedulerOutput
    assert torch.equal(out.prev_sample, reference.step(m, 901, x).prev_sample)
    assert DDIMParallelScheduler.from_config(reference.config).ddim_config == reference.ddim_config
