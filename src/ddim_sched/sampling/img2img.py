"""img2img entry point: the tail of a schedule that starts part-way, from an image noised to its first timestep."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..common.validation import as_real


def img2img_timesteps(
    scheduler: Any,
    num_inference_steps: int,
    strength: float,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Set a schedule of S steps and keep its last ⌊N·strength⌋, as diffusers' img2img pipelines do.

    Calls ``scheduler.set_timesteps(num_inference_steps, device=device)``; N is the number of steps the
    schedule really has (``len(timesteps) // order``: fewer than S for a spacing that drops repeated
    timesteps, such as ``quad``). Drops the first ``N − ⌊N·strength⌋`` steps (times ``scheduler.order``),
    and tells the scheduler where sampling starts with ``set_begin_index`` when it has one. Works with any
    diffusers-style scheduler.
    Then noise the image to the first kept timestep and run the loop over the kept ones::

        timesteps, latent_timestep = img2img_timesteps(scheduler, 50, strength=0.6)
        x = scheduler.add_noise(image_latents, noise, latent_timestep.repeat(batch))
        for t in timesteps:
            x = scheduler.step(model(x, t), t, x).prev_sample

    Args:
        scheduler: A scheduler with ``set_timesteps``, ``timesteps`` and ``order``.
        num_inference_steps: S, the number of steps the full schedule (strength 1) would take.
        strength: In [0, 1]: how much of the schedule to run, i.e. how much noise to add.
        device: Where the timesteps go.

    Returns:
        (timesteps, latent_timestep): the kept timesteps, [⌊N·strength⌋·order] int64, and the first of
        them as a [1] tensor (diffusers' ``timesteps[:1]``; repeat it per batch element).

    Raises:
        TypeError: strength is not a real number.
        ValueError: strength outside [0, 1], or so small that no step is kept (⌊N·strength⌋ = 0).
    """
    number = as_real(strength)
    if number is None:
        raise TypeError(f"strength must be a float in [0, 1]; got {strength!r}")
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ValueError(f"strength must lie in [0, 1]; got {strength!r}")
    scheduler.set_timesteps(num_inference_steps, device=device)
    order = getattr(scheduler, "order", 1)
    steps = len(scheduler.timesteps) // order
    kept = min(int(steps * number), steps)
    if kept == 0:
        raise ValueError(
            f"strength={strength!r} with num_inference_steps={num_inference_steps} ({steps} steps) keeps no step "
            f"(int({steps} * {strength!r}) = 0); raise either"
        )
    start = (steps - kept) * order
    timesteps = scheduler.timesteps[start:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return timesteps, timesteps[:1]
