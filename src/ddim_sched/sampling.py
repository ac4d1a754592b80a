"""The two DDIM loops over a DDIMScheduler's own schedule: ``sample`` (decode x_T → x0) and ``invert``
(encode x0 → x_T, optionally exact).

``sample`` is the loop every pipeline writes: x ← step(model_fn(x, t), t, x) for t in the schedule.

The η = 0 DDIM loop is a chain of maps x_{i+1} = F_i(x_i), one per visited timestep t_i:

    F_i(x) = step(m(x, t_i), t_i, x).prev_sample = a_i·x + (√(1−ᾱ_prev) − a_i·√(1−ᾱ_t))·ε̂(x)

with a_i = √(ᾱ_prev/ᾱ_t) (eq. 12, σ = 0, no clipping) and ε̂(x) the noise the step reads from the
model output at x. Inverting step i means solving F_i(x_i) = x_{i+1} for x_i, i.e. finding the
fixed point of

    G_i(x) = x + (x_{i+1} − F_i(x)) / a_i = (x_{i+1} − (√(1−ᾱ_prev) − a_i·√(1−ᾱ_t))·ε̂(x)) / a_i

Classic DDIM inversion is one application of G_i from x = x_{i+1}: ε̂ at the unknown point x_i is
approximated by ε̂ at the known point x_{i+1}, which gives x_i = √ᾱ_t·x̂0 + √(1−ᾱ_t)·ε̂ with x̂0 read
at x_{i+1} on level ᾱ_prev (REFERENCE.md §1: the update with the roles of t and prev swapped).
Each further application is one fixed-point iteration; at the fixed point the forward step lands
exactly on x_{i+1}, so decoding reproduces x0 up to the iteration's convergence. G_i is written
with the scheduler's own ``step``, so every prediction type, spacing and successor rule is
inverted exactly as it is sampled.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch

from . import kernel
from .inverse_scheduler import DDIMInverseScheduler
from .scheduler import DDIMScheduler

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def _check_loop_arguments(model_fn: object, x: object, name: str, scheduler: object, callback: object) -> None:
    """The checks ``sample`` and ``invert`` share: callables, a sampling scheduler with a schedule, a batch tensor."""
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable; got {model_fn!r}")
    if not isinstance(scheduler, DDIMScheduler) or isinstance(scheduler, DDIMInverseScheduler):
        raise TypeError(f"scheduler must be a ddim_sched.DDIMScheduler; got {type(scheduler).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor; got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have a batch dimension; got a 0-d tensor")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None; got {callback!r}")
    if scheduler.num_inference_steps is None:
        raise ValueError("scheduler.num_inference_steps is None: call scheduler.set_timesteps(...) first")


def sample(
    model_fn: ModelFn,
    x_T: torch.Tensor,
    scheduler: DDIMScheduler,
    *,
    eta: float | torch.Tensor = 0.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Decode ``x_T`` with the scheduler's own loop: x ← step(model_fn(x, t), t, x, eta) for each visited t.

    Args:
        model_fn: ``model_fn(x, t)`` → the model output for the scheduler's ``prediction_type``, of x's
            shape; called with x [B, ...] and t a 0-d int64 tensor (an element of ``scheduler.timesteps``).
        x_T: The starting noise at ``scheduler.timesteps[0]``, a floating tensor [B, ...].
        scheduler: A :class:`DDIMScheduler` on which ``set_timesteps`` was called.
        eta: η for every step (a float, or a [B] tensor: one per sample).
        generator: A torch.Generator or a list of one per sample, for the η > 0 noise.
        callback: Optional ``callback(i, t, x)`` after step i, with x the new sample.

    Returns:
        x0, of x_T's shape, dtype and device.

    Raises:
        TypeError: model_fn or callback not callable; scheduler not a DDIMScheduler; x_T not a floating tensor.
        ValueError: set_timesteps was not called; x_T has no batch dimension; and what ``step`` raises.
    """
    _check_loop_arguments(model_fn, x_T, "x_T", scheduler, callback)
    x = x_T
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(model_fn(x, t), t, x, eta=eta, generator=generator).prev_sample
        if callback is not None:
            callback(i, t, x)
    return x


def _inverse_slopes(scheduler: DDIMScheduler) -> list[float]:
    """1 / a_i for each visited timestep t_i, where a_i is the slope of the forward step at fixed ε̂.

    a_i = √(ᾱ_prev/ᾱ_t): x_prev = √ᾱ_prev·(x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t + √(1−ᾱ_prev)·ε̂. Where ᾱ_t = 0
    (zero terminal SNR) ε̂ is x_t itself, so the slope at fixed model output (``prev_x``) is used.
    """
    alpha_bar = scheduler.alpha_bar
    final = 1.0 if scheduler.ddim_config.set_alpha_to_one else float(alpha_bar[0])
    prediction_type = scheduler.ddim_config.prediction_type
    inverse_slopes = []
    for t in scheduler.timesteps.tolist():
        prev = scheduler.previous_timestep(int(t))
        a_t = float(alpha_bar[int(t)])
        a_prev = float(alpha_bar[prev]) if prev >= 0 else final
        if a_t > 0:
            inverse_slopes.append(math.sqrt(a_t / a_prev))
            continue
        column = kernel.ddim_coefficients(
            torch.tensor(a_t, dtype=torch.float64), torch.tensor(a_prev, dtype=torch.float64), 0.0, prediction_type
        )
        slope = float(column[kernel.COLUMN["prev_x"]])
        if not (math.isfinite(slope) and slope > 0):
            raise ValueError(
                f"the DDIM step from timestep {t} (alpha_bar = 0) to alpha_bar = {a_prev} does not depend on "
                f"its input for prediction_type={prediction_type!r}, so it cannot be inverted"
            )
        inverse_slopes.append(1.0 / slope)
    return inverse_slopes


def invert(
    model_fn: ModelFn,
    x0: torch.Tensor,
    scheduler: DDIMScheduler,
    *,
    fixed_point_iterations: int = 0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Encode ``x0`` into the latent at ``scheduler.timesteps[0]`` that the scheduler's η = 0 loop decodes back to x0.

    Decoding is the scheduler's own loop, unchanged::

        x = invert(model_fn, x0, scheduler)
        for t in scheduler.timesteps:
            x = scheduler.step(model_fn(x, t), t, x).prev_sample   # ≈ x0 (exactly, for k large enough)

    Inversion visits exactly the reverse of that loop's points, whatever the scheduler's spacing,
    ``prev_timestep_rule`` or custom timesteps: step i of the loop is undone by solving
    ``step(model_fn(x_i, t_i), t_i, x_i).prev_sample == x_{i+1}`` for x_i (see the module docstring).

    Args:
        model_fn: ``model_fn(x, t)`` → the model output for the scheduler's ``prediction_type``, of x's
            shape; called with x [B, ...] and t a 0-d int64 tensor (an element of ``scheduler.timesteps``).
        x0: The clean sample, a floating tensor [B, ...]. The work runs in its dtype.
        scheduler: A :class:`DDIMScheduler` on which ``set_timesteps`` was called. It is not modified
            (its step-progress counters included).
        fixed_point_iterations: k >= 0. k = 0 is classic DDIM inversion (one model call per step,
            evaluated at the known, less noisy point). k >= 1 adds k fixed-point iterations per step,
            each evaluating ``model_fn`` at the new point, so that the forward step from the new point
            lands back on the current one (k + 1 model calls per step).
        callback: Optional ``callback(i, t, x)`` after each inverse step i = 0..S−1, where x is the new
            latent at timestep t (a 0-d int64 tensor); the last call has t = ``scheduler.timesteps[0]``.

    Returns:
        The latent at ``scheduler.timesteps[0]``, x0's shape, dtype and device.

    Raises:
        TypeError: model_fn or callback not callable; scheduler not a DDIMScheduler; x0 not a floating
            tensor; fixed_point_iterations not an int.
        ValueError: set_timesteps was not called; x0 has no batch dimension; fixed_point_iterations < 0;
            a step that forgets its input and so cannot be inverted (from ᾱ_t = 0 to ᾱ_prev = 1 with
            ``prediction_type="sample"``, where x_prev = x̂0 = the model output whatever x_t is).

    Notes:
        With ``clip_sample`` or ``thresholding`` on, the forward step is exactly invertible only where
        the clamp is inactive; the iteration is the same, its fixed point exists only there.
        For every prediction type, k = 0 holds ε̂ (the noise the step derives from the model
        output) fixed between the two points; at a timestep with ᾱ_t = 0 (zero terminal SNR), where
        ε̂ is x_t itself, it holds the model output fixed instead.
    """
    _check_loop_arguments(model_fn, x0, "x0", scheduler, callback)
    k = fixed_point_iterations
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"fixed_point_iterations must be an int; got {k!r}")
    if k < 0:
        raise ValueError(f"fixed_point_iterations must be >= 0; got {k}")

    inverse_slopes = _inverse_slopes(scheduler)
    # A shallow copy steps with the same tables but leaves the caller's progress counters alone.
    stepper = copy.copy(scheduler)
    timesteps = scheduler.timesteps

    x_next = x0
    for i in range(len(timesteps) - 1, -1, -1):
        t = timesteps[i]
        inverse_slope = inverse_slopes[i]
        x = x_next  # initial guess: the known point
        for _ in range(k + 1):
            landed = stepper.step(model_fn(x, t), t, x, eta=0.0).prev_sample
            x = x + (x_next - landed) * inverse_slope  # G_i(x)
        x_next = x
        if callback is not None:
            callback(len(timesteps) - 1 - i, t, x_next)
    return x_next
