"""Every entry point under ``torch.inference_mode()`` and ``torch.no_grad()`` (as servers run pipelines), and a
scheduler set up inside inference mode used outside it."""

from __future__ import annotations

import pytest
import torch

from ddim_sched import (
    DDIMInverseScheduler,
    DDIMParallelScheduler,
    DDIMScheduler,
    FlowMatchDDIMScheduler,
    img2img_timesteps,
    invert,
    sample,
)

MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad}
VP_CLASSES = [DDIMScheduler, DDIMInverseScheduler, DDIMParallelScheduler]


def _model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.1 * x


def _exercise(cls: type, tmp_path) -> torch.Tensor:
    """Construct, set timesteps, step along them, use the forward process, save and load: the sample."""
    scheduler = cls(shift=3.0) if cls is FlowMatchDDIMScheduler else cls(clip_sample=False)
    scheduler.set_timesteps(5)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        x = scheduler.step(_model(x, t), t, x).prev_sample
    noise = torch.ones_like(x)
    if cls is FlowMatchDDIMScheduler:
        x = x + scheduler.scale_noise(x, scheduler.timesteps[:1], noise)
    else:
        t = scheduler.timesteps[:1].repeat(2)
        x = x + scheduler.add_noise(x, noise, t) + scheduler.get_velocity(x, noise, t)
    scheduler.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    loaded.set_timesteps(5)
    return loaded.step(_model(x, loaded.timesteps[0]), loaded.timesteps[0], x).prev_sample


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("cls", [*VP_CLASSES, FlowMatchDDIMScheduler])
def test_every_entry_point_works_in_the_mode_and_gives_the_same_result(cls, mode, tmp_path):
    expected = _exercise(cls, tmp_path / "plain")
    with MODES[mode]():
        got = _exercise(cls, tmp_path / "mode")
    assert torch.equal(got, expected)


@pytest.mark.parametrize("mode", list(MODES))
def test_the_loop_helpers_work_in_the_mode(mode):
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(4)
    x0 = torch.randn(2, 3)
    expected_latent = invert(_model, x0, scheduler, fixed_point_iterations=1)
    expected = sample(_model, expected_latent, scheduler)
    with MODES[mode]():
        latent = invert(_model, x0, scheduler, fixed_point_iterations=1)
        decoded = sample(_model, latent, scheduler)
        timesteps, first = img2img_timesteps(scheduler, 10, strength=0.5)
    assert torch.equal(latent, expected_latent) and torch.equal(decoded, expected)
    assert timesteps.tolist() == scheduler.timesteps[5:].tolist() and first.tolist() == [timesteps[0].item()]


@pytest.mark.parametrize("cls", [*VP_CLASSES, FlowMatchDDIMScheduler])
def test_a_scheduler_set_up_in_inference_mode_serves_autograd_outside_it(cls):
    with torch.inference_mode():
        scheduler = cls(shift=3.0) if cls is FlowMatchDDIMScheduler else cls(clip_sample=False)
        scheduler.set_timesteps(5)
        t = scheduler.timesteps[1]
        scheduler.step(torch.zeros(2, 3), t, torch.ones(2, 3))  # fills the caches inside inference mode
    x = torch.ones(2, 3, requires_grad=True)
    scheduler.step(0.1 * x, scheduler.timesteps[1], x).prev_sample.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert not scheduler.timesteps.is_inference()
