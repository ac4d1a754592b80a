r"""Edit-friendly noise maps (Huberman-Spiegelglas, Kulikov & Michaeli, CVPR 2024; LEDITS++'s
``compute_noise_ddim``): for a given trajectory of latents, the noise z_i that makes each stochastic step
land exactly on the next latent, and the loop that replays them (with the same model, or with another
one: a new prompt).

A step with η adds fresh noise linearly (eq. 12):

    x_{i+1} = step(m, t_i, x_i, η, z) = μ_i + σ_i·z,    μ_i = step(m, t_i, x_i, η, z = 0)

so the noise that reproduces a given x_{i+1} is z_i = (x_{i+1} − μ_i)/σ_i. Both μ_i and σ_i are read from
the scheduler's own ``step`` (σ_i is the difference of two steps, with z = 1 and z = 0, taken in float64),
never re-derived: every spacing, successor rule, per-sample timestep and flow configuration gives the z
that its own step consumes.

Where a step adds no noise (σ_i = 0: η = 0, or a last step onto ᾱ = 1 / σ = 0), no z can move it: there
z_i = 0 and the gap x_{i+1} − μ_i is kept as that step's *offset*, which :func:`replay_noise_maps` adds
back (or not). σ is per element, so one batch may mix both cases (a [B] η, per-sample timesteps).

The DDPM noise space of the paper is the trajectory of :func:`noise_space_trajectory`: one clean x0
noised to every visited timestep with independent noise, x_t = a_t·x0 + b_t·ε_t.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..core.noise import Generator
from .stepping import (
    ModelFn,
    Scheduler,
    StepCallback,
    check_callback,
    check_latent,
    check_model_fn,
    check_scheduler,
    draw_noise,
    forward_process,
    relative_residual,
    schedule_timesteps,
    step,
    stepper,
)

__all__ = ["NoiseMaps", "edit_friendly_noise", "noise_space_trajectory", "replay_noise_maps"]

Timesteps = Sequence[Any] | torch.Tensor | None


@dataclass(frozen=True)
class NoiseMaps:
    """The per-step noise that replays a trajectory through a scheduler's stochastic steps.

    Attributes:
        x_T: Where the replay starts: the trajectory's first latent, [B, ...].
        noises: z_i per step, each [B, ...] in the latents' dtype (0 where the step adds no noise).
        offsets: Per step, x_{i+1} − μ_i where the step adds no noise (σ_i = 0) and 0 elsewhere, [B, ...];
            None for a step that adds noise to every element.
        timesteps: The timestep argument of each step, as given to ``step`` (elements of
            ``scheduler.timesteps``, or per-sample [B] tensors).
        eta: The η of every step (None: the scheduler's default).
        residuals: Per step, the largest relative residual ‖step(m, t, x_i, η, z_i) − x_{i+1}‖/‖x_{i+1}‖
            over the batch, measured without the offset: float rounding where the step adds noise, the
            whole gap that the offset closes where it does not.
    """

    x_T: torch.Tensor
    noises: tuple[torch.Tensor, ...]
    offsets: tuple[torch.Tensor | None, ...]
    timesteps: tuple[Any, ...]
    eta: float | torch.Tensor | None
    residuals: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.noises)


def noise_space_trajectory(
    x0: torch.Tensor,
    scheduler: Scheduler,
    *,
    generator: Generator = None,
    timesteps: Timesteps = None,
) -> list[torch.Tensor]:
    """The DDPM noise space's trajectory of a clean x0 (Huberman-Spiegelglas et al.): x0 noised to every
    visited timestep with *independent* noise, x_{t_i} = a_{t_i}·x0 + b_{t_i}·ε_i, then x0 itself.

    Args:
        x0: The clean latents, a floating tensor [B, ...].
        scheduler: A DDIMScheduler (``add_noise``) or FlowMatchDDIMScheduler (``scale_noise``) on which
            ``set_timesteps`` was called.
        generator: A torch.Generator or a list of one per sample: ε_1, ..., ε_S are drawn in that order, as
            diffusers' ``randn_tensor`` draws (so a list gives each sample the noise it gets alone).
        timesteps: The timestep of each step (default: ``scheduler.timesteps``); an entry may be a [B]
            tensor (one timestep per sample).

    Returns:
        S + 1 latents of x0's shape, dtype and device: one per step, then x0.

    Raises:
        TypeError, ValueError: x0 not a floating tensor with a batch dimension; a scheduler of another kind
            or without a schedule; and what ``add_noise`` / ``scale_noise`` raise for the timesteps.
    """
    check_scheduler(scheduler)
    check_latent("x0", x0)
    steps = schedule_timesteps(scheduler, timesteps)
    return [forward_process(scheduler, x0, draw_noise(x0, generator), t) for t in steps] + [x0]


def _check_trajectory(trajectory: object, steps: int) -> list[torch.Tensor]:
    """S + 1 floating tensors of one shape."""
    if isinstance(trajectory, torch.Tensor):
        trajectory = list(trajectory.unbind(0))
    if not isinstance(trajectory, Sequence) or isinstance(trajectory, str):
        raise TypeError(f"trajectory must be a sequence of tensors; got {type(trajectory).__name__}")
    latents = list(trajectory)
    if len(latents) != steps + 1:
        raise ValueError(
            f"trajectory must hold one latent per step plus the clean end ({steps} + 1 = {steps + 1}); "
            f"got {len(latents)}"
        )
    for i, x in enumerate(latents):
        check_latent(f"trajectory[{i}]", x)
        if x.shape != latents[0].shape:
            raise ValueError(f"trajectory[{i}] has shape {tuple(x.shape)}; trajectory[0] has {tuple(latents[0].shape)}")
    return latents


def _noise_scale(
    scheduler: Scheduler, model_output: torch.Tensor, t: Any, x: torch.Tensor, eta: float | torch.Tensor | None
) -> torch.Tensor:
    """σ of the step per element, float64 [B, ...]: step(z = 1) − step(z = 0), both in float64 (the step is
    linear in z, so this is σ up to float64 rounding; exactly 0 where the step takes no noise)."""
    m, x64 = model_output.double(), x.double()
    ones, zeros = torch.ones_like(x64), torch.zeros_like(x64)
    return step(scheduler, m, t, x64, eta, ones) - step(scheduler, m, t, x64, eta, zeros)


def edit_friendly_noise(
    trajectory: Sequence[torch.Tensor] | torch.Tensor,
    scheduler: Scheduler,
    *,
    model_fn: ModelFn | None = None,
    model_outputs: Sequence[torch.Tensor] | None = None,
    eta: float | torch.Tensor | None = 1.0,
    timesteps: Timesteps = None,
) -> NoiseMaps:
    """The noise z_i per step that makes ``scheduler.step(m_i, t_i, x_i, eta=eta, variance_noise=z_i)`` land
    exactly (to float rounding) on x_{i+1}, for a given trajectory x_0 … x_S.

    z_i = (x_{i+1} − μ_i)/σ_i, with the step's mean μ_i (the step with z = 0) and its noise scale σ_i both
    read from the scheduler's own ``step`` (module docstring). Where σ_i = 0 (η = 0, or a last step with
    no noise) z_i is 0 and the gap x_{i+1} − μ_i is returned as the step's offset (no division by zero).

    Args:
        trajectory: S + 1 latents [B, ...] (a sequence, or a tensor [S + 1, B, ...]): one at each step's
            timestep, then the clean end; e.g. :func:`noise_space_trajectory`, or any sequence.
        scheduler: A DDIMScheduler or FlowMatchDDIMScheduler on which ``set_timesteps`` was called; it is not
            modified.
        model_fn: ``model_fn(x_i, t_i)`` → the model output at each latent (one call per step); or
        model_outputs: The S model outputs themselves. Exactly one of the two.
        eta: η of every step (a float or a [B] tensor; 1 is the DDPM posterior of the paper); None: the
            scheduler's default (required with a flow scheduler's ``stochastic_sampling``).
        timesteps: The timestep of each step (default: ``scheduler.timesteps``); an entry may be a [B]
            tensor, one timestep per sample (its successor is the step's target, as ``step`` decides).

    Returns:
        :class:`NoiseMaps`: x_T (= trajectory[0]), the z_i, the offsets, the timesteps, η and the measured
        residuals.

    Raises:
        TypeError: A scheduler of another kind; a trajectory or model output that is not a floating tensor;
            model_fn not callable.
        ValueError: No schedule set; neither or both of model_fn and model_outputs; lengths or shapes that
            disagree; and what ``step`` raises for the timesteps or η.
    """
    check_scheduler(scheduler)
    if (model_fn is None) == (model_outputs is None):
        raise ValueError("pass exactly one of model_fn and model_outputs")
    if model_fn is not None:
        check_model_fn(model_fn)
    steps = schedule_timesteps(scheduler, timesteps)
    latents = _check_trajectory(trajectory, len(steps))
    outputs: list[torch.Tensor] | None = None
    if model_outputs is not None:
        outputs = list(model_outputs)
        if len(outputs) != len(steps):
            raise ValueError(f"model_outputs must hold one output per step ({len(steps)}); got {len(outputs)}")
    stepping = stepper(scheduler)
    noises: list[torch.Tensor] = []
    offsets: list[torch.Tensor | None] = []
    residuals: list[float] = []
    for i, t in enumerate(steps):
        x, x_next = latents[i], latents[i + 1]
        m = model_fn(x, t) if model_fn is not None else outputs[i]  # type: ignore[index]
        check_latent(f"the model output of step {i}", m)
        mean = step(stepping, m, t, x, eta, torch.zeros_like(x))
        sigma = _noise_scale(stepping, m, t, x, eta)
        noisy = sigma > 0
        gap = x_next.double() - mean.double()
        z = torch.where(noisy, gap / torch.where(noisy, sigma, torch.ones_like(sigma)), torch.zeros_like(gap))
        z = z.to(x.dtype)
        noiseless = not bool(noisy.all())
        offsets.append(torch.where(noisy, torch.zeros_like(gap), gap).to(x.dtype) if noiseless else None)
        noises.append(z)
        landed = step(stepping, m, t, x, eta, z)
        residuals.append(float(relative_residual(landed, x_next).max()))
    return NoiseMaps(latents[0], tuple(noises), tuple(offsets), tuple(steps), eta, tuple(residuals))


def replay_noise_maps(
    model_fn: ModelFn,
    maps: NoiseMaps,
    scheduler: Scheduler,
    *,
    x_T: torch.Tensor | None = None,
    add_offsets: bool = True,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Sample with recorded noise: x ← step(model_fn(x, t_i), t_i, x, eta, variance_noise=z_i) (+ offset_i).

    With the model (and prompt) the maps were computed with, this reproduces the trajectory's clean end to
    float rounding; with another ``model_fn`` (a new prompt) it is the edit of the DDPM-noise-space paper
    and LEDITS++: the structure the noise maps carry is kept, the content follows the new model.

    Args:
        model_fn: ``model_fn(x, t)`` → the model output, called once per step with the maps' timesteps.
        maps: From :func:`edit_friendly_noise`.
        scheduler: The scheduler the maps were computed with (or one of the same configuration and
            schedule); it is not modified.
        x_T: Where to start (default ``maps.x_T``).
        add_offsets: Add each noiseless step's offset (the default; what makes the replay exact where a step
            adds no noise). False replays the noise alone.
        callback: Optional ``callback(i, t, x)`` after step i, with x the new latent.

    Returns:
        The last latent, of x_T's shape and dtype.

    Raises:
        TypeError: model_fn or callback not callable; maps not NoiseMaps; a scheduler of another kind.
        ValueError: No schedule set; x_T of another shape than the maps; and what ``step`` raises.
    """
    check_model_fn(model_fn)
    if not isinstance(maps, NoiseMaps):
        raise TypeError(f"maps must be NoiseMaps (from edit_friendly_noise); got {type(maps).__name__}")
    check_scheduler(scheduler)
    check_callback(callback)
    x = maps.x_T if x_T is None else x_T
    check_latent("x_T", x)
    if x.shape != maps.x_T.shape:
        raise ValueError(f"x_T must have the maps' shape {tuple(maps.x_T.shape)}; got {tuple(x.shape)}")
    stepping = stepper(scheduler)
    for i, t in enumerate(maps.timesteps):
        x = step(stepping, model_fn(x, t), t, x, maps.eta, maps.noises[i])
        offset = maps.offsets[i]
        if add_offsets and offset is not None:
            x = x + offset
        if callback is not None:
            callback(i, t, x)
    return x
