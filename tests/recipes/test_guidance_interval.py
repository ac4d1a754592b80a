"""Guidance in a limited noise interval (Kynkäänniemi et al. 2024; docs/reference.md (guidance interval))."""

import math

import pytest
import torch

from ddim_sched import DDIMScheduler, FlowMatchDDIMScheduler, GuidanceInterval
from tests.tiny_models import single_thread, stable_diffusion_pipeline

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)


def expected_active(scheduler, t, lo=0.28, hi=5.42):
    alpha_bar = float(scheduler.alpha_bar[t])
    sigma = math.sqrt((1 - alpha_bar) / alpha_bar)
    return lo < sigma <= hi


def test_active_is_the_half_open_interval_in_k_diffusion_sigma():
    scheduler = DDIMScheduler(**SD)
    interval = GuidanceInterval(16.0)  # the paper's SD-XL setting: w = 16, σ ∈ (0.28, 5.42]
    flags = [interval.active(scheduler, t) for t in range(1000)]
    assert flags == [expected_active(scheduler, t) for t in range(1000)]
    assert not flags[0] and not flags[999] and any(flags)  # off at both ends of SD's table
    inside = flags.index(True)
    # Bounds exactly on a level: σ_lo is excluded, σ_hi included.
    alpha_bar = float(scheduler.alpha_bar[inside])
    sigma = math.sqrt((1 - alpha_bar) / alpha_bar)
    assert not GuidanceInterval(2.0, sigma_lo=sigma, sigma_hi=10.0).active(scheduler, inside)
    assert GuidanceInterval(2.0, sigma_lo=0.01, sigma_hi=sigma).active(scheduler, inside)
    mask = interval.active(scheduler, torch.tensor([0, inside, 999]))
    assert mask.tolist() == [False, True, False]


def test_guide_and_scale():
    scheduler = DDIMScheduler(**SD)
    interval = GuidanceInterval(4.0)
    g = torch.Generator().manual_seed(0)
    u, c = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t_in = next(t for t in range(1000) if expected_active(scheduler, t))
    assert interval.scale(scheduler, t_in) == 4.0 and interval.scale(scheduler, 999) == 1.0
    torch.testing.assert_close(interval.guide(scheduler, t_in, u, c), u + 4.0 * (c - u))
    assert torch.equal(interval.guide(scheduler, 999, u, c), c)
    per_sample = interval.guide(scheduler, torch.tensor([999, t_in, 0]), u, c)
    assert torch.equal(per_sample[0], c[0]) and torch.equal(per_sample[2], c[2])
    torch.testing.assert_close(per_sample[1], u[1] + 4.0 * (c[1] - u[1]))
    assert interval.scale(scheduler, torch.tensor([999, t_in])).tolist() == [1.0, 4.0]


def test_flow_scheduler_levels():
    scheduler = FlowMatchDDIMScheduler(shift=3.0)
    scheduler.set_timesteps(20)
    interval = GuidanceInterval(5.0, sigma_lo=0.5, sigma_hi=2.0)
    for t, sigma in zip(scheduler.timesteps, scheduler.noise_levels[:-1], strict=False):
        ve = float(sigma / (1 - sigma))
        assert interval.active(scheduler, t) == (0.5 < ve <= 2.0)


def test_errors():
    with pytest.raises(ValueError, match="sigma_hi must be > sigma_lo = 1.0"):
        GuidanceInterval(2.0, sigma_lo=1.0, sigma_hi=0.5)
    with pytest.raises(ValueError, match="sigma_lo must be >= 0.0"):
        GuidanceInterval(2.0, sigma_lo=-1.0)
    with pytest.raises(ValueError, match="guidance_scale must be finite"):
        GuidanceInterval(math.nan)
    assert GuidanceInterval(2.0, sigma_hi=math.inf).sigma_hi == math.inf
    with pytest.raises(ValueError, match="same shape"):
        GuidanceInterval(2.0).guide(DDIMScheduler(), 10, torch.zeros(2, 3), torch.zeros(3, 3))


def test_pipeline_callback_sets_each_steps_scale(tiny_sd):
    """In diffusers' StableDiffusionPipeline the callback sets the next step's guidance scale: w inside the
    interval, just above 1 (the pipeline keeps its two-branch batch) outside."""
    import ddim_sched
    from tests.tiny_models import sd_loop

    scheduler = ddim_sched.DDIMScheduler(**sd_loop.SD_SCHEDULER_CONFIG)
    pipe = stable_diffusion_pipeline(tiny_sd.unet, tiny_sd.vae, scheduler)
    interval = GuidanceInterval(7.5, sigma_lo=0.28, sigma_hi=5.42)
    steps = 8
    scheduler.set_timesteps(steps)
    expected = [interval.pipeline_scale(scheduler, t) for t in scheduler.timesteps]
    assert 7.5 in expected and any(s < 1.01 for s in expected)  # this schedule crosses the interval
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(pipe.guidance_scale))
    try:
        with single_thread():
            pipe(
                prompt_embeds=tiny_sd.prompt_embeds,
                negative_prompt_embeds=tiny_sd.negative_prompt_embeds,
                guidance_scale=expected[0],
                num_inference_steps=steps,
                height=sd_loop.IMAGE_SIZE,
                width=sd_loop.IMAGE_SIZE,
                output_type="latent",
                callback_on_step_end=interval,
            )
    finally:
        hook.remove()
    assert seen == expected
