r"""EDICT (Wallace, Gokul & Naik, "EDICT: Exact Diffusion Inversion via Coupled Transformations", CVPR 2023):
two coupled sequences x and y, each stepped with the model output read at the other, then mixed with
weight p: an affine coupling layer, exactly invertible, at two model calls per step.

The paper's denoising step at timestep t, with a_t·x + b_t·ε the DDIM update of x with the
noise ε (for ε-prediction on the VP path a_t = √(ᾱ_prev/ᾱ_t), b_t = √(1−ᾱ_prev) − √(ᾱ_prev(1−ᾱ_t)/ᾱ_t)):

    x_inter = a_t·x_t + b_t·ε(y_t, t)
    y_inter = a_t·y_t + b_t·ε(x_inter, t)
    x_{t−1} = p·x_inter + (1 − p)·y_inter
    y_{t−1} = p·y_inter + (1 − p)·x_{t−1}

and its inversion, each line undoing one of the above in reverse order:

    y_inter = (y_{t−1} − (1 − p)·x_{t−1}) / p
    x_inter = (x_{t−1} − (1 − p)·y_inter) / p
    y_t     = (y_inter − b_t·ε(x_inter, t)) / a_t
    x_t     = (x_inter − b_t·ε(y_t, t)) / a_t

Here "a_t·x + b_t·ε(y)" is the scheduler's own η = 0 step of x with the model output read at y,
``step(model_fn(y, t), t, x)``: affine in x with slope ``prev_x`` (a_t for ε-prediction; 1 on the flow
path, x + (σ_s − σ_t)·u(y)), so every prediction type, spacing and flow configuration couples the same
way, and the inverse is x = x' + (x' − step(m, t, x'))/prev_x. Clipping x̂0 would make the step non-affine
in x, so ``clip_sample`` and ``thresholding`` are refused.

``leapfrog`` (the default of the authors' code and of diffusers' community pipeline) swaps which sequence
is stepped first on every other step; inversion mirrors the order of the sampling step it undoes.
p = 0.93 is the paper's choice. Inversion divides by p twice per step, and the two sequences must stay
close: the authors ran EDICT in float64; in half precision the round trip is lost (measured on the tests'
exact mixture model at S = 10: relative error 0.35 in float16, against 5·10⁻⁴ for BDIA).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..common.validation import check_flag, check_real
from ..ddim.scheduler import DDIMScheduler
from .stepping import (
    ModelFn,
    Scheduler,
    StepCallback,
    check_callback,
    check_latent,
    check_model_fn,
    check_scheduler,
    check_scheduler_type,
    output_slope,
    step,
    stepper,
)

__all__ = ["EDICTLatents", "edict_invert", "edict_sample"]


class EDICTLatents(NamedTuple):
    """The two coupled sequences of EDICT at one timestep.

    Attributes:
        x: The first sequence, [B, ...].
        y: The second, of x's shape.
    """

    x: torch.Tensor
    y: torch.Tensor


def _check(model_fn: object, scheduler: object, mixing: object, leapfrog: object, callback: object) -> Scheduler:
    check_model_fn(model_fn)
    checked = check_scheduler_type(scheduler)
    check_callback(callback)
    check_scheduler(checked, deterministic=True)
    p = check_real("mixing", mixing, 0.0, strict=True)
    if p > 1.0:
        raise ValueError(f"mixing must lie in (0, 1]; got {mixing!r}")
    check_flag("leapfrog", leapfrog)
    if isinstance(checked, DDIMScheduler) and (checked.ddim_config.clip_sample or checked.ddim_config.thresholding):
        raise ValueError(
            "EDICT needs a step that is affine in the sample at a fixed model output; clip_sample=True or "
            "thresholding=True clamps x0_hat. Use a scheduler with clip_sample=False and thresholding=False"
        )
    return checked


def _slopes(scheduler: Scheduler) -> list[float]:
    """The slope ``prev_x`` of each step at fixed model output, checked invertible (> 0)."""
    slopes = []
    for t in scheduler.timesteps:
        slope = output_slope(scheduler, t)
        if not slope > 0:
            raise ValueError(
                f"the step from timestep {t.item()!r} does not depend on its input at a fixed model output "
                f"(slope {slope!r}, e.g. x0-prediction landing on alpha_bar = 1), so EDICT cannot invert it"
            )
        slopes.append(slope)
    return slopes


def _x_first(j: int, leapfrog: bool) -> bool:
    """Whether sampling step j steps x before y (always without leapfrog, on even steps with it)."""
    return not leapfrog or j % 2 == 0


def edict_sample(
    model_fn: ModelFn,
    x_T: torch.Tensor | EDICTLatents,
    scheduler: Scheduler,
    *,
    mixing: float = 0.93,
    leapfrog: bool = True,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Decode with EDICT (module docstring: the paper's coupled denoising step): two model calls per step.

    Args:
        model_fn: ``model_fn(x, t)`` → the model output for the scheduler's prediction type (the velocity on
            the flow path), called twice per step with t an element of ``scheduler.timesteps``.
        x_T: Noise at ``timesteps[0]`` (both sequences start there, as in the paper), or the
            :class:`EDICTLatents` pair from :func:`edict_invert`.
        scheduler: A DDIMScheduler (without clip_sample or thresholding) or FlowMatchDDIMScheduler on which
            ``set_timesteps`` was called; not modified.
        mixing: p ∈ (0, 1], the mixing weight (0.93 in the paper).
        leapfrog: Alternate which sequence is stepped first (the authors' code).
        callback: Optional ``callback(j, t, x)`` after step j with the first sequence's new state.

    Returns:
        The first sequence at the end, x0 (the second agrees with it up to the sampler's error; after
        :func:`edict_invert` both equal the inverted input to float rounding).

    Raises:
        TypeError: model_fn or callback not callable; a scheduler of another kind; x_T not a floating
            tensor (or a pair of them); mixing not a real number; leapfrog not a bool.
        ValueError: No schedule set; mixing outside (0, 1]; clip_sample or thresholding on; a step that does
            not depend on its input; a flow scheduler with ``stochastic_sampling``.
    """
    checked = _check(model_fn, scheduler, mixing, leapfrog, callback)
    p = float(mixing)
    if isinstance(x_T, EDICTLatents):
        check_latent("x_T.x", x_T.x)
        check_latent("x_T.y", x_T.y)
        if x_T.x.shape != x_T.y.shape:
            raise ValueError(f"x_T.x and x_T.y differ in shape: {tuple(x_T.x.shape)}, {tuple(x_T.y.shape)}")
        x, y = x_T.x, x_T.y
    else:
        check_latent("x_T", x_T)
        x, y = x_T, x_T
    _slopes(checked)
    stepping = stepper(checked)
    for j, t in enumerate(checked.timesteps):
        if _x_first(j, leapfrog):
            x = step(stepping, model_fn(y, t), t, x)
            y = step(stepping, model_fn(x, t), t, y)
        else:
            y = step(stepping, model_fn(x, t), t, y)
            x = step(stepping, model_fn(y, t), t, x)
        x = p * x + (1 - p) * y
        y = p * y + (1 - p) * x
        if callback is not None:
            callback(j, t, x)
    return x


def edict_invert(
    model_fn: ModelFn,
    x0: torch.Tensor,
    scheduler: Scheduler,
    *,
    mixing: float = 0.93,
    leapfrog: bool = True,
    callback: StepCallback | None = None,
) -> EDICTLatents:
    """Encode x0 with EDICT's inversion (module docstring), two model calls per step: :func:`edict_sample`
    with the same ``mixing`` and ``leapfrog`` decodes the returned pair back to x0 to float rounding.

    Both sequences start at x0; each step undoes the mixing, then the two coupled steps in reverse order,
    each coupled step x' = step(m, t, x) inverted as x = x' + (x' − step(m, t, x'))/prev_x (exact: the
    step is affine in x at fixed m).

    Args:
        model_fn, scheduler, mixing, leapfrog: As for :func:`edict_sample`.
        x0: The clean sample [B, ...]; the work runs in its dtype.
        callback: Optional ``callback(i, t, x)`` after inverse step i = 0..S−1, with the first sequence's
            state at t = ``timesteps[S − 1 − i]``.

    Returns:
        :class:`EDICTLatents` (x, y) at ``timesteps[0]``.

    Raises:
        TypeError, ValueError: As :func:`edict_sample`.
    """
    checked = _check(model_fn, scheduler, mixing, leapfrog, callback)
    check_latent("x0", x0)
    p = float(mixing)
    slopes = _slopes(checked)
    stepping = stepper(checked)
    timesteps = checked.timesteps

    def unstep(model_output: torch.Tensor, j: int, landed: torch.Tensor) -> torch.Tensor:
        """The x with step(model_output, t_j, x) = landed."""
        return landed + (landed - step(stepping, model_output, timesteps[j], landed)) / slopes[j]

    x, y = x0, x0
    S = len(timesteps)
    for j in range(S - 1, -1, -1):
        t = timesteps[j]
        y = (y - (1 - p) * x) / p
        x = (x - (1 - p) * y) / p
        if _x_first(j, leapfrog):
            y = unstep(model_fn(x, t), j, y)
            x = unstep(model_fn(y, t), j, x)
        else:
            x = unstep(model_fn(y, t), j, x)
            y = unstep(model_fn(x, t), j, y)
        if callback is not None:
            callback(S - 1 - j, t, x)
    return EDICTLatents(x, y)
