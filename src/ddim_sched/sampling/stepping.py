"""What the sampling and editing loops need from a scheduler, for both families alike.

:class:`~ddim_sched.DDIMScheduler` (the variance-preserving path, integer timesteps) and
:class:`~ddim_sched.FlowMatchDDIMScheduler` (the rectified-flow path, float timesteps) are driven through
their public API only: ``step`` (with ``eta`` and ``variance_noise``), ``timesteps``, ``add_noise`` /
``scale_noise``, ``coefficients`` and ``predict_x0_eps``. This module holds the few places where the
two differ (how η is passed, the forward process, where a step's slope comes from, a step to a level
other than the next one), so that each loop is written once.

A step at fixed model output m is affine in its input x (eqs. 9 and 12 without clipping):
x_s = prev_x·x + prev_m·m + σ·z. ``prev_x`` is its *slope*: a_s/a_t · … on the VP path (read from
``DDIMScheduler.coefficients``), exactly 1 on the flow path (x_s = x_t + (σ_s − σ_t)·u).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..core.noise import Generator, randn
from ..ddim.inverse import DDIMInverseScheduler
from ..ddim.scheduler import DDIMScheduler
from ..flow.scheduler import FlowMatchDDIMScheduler

__all__ = [
    "ModelFn",
    "Scheduler",
    "StepCallback",
    "check_callback",
    "check_latent",
    "check_model_fn",
    "check_scheduler",
    "check_scheduler_type",
    "draw_noise",
    "forward_process",
    "inverse_slope",
    "output_slope",
    "relative_residual",
    "schedule_timesteps",
    "step",
    "step_to_level",
    "stepper",
]

Scheduler = DDIMScheduler | FlowMatchDDIMScheduler
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def check_model_fn(model_fn: object) -> None:
    """``model_fn`` is callable."""
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable; got {model_fn!r}")


def check_callback(callback: object) -> None:
    """``callback`` is callable or None."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None; got {callback!r}")


def check_latent(name: str, x: object) -> None:
    """``x`` is a floating tensor with a batch dimension."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor; got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have a batch dimension; got a 0-d tensor")


def check_scheduler_type(scheduler: object) -> Scheduler:
    """``scheduler`` itself, if it is a sampling scheduler of either family (not the inverse one)."""
    if isinstance(scheduler, DDIMInverseScheduler) or not isinstance(
        scheduler, (DDIMScheduler, FlowMatchDDIMScheduler)
    ):
        raise TypeError(
            "scheduler must be a ddim_sched.DDIMScheduler or ddim_sched.FlowMatchDDIMScheduler; "
            f"got {type(scheduler).__name__}"
        )
    return scheduler


def check_scheduler(scheduler: object, *, deterministic: bool = False) -> None:
    """A sampling scheduler of either family on which ``set_timesteps`` was called. ``deterministic``: the
    loop needs the η = 0 step, which a flow scheduler configured with ``stochastic_sampling`` does not take."""
    scheduler = check_scheduler_type(scheduler)
    if scheduler.num_inference_steps is None:
        raise ValueError("scheduler.num_inference_steps is None: call scheduler.set_timesteps(...) first")
    if deterministic and isinstance(scheduler, FlowMatchDDIMScheduler) and scheduler.flow_config.stochastic_sampling:
        raise ValueError(
            "this loop needs the deterministic (eta = 0) step, but the FlowMatchDDIMScheduler was configured with "
            "stochastic_sampling=True (it re-noises every step): use a scheduler with stochastic_sampling=False"
        )


def stepper(scheduler: Scheduler) -> Scheduler:
    """A shallow copy that steps with the same tables but leaves the caller's progress counters alone."""
    return copy.copy(scheduler)


def step(
    scheduler: Scheduler,
    model_output: torch.Tensor,
    t: Any,
    x: torch.Tensor,
    eta: float | torch.Tensor | None = 0.0,
    noise: torch.Tensor | None = None,
    generator: Generator = None,
) -> torch.Tensor:
    """``scheduler.step(model_output, t, x, eta=eta, variance_noise=noise, generator=generator).prev_sample``.

    ``eta=None`` is the scheduler's own default (0 for DDIMScheduler, ``config.eta`` for the flow scheduler).
    """
    if isinstance(scheduler, FlowMatchDDIMScheduler):
        return scheduler.step(model_output, t, x, generator=generator, eta=eta, variance_noise=noise).prev_sample
    rate = 0.0 if eta is None else eta
    return scheduler.step(model_output, t, x, eta=rate, generator=generator, variance_noise=noise).prev_sample


def schedule_timesteps(scheduler: Scheduler, timesteps: Sequence[Any] | torch.Tensor | None) -> list[Any]:
    """The timestep argument of each step: the elements of ``scheduler.timesteps`` (0-d tensors, recognised by
    ``step`` without reading them), or the given ones (each a timestep or a [B] tensor: one per sample)."""
    if timesteps is None:
        return list(scheduler.timesteps)
    if isinstance(timesteps, torch.Tensor) and timesteps.dim() == 0:
        raise ValueError("timesteps must be a sequence with one entry per step; got a 0-d tensor")
    steps = list(timesteps)
    if not steps:
        raise ValueError("timesteps must hold at least one step; got an empty sequence")
    return steps


def forward_process(scheduler: Scheduler, x0: torch.Tensor, noise: torch.Tensor, t: Any) -> torch.Tensor:
    """x_t = a_t·x0 + b_t·noise at timestep t (``add_noise`` on the VP path, ``scale_noise`` on the flow path)."""
    if isinstance(scheduler, FlowMatchDDIMScheduler):
        return scheduler.scale_noise(x0, t, noise)
    return scheduler.add_noise(x0, noise, t)


def draw_noise(like: torch.Tensor, generator: Generator) -> torch.Tensor:
    """Standard normal noise of ``like``'s shape, dtype and device, drawn as diffusers' ``randn_tensor`` draws."""
    return randn(like.shape, generator, like.device, like.dtype)


def output_slope(scheduler: Scheduler, t: Any) -> float:
    """∂x_s/∂x_t of the η = 0 step from timestep t at fixed model output (``prev_x``), float64.

    Read from ``DDIMScheduler.coefficients``; on the flow path measured by stepping x = 1 with a zero
    velocity (the step is x + (σ_s − σ_t)·u, so this is 1 up to rounding).
    """
    if isinstance(scheduler, DDIMScheduler):
        return float(scheduler.coefficients(int(t), 0.0).prev_x)
    one = torch.ones(1, dtype=torch.float64)
    return float(stepper(scheduler).step(torch.zeros_like(one), t, one, eta=0.0).prev_sample)


def inverse_slope(scheduler: Scheduler, t: Any) -> float:
    """1 / a where a is the slope the classic inverse step divides by: at fixed ε̂ on the VP path
    (a = a_s/a_t = √(ᾱ_prev/ᾱ_t), or ``prev_x`` where a_t = 0), at fixed velocity on the flow path (a = 1).

    Raises:
        ValueError: The step does not depend on its input (it cannot be inverted).
    """
    if isinstance(scheduler, DDIMScheduler):
        row = scheduler.coefficients(int(t), 0.0)
        slope = float(row.a_s) / float(row.a_t) if row.a_t > 0 else float(row.prev_x)
    else:
        slope = output_slope(scheduler, t)
    if not (math.isfinite(slope) and slope > 0):
        what = (
            f"prediction_type={scheduler.ddim_config.prediction_type!r}"
            if isinstance(scheduler, DDIMScheduler)
            else "this flow scheduler"
        )
        raise ValueError(
            f"the step from timestep {t!r} does not depend on its input for {what} (slope {slope!r}), "
            "so it cannot be inverted"
        )
    return 1.0 / slope


def step_to_level(
    scheduler: Scheduler, model_output: torch.Tensor, index: int, x: torch.Tensor, to: int
) -> torch.Tensor:
    """The η = 0 step from ``timesteps[index]`` to the level of ``timesteps[to]`` (either direction), with the
    model output read at x: a_to·x̂0 + b_to·ε̂ (eq. 12 with σ = 0).

    On the VP path this is ``step(..., prev_timestep=timesteps[to])``; on the flow path (no such argument)
    x̂0 and ε̂ come from ``predict_x0_eps`` and are moved to σ_to = ``noise_levels[to]``.
    """
    t = scheduler.timesteps[index]
    if isinstance(scheduler, DDIMScheduler):
        target = int(scheduler.timesteps[to])
        return scheduler.step(model_output, t, x, eta=0.0, prev_timestep=target).prev_sample
    x0, eps = scheduler.predict_x0_eps(model_output, t, x)
    sigma = float(scheduler.noise_levels[to])
    return ((1.0 - sigma) * x0 + sigma * eps).to(x.dtype)


def relative_residual(landed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖landed − target‖ / ‖target‖ per sample, float64 [B]."""
    difference = (landed - target).flatten(1).double().norm(dim=1)
    return difference / target.flatten(1).double().norm(dim=1).clamp(min=torch.finfo(torch.float64).tiny)
