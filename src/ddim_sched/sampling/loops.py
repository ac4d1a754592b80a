"""The two DDIM loops over a scheduler's own schedule: ``sample`` (decode x_T → x0) and ``invert``
(encode x0 → x_T, optionally exact), for :class:`~ddim_sched.DDIMScheduler` and
:class:`~ddim_sched.FlowMatchDDIMScheduler` alike.

``sample`` is the loop every pipeline writes: x ← step(model_fn(x, t), t, x) for t in the schedule.

The η = 0 DDIM loop is a chain of maps x_{i+1} = F_i(x_i), one per visited timestep t_i:

    F_i(x) = step(m(x, t_i), t_i, x).prev_sample = a_i·x + (√(1−ᾱ_prev) − a_i·√(1−ᾱ_t))·ε̂(x)

with a_i = √(ᾱ_prev/ᾱ_t) (eq. 12, σ = 0, no clipping) and ε̂(x) the noise the step reads from the
model output at x. Inverting step i means solving F_i(x_i) = x_{i+1} for x_i, i.e. finding the
fixed point of

    G_i(x) = x + (x_{i+1} − F_i(x)) / a_i = (x_{i+1} − (√(1−ᾱ_prev) − a_i·√(1−ᾱ_t))·ε̂(x)) / a_i

Classic DDIM inversion is one application of G_i from x = x_{i+1}: ε̂ at the unknown point x_i is
approximated by ε̂ at the known point x_{i+1}, which gives x_i = √ᾱ_t·x̂0 + √(1−ᾱ_t)·ε̂ with x̂0 read
at x_{i+1} on level ᾱ_prev (the update with the roles of t and prev swapped: docs/reference.md).
Each further application is one fixed-point iteration; at the fixed point the forward step lands
exactly on x_{i+1}, so decoding reproduces x0 up to the iteration's convergence. G_i is written
with the scheduler's own ``step``, so every prediction type, spacing and successor rule is
inverted exactly as it is sampled.

On the flow path x_σ = (1 − σ)·x0 + σ·ε the η = 0 step is Euler's, F_i(x) = x + (σ_s − σ_t)·u(x), with
slope 1 at fixed velocity u, so G_i(x) = x_{i+1} − (σ_s − σ_t)·u(x): classic inversion is Euler's
method run backwards, u read at the known, less noisy point, and the fixed-point iteration is the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, overload

import torch

from ..common.validation import check_int, check_real
from ..core.noise import Generator
from .stepping import (
    ModelFn,
    Scheduler,
    StepCallback,
    check_callback,
    check_latent,
    check_model_fn,
    check_scheduler,
    check_scheduler_type,
    inverse_slope,
    relative_residual,
    step,
    stepper,
)

logger = logging.getLogger("ddim_sched")

__all__ = ["InversionReport", "ModelFn", "StepCallback", "invert", "sample"]


def _check_loop_arguments(
    model_fn: object, x: object, name: str, scheduler: object, callback: object, *, deterministic: bool = False
) -> None:
    """The checks ``sample`` and ``invert`` share: callables, a sampling scheduler with a schedule, a batch tensor."""
    check_model_fn(model_fn)
    check_scheduler_type(scheduler)
    check_latent(name, x)
    check_callback(callback)
    check_scheduler(scheduler, deterministic=deterministic)


def sample(
    model_fn: ModelFn,
    x_T: torch.Tensor,
    scheduler: Scheduler,
    *,
    eta: float | torch.Tensor | None = None,
    generator: Generator = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Decode ``x_T`` with the scheduler's own loop: x ← step(model_fn(x, t), t, x, eta) for each visited t.

    Args:
        model_fn: ``model_fn(x, t)`` → the model output for the scheduler's prediction type (ε, x0 or v for
            a DDIMScheduler; the velocity for a FlowMatchDDIMScheduler), of x's shape; called with x [B, ...]
            and t an element of ``scheduler.timesteps`` (a 0-d int64 tensor, or float32 on the flow path).
        x_T: The starting noise at ``scheduler.timesteps[0]``, a floating tensor [B, ...].
        scheduler: A :class:`~ddim_sched.DDIMScheduler` or :class:`~ddim_sched.FlowMatchDDIMScheduler` on
            which ``set_timesteps`` was called.
        eta: η for every step (a float, or a [B] tensor: one per sample); None: the scheduler's default
            (0 for DDIMScheduler, ``config.eta`` for the flow scheduler).
        generator: A torch.Generator or a list of one per sample, for the η > 0 noise.
        callback: Optional ``callback(i, t, x)`` after step i, with x the new sample.

    Returns:
        x0, of x_T's shape, dtype and device.

    Raises:
        TypeError: model_fn or callback not callable; scheduler not one of the two; x_T not a floating tensor.
        ValueError: set_timesteps was not called; x_T has no batch dimension; and what ``step`` raises.
    """
    _check_loop_arguments(model_fn, x_T, "x_T", scheduler, callback)
    x = x_T
    for i, t in enumerate(scheduler.timesteps):
        x = step(scheduler, model_fn(x, t), t, x, eta, generator=generator)
        if callback is not None:
            callback(i, t, x)
    return x


@dataclass(frozen=True)
class InversionReport:
    """How well each inverse step solved ``step(model_fn(x, t), t, x).prev_sample == x_next`` for x.

    Attributes:
        timesteps: The timestep of each inverse step, in the order taken (from the clean end up): ints for a
            DDIMScheduler, floats for a FlowMatchDDIMScheduler.
        residuals: Per step, the largest relative residual ‖F(x) − x_next‖/‖x_next‖ over the batch at the
            point returned (F the forward step); for k = 0 at the classic inversion's point.
        median_residuals: Per step, the median of the same over the batch.
        iterations: Per step, the fixed-point iterations taken (fewer than asked when ``tol`` was met).
        diverged: Per step, whether the iteration moved some sample further from a solution (its residual
            grew from the first iterate to the last, to above 64 ε of the dtype; that sample then keeps its
            best iterate).
        tol: The tolerance asked for, or None.
    """

    timesteps: list[float]
    residuals: list[float]
    median_residuals: list[float]
    iterations: list[int]
    diverged: list[bool]
    tol: float | None = None

    @property
    def converged(self) -> bool:
        """Whether every step met ``tol`` (False without a tolerance)."""
        return self.tol is not None and all(r <= self.tol for r in self.residuals)


def _invert_step(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x_next: torch.Tensor,
    inverse_slope: float,
    k: int,
    tol: float | None,
    report: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, int, bool]:
    """Solve forward(x) = x_next for x: (x, per-sample residual at x or None, iterations taken, diverged).

    x_1 = G(x_next) is classic DDIM inversion (G the fixed-point map). k >= 1 iterates G up to k more times
    (samples meeting ``tol`` stop moving), measures every iterate x_1 … x_{k+1} and returns, per sample, the
    one with the smallest residual: never further from a solution than k = 0, even where G diverges.
    """

    def per_sample(flags: torch.Tensor) -> torch.Tensor:
        return flags.reshape((-1,) + (1,) * (x_next.dim() - 1))

    landed = forward(x_next)
    residual = relative_residual(landed, x_next)
    if tol is not None and not bool((residual > tol).any()):
        return x_next, residual, 0, False  # the step is (numerically) the identity here
    x = x_next + (x_next - landed) * inverse_slope  # x_1
    if k == 0:
        return x, relative_residual(forward(x), x_next) if report or tol is not None else None, 0, False
    best_x, best, first = x, residual, residual
    iterations = 0
    for iteration in range(1, k + 2):
        landed = forward(x)
        residual = relative_residual(landed, x_next)
        if iteration == 1:
            best_x, best, first = x, residual, residual
        else:
            best_x = torch.where(per_sample(residual < best), x, best_x)
            best = torch.minimum(residual, best)
        moving = residual > tol if tol is not None else torch.ones_like(residual, dtype=torch.bool)
        if iteration == k + 1 or not bool(moving.any()):
            break
        x = torch.where(per_sample(moving), x + (x_next - landed) * inverse_slope, x)
        iterations = iteration
    # Diverged: some sample's residual grew, and beyond rounding (float32 iterates wobble near 1e-7).
    rounding = 64 * torch.finfo(x_next.dtype).eps
    return best_x, best, iterations, bool(((residual > first) & (residual > rounding)).any())


@overload
def invert(
    model_fn: ModelFn,
    x0: torch.Tensor,
    scheduler: Scheduler,
    *,
    fixed_point_iterations: int = ...,
    tol: float | None = ...,
    callback: StepCallback | None = ...,
    return_report: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def invert(
    model_fn: ModelFn,
    x0: torch.Tensor,
    scheduler: Scheduler,
    *,
    fixed_point_iterations: int = ...,
    tol: float | None = ...,
    callback: StepCallback | None = ...,
    return_report: Literal[True],
) -> tuple[torch.Tensor, InversionReport]: ...


def invert(
    model_fn: ModelFn,
    x0: torch.Tensor,
    scheduler: Scheduler,
    *,
    fixed_point_iterations: int = 0,
    tol: float | None = None,
    callback: StepCallback | None = None,
    return_report: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, InversionReport]:
    """Encode ``x0`` into the latent at ``scheduler.timesteps[0]`` that the scheduler's η = 0 loop decodes back to x0,
    for a DDIMScheduler (DDIM inversion) or a FlowMatchDDIMScheduler (Euler inversion on the flow path).

    Decoding is the scheduler's own loop, unchanged::

        x = invert(model_fn, x0, scheduler)
        for t in scheduler.timesteps:
            x = scheduler.step(model_fn(x, t), t, x).prev_sample   # ≈ x0 (exactly, for k large enough)

    Inversion visits exactly the reverse of that loop's points, whatever the scheduler's spacing,
    ``prev_timestep_rule`` or custom timesteps: step i of the loop is undone by solving
    ``step(model_fn(x_i, t_i), t_i, x_i).prev_sample == x_{i+1}`` for x_i (see the module docstring).

    Args:
        model_fn: ``model_fn(x, t)`` → the model output for the scheduler's prediction type (the velocity
            on the flow path), of x's shape; called with x [B, ...] and t an element of
            ``scheduler.timesteps`` (a 0-d int64 tensor, or float32 on the flow path).
        x0: The clean sample, a floating tensor [B, ...]. The work runs in its dtype. Differentiable.
        scheduler: A :class:`~ddim_sched.DDIMScheduler` or :class:`~ddim_sched.FlowMatchDDIMScheduler` on
            which ``set_timesteps`` was called. It is not modified (its step-progress counters included).
        fixed_point_iterations: k >= 0. k = 0 is classic inversion (one model call per step, evaluated
            at the known, less noisy point: ε̂ held fixed on the VP path, the velocity on the flow path).
            k >= 1 adds up to k fixed-point iterations per step, each evaluating ``model_fn`` at the new
            point, so that the forward step from the new point lands back on the current one; every
            iterate's residual is measured (at most k + 2 model calls per step) and each sample keeps its
            best iterate, so k >= 1 never ends a step further from a solution than k = 0, even where the
            iteration diverges.
        tol: Stop iterating a sample once its relative residual ‖F(x) − x_next‖/‖x_next‖ is at most
            ``tol`` (checked at each iterate; then one more model call per step measures the returned
            point). A step that ends above ``tol`` is logged as a warning on the ``ddim_sched`` logger.
        callback: Optional ``callback(i, t, x)`` after each inverse step i = 0..S−1, where x is the new
            latent at timestep t (an element of ``scheduler.timesteps``); the last call has
            t = ``scheduler.timesteps[0]``.
        return_report: Also return an :class:`InversionReport` (for k = 0 the residuals cost one more
            model call per step; for k >= 1 they are measured anyway).

    Returns:
        The latent at ``scheduler.timesteps[0]`` (x0's shape, dtype and device), or ``(latent, report)``.

    Raises:
        TypeError: model_fn or callback not callable; scheduler not one of the two; x0 not a floating
            tensor; fixed_point_iterations not an int; tol not a real number.
        ValueError: set_timesteps was not called; x0 has no batch dimension; fixed_point_iterations < 0;
            tol < 0; a step that forgets its input and so cannot be inverted (from ᾱ_t = 0 to ᾱ_prev = 1
            with ``prediction_type="sample"``, where x_prev = x̂0 = the model output whatever x_t is); a
            flow scheduler configured with ``stochastic_sampling=True`` (it has no η = 0 step).

    Notes:
        With ``clip_sample`` or ``thresholding`` on, the forward step is exactly invertible only where
        the clamp is inactive; the iteration is the same, its fixed point exists only there. Where the
        iteration diverges for some samples (a model whose ε̂ changes faster than the step contracts),
        those samples keep their best iterate and a warning names the step and the residuals.
    """
    _check_loop_arguments(model_fn, x0, "x0", scheduler, callback, deterministic=True)
    k = check_int("fixed_point_iterations", fixed_point_iterations, 0)
    if tol is not None:
        tol = check_real("tol", tol, 0.0)

    timesteps = scheduler.timesteps
    inverse_slopes = [inverse_slope(scheduler, t) for t in timesteps]
    stepping = stepper(scheduler)
    steps: list[float] = []
    residuals: list[float] = []
    medians: list[float] = []
    iterations: list[int] = []
    diverging: list[bool] = []
    x_next = x0
    for i in range(len(timesteps) - 1, -1, -1):
        t = timesteps[i]

        def forward(x: torch.Tensor, t: torch.Tensor = t) -> torch.Tensor:
            return step(stepping, model_fn(x, t), t, x, 0.0)

        x_next, residual, taken, diverged = _invert_step(forward, x_next, inverse_slopes[i], k, tol, return_report)
        if residual is not None:
            # Read on the host without the autograd graph (x0 may require grad; the report holds plain floats).
            measured = residual.detach()
            worst, median = float(measured.max()), float(measured.median())
            if diverged or (tol is not None and worst > tol):
                logger.warning(
                    "invert: at timestep %s the fixed-point iteration %s: relative residual max %.3g, median %.3g%s",
                    f"{t.item():g}",
                    "diverged for some samples (each keeps its best iterate)" if diverged else "did not reach tol",
                    worst,
                    median,
                    "" if tol is None else f" (tol {tol:g})",
                )
            steps.append(t.item())
            residuals.append(worst)
            medians.append(median)
            iterations.append(taken)
            diverging.append(diverged)
        if callback is not None:
            callback(len(timesteps) - 1 - i, t, x_next)
    if return_report:
        return x_next, InversionReport(steps, residuals, medians, iterations, diverging, tol)
    return x_next
