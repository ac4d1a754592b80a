"""FIFO-style video sampling with per-frame timesteps (FIFO-Diffusion on DDIM; diffusion forcing likewise).

A queue holds S frames at staggered noise levels: the front frame one step from clean, the back frame
pure noise. One scheduler call advances every frame one step at once — ``timestep`` is a
[1, 1, F, 1, 1] tensor, one timestep per frame of the [1, C, F, H, W] latents — then the front frame
leaves the queue clean and a fresh noise frame joins at the back. A video of any length comes out of
one model call and one step call per frame. The levels tensor is the same every call, so the scheduler
validates it and computes its coefficients once, then reuses them (a call costs about 1.3× a
scalar-timestep call: benchmarks/RESULTS.md).

The model here is a toy: each frame k of the "video" is drawn from N(μ_k, c²·I) with μ_k a wave moving
one pixel per frame, and the model returns the exact ε for that (so every frame's trajectory is its
own; a real video model would also look across frames). With η = 0 each frame that leaves the queue
therefore equals the same frame sampled alone by the ordinary S-step loop from the same noise, which
``main`` checks.

Run: ``python examples/fifo_video.py`` (a second on a CPU).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch

from ddim_sched import DDIMScheduler

VideoModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def wave(frame_ids: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    """μ_k for each frame id: [len(ids), C, H, W], a sine wave moving one pixel per frame."""
    x = torch.arange(width, dtype=torch.float64)
    phase = 2 * math.pi * (x[None, :] - frame_ids.to(torch.float64)[:, None]) / width
    rows = torch.sin(phase)[:, None, None, :].expand(-1, channels, height, -1)
    return 0.8 * rows * torch.linspace(0.5, 1.0, channels, dtype=torch.float64)[None, :, None, None]


def toy_video_model(scheduler: DDIMScheduler, channels: int, height: int, width: int, c: float = 0.2) -> VideoModel:
    """model(x [1, C, F, H, W], t [1, 1, F, 1, 1], frame_ids [F]) → the exact ε of each frame."""
    alpha_bar = scheduler.alpha_bar

    def model(x: torch.Tensor, t: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
        a = alpha_bar[t.reshape(-1)].reshape(1, 1, -1, 1, 1).to(x.dtype)
        mu = wave(frame_ids, channels, height, width).permute(1, 0, 2, 3).unsqueeze(0).to(x.dtype)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * c * c + 1 - a)

    return model


def fifo_sample(
    model: VideoModel,
    scheduler: DDIMScheduler,
    num_frames: int,
    frame_shape: tuple[int, int, int],
    generator: torch.Generator,
    eta: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``num_frames`` frames through a FIFO queue of len(scheduler.timesteps) frames.

    Returns (frames [num_frames, C, H, W], the starting noise of each frame [num_frames, C, H, W]).
    """
    timesteps = scheduler.timesteps  # noisiest first
    S = len(timesteps)
    noise = torch.randn((num_frames + S,) + frame_shape, generator=generator, dtype=torch.float64)
    # Warm-up: queue position j holds frame j after its first S − 1 − j steps, so that it sits at
    # timesteps[S − 1 − j]; the front (j = 0) is one step from clean, the back (j = S − 1) pure noise.
    queue = noise[:S].clone()
    ids = torch.arange(S)
    for j in range(S):
        for i in range(S - 1 - j):
            t = timesteps[i]
            x = queue[j : j + 1].permute(1, 0, 2, 3).unsqueeze(0)
            t5 = t.reshape(1, 1, 1, 1, 1)
            x = scheduler.step(model(x, t5, ids[j : j + 1]), t5, x, eta=eta, generator=generator).prev_sample
            queue[j] = x[0, :, 0]
    levels = timesteps.flip(0).reshape(1, 1, S, 1, 1)  # position j at timesteps[S − 1 − j]
    frames, next_id = [], S
    latents = queue.permute(1, 0, 2, 3).unsqueeze(0)  # [1, C, S, H, W]
    while len(frames) < num_frames:
        # One call advances every frame one step, each from its own timestep.
        latents = scheduler.step(model(latents, levels, ids), levels, latents, eta=eta, generator=generator).prev_sample
        frames.append(latents[0, :, 0].clone())  # the front frame is clean: it leaves
        fresh = noise[next_id].unsqueeze(1).unsqueeze(0)  # a new frame joins at the back, pure noise
        latents = torch.cat([latents[:, :, 1:], fresh], dim=2)
        ids = torch.cat([ids[1:], torch.tensor([next_id])])
        next_id += 1
    return torch.stack(frames), noise[:num_frames]


def sample_alone(model: VideoModel, scheduler: DDIMScheduler, noise: torch.Tensor, frame_id: int) -> torch.Tensor:
    """One frame by the ordinary loop over every timestep, for comparison."""
    x = noise.unsqueeze(1).unsqueeze(0)
    ids = torch.tensor([frame_id])
    for t in scheduler.timesteps:
        t5 = t.reshape(1, 1, 1, 1, 1)
        x = scheduler.step(model(x, t5, ids), t5, x).prev_sample
    return x[0, :, 0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=24, help="frames to generate (default 24)")
    parser.add_argument("--steps", type=int, default=12, help="S: inference steps = queue length (default 12)")
    args = parser.parse_args(argv)
    channels, height, width = 3, 8, 16
    scheduler = DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    scheduler.set_timesteps(args.steps)
    model = toy_video_model(scheduler, channels, height, width)
    start = time.perf_counter()
    frames, noise = fifo_sample(
        model, scheduler, args.frames, (channels, height, width), torch.Generator().manual_seed(0)
    )
    elapsed = time.perf_counter() - start
    alone = torch.stack([sample_alone(model, scheduler, noise[k], k) for k in range(args.frames)])
    difference = float((frames - alone).abs().max())
    target = wave(torch.arange(args.frames), channels, height, width)
    print(f"{args.frames} frames through a queue of {args.steps} in {elapsed:.2f} s: one step call per frame")
    print(f"max |FIFO frame - the same frame sampled alone| = {difference:.2e}")
    print(f"mean |frame - its wave| = {float((frames - target).abs().mean()):.3f} (data std 0.2)")


if __name__ == "__main__":
    main()
