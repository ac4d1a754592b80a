"""examples/fifo_video.py: a FIFO queue of frames at staggered timesteps, one per-frame step call per frame."""

from __future__ import annotations

import re

import torch

from ddim_sched import DDIMScheduler
from tests.tiny_models import load_example

fifo = load_example("fifo_video")


def _setup(steps=6, spacing="trailing"):
    scheduler = DDIMScheduler(clip_sample=False, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    return scheduler, fifo.toy_video_model(scheduler, 2, 4, 8)


def test_each_frame_leaving_the_queue_is_the_frame_sampled_alone():
    for spacing in ("trailing", "leading"):
        scheduler, model = _setup(spacing=spacing)
        frames, noise = fifo.fifo_sample(model, scheduler, 9, (2, 4, 8), torch.Generator().manual_seed(1))
        assert frames.shape == (9, 2, 4, 8)
        for k in range(9):
            alone = fifo.sample_alone(model, scheduler, noise[k], k)
            assert torch.allclose(frames[k], alone, rtol=1e-12, atol=1e-12), (spacing, k)


def test_stochastic_fifo_is_reproducible_and_differs_from_eta_zero():
    scheduler, model = _setup()
    run = lambda eta: fifo.fifo_sample(model, scheduler, 5, (2, 4, 8), torch.Generator().manual_seed(2), eta=eta)[0]  # noqa: E731
    assert torch.equal(run(0.7), run(0.7))
    assert not torch.allclose(run(0.7), run(0.0))


def test_example_runs_as_a_script(capsys):
    fifo.main(["--frames", "6", "--steps", "4"])
    out = capsys.readouterr().out
    assert "one step call per frame" in out
    difference = float(re.search(r"sampled alone\| = (\S+)", out).group(1))
    assert difference < 1e-12
