r"""BDIA-DDIM (Zhang, Lewis & Kleijn, "Exact Diffusion Inversion via Bi-directional Integration
Approximation", ECCV 2024): DDIM made exactly invertible at one model call per step.

Notation: the states s_0 (at ``timesteps[0]``, the noise), s_1, …, s_S (the clean end); step j starts at
s_j on timestep t_j. With ε̂ read once at s_j, DDIM's η = 0 update gives two integration approximations:

======================  ===============================================================================
F_j(s_j)                the DDIM step forward, to where step j lands: a_s·x̂0 + b_s·ε̂ (the scheduler's
                        own ``step``, any spacing and successor rule)
B_j(s_j)                the DDIM step backward, from t_j up to the previous visited timestep t_{j−1}:
                        a_{j−1}·x̂0 + b_{j−1}·ε̂ (the same ε̂ and x̂0)
======================  ===============================================================================

The paper's update (its eq. for z_{i−1}; in its notation z_{i−1} = z_{i+1} − (1 − γ)(z_{i+1} − z_i)
− γ·Δ(t_i → t_{i+1} | z_i) + Δ(t_i → t_{i−1} | z_i), with Δ(t_i → t | z_i) the DDIM step from t_i to t minus
z_i), written with F and B:

    s_{j+1} = F_j(s_j) + γ·(s_{j−1} − B_j(s_j))            (j >= 1; step 0 is plain DDIM: s_1 = F_0(s_0))

γ ∈ [0, 1]: γ = 0 is DDIM; the paper's code defaults to γ = 1 and its README recommends γ = 0.5 at 10
steps and γ = 1 at 40. s_{j+1} depends linearly on s_{j−1}, so the step runs backwards exactly:

    s_{j−1} = B_j(s_j) + (s_{j+1} − F_j(s_j)) / γ            (γ > 0)

with the same one model call at s_j. Inversion therefore needs the *pair* (s_S, s_{S−1}) at the clean
end and returns the pair (s_0, s_1) at the noisy end; sampling from that pair retraces every state to
float rounding. s_{S−1} is not known from x0 alone: it comes from one classic DDIM inversion step, as in
the paper's code (whatever it is, the round trip is exact; it only decides which latent pair x0 gets).

The backward recursion is a two-step recurrence with a second, parasitic characteristic root of about
−1/γ (s_{j−1} ≈ (1 − 1/γ)·s_j + s_{j+1}/γ + …: roots 1 and −1/γ). Whatever component of the starting pair
the chain does not follow smoothly (the classic-inversion start, float rounding) grows like γ^−S over S
inverse steps; the forward pass damps it again by γ^S, so in exact arithmetic the round trip stays
exact, but for γ < 1 at many steps the latents blow up and float rounding of the huge latents ruins it.
γ = 1 (roots 1 and −1) does not amplify.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from ..common.validation import check_real
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
    step,
    step_to_level,
    stepper,
)

__all__ = ["BDIALatents", "bdia_invert", "bdia_sample"]

logger = logging.getLogger("ddim_sched")

# The encoded noise should be about as large as the data or as N(0, I); this many times more means the
# backward recursion's parasitic mode (growing like γ^−S) has taken over.
GROWTH_WARNING = 1e3


class BDIALatents(NamedTuple):
    """The two newest states of a BDIA chain: enough to continue it exactly.

    Attributes:
        x_T: The state at ``scheduler.timesteps[0]`` (s_0), [B, ...].
        x_next: The state one step later, where step 0 lands (s_1), [B, ...].
    """

    x_T: torch.Tensor
    x_next: torch.Tensor


def _check_gamma(gamma: object, invertible: bool) -> float:
    value = check_real("gamma", gamma, 0.0, strict=invertible)
    if value > 1.0:
        raise ValueError(f"gamma must lie in {'(0, 1]' if invertible else '[0, 1]'}; got {gamma!r}")
    return value


def _check_arguments(model_fn: object, scheduler: object, callback: object) -> Scheduler:
    check_model_fn(model_fn)
    checked = check_scheduler_type(scheduler)
    check_callback(callback)
    check_scheduler(checked, deterministic=True)
    return checked


def bdia_sample(
    model_fn: ModelFn,
    x_T: torch.Tensor | BDIALatents,
    scheduler: Scheduler,
    *,
    gamma: float = 1.0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Decode with BDIA-DDIM: s_{j+1} = F_j(s_j) + γ·(s_{j−1} − B_j(s_j)), one model call per step.

    Args:
        model_fn: ``model_fn(x, t)`` → the model output for the scheduler's prediction type (the velocity
            on the flow path); called once per step with t an element of ``scheduler.timesteps``.
        x_T: Noise at ``scheduler.timesteps[0]`` (then step 0 is a plain DDIM step, as in the paper), or a
            :class:`BDIALatents` pair from :func:`bdia_invert` (then step 0 is already taken: S − 1 model
            calls, and the chain retraces the inverted one exactly).
        scheduler: A DDIMScheduler or FlowMatchDDIMScheduler on which ``set_timesteps`` was called (not
            modified). Steps are the η = 0 step of the scheduler's own ``step``.
        gamma: γ ∈ [0, 1] (0: plain DDIM).
        callback: Optional ``callback(j, t, x)`` after step j with the new state.

    Returns:
        The last state s_S (x0), x_T's shape and dtype.

    Raises:
        TypeError: model_fn or callback not callable; a scheduler of another kind; x_T not a floating tensor
            (or a pair of them); gamma not a real number.
        ValueError: No schedule set; gamma outside [0, 1]; a pair of different shapes; a flow scheduler with
            ``stochastic_sampling``.
    """
    checked = _check_arguments(model_fn, scheduler, callback)
    rate = _check_gamma(gamma, invertible=False)
    previous: torch.Tensor | None
    if isinstance(x_T, BDIALatents):
        check_latent("x_T.x_T", x_T.x_T)
        check_latent("x_T.x_next", x_T.x_next)
        if x_T.x_T.shape != x_T.x_next.shape:
            raise ValueError(
                f"x_T.x_T and x_T.x_next differ in shape: {tuple(x_T.x_T.shape)}, {tuple(x_T.x_next.shape)}"
            )
        previous, x, start = x_T.x_T, x_T.x_next, 1
    else:
        check_latent("x_T", x_T)
        previous, x, start = None, x_T, 0
    stepping = stepper(checked)
    timesteps = checked.timesteps
    for j in range(start, len(timesteps)):
        t = timesteps[j]
        m = model_fn(x, t)
        forward = step(stepping, m, t, x)
        new = forward if previous is None else forward + rate * (previous - step_to_level(stepping, m, j, x, j - 1))
        previous, x = x, new
        if callback is not None:
            callback(j, t, x)
    return x


def bdia_invert(
    model_fn: ModelFn,
    x0: torch.Tensor,
    scheduler: Scheduler,
    *,
    gamma: float = 1.0,
    callback: StepCallback | None = None,
) -> BDIALatents:
    """Encode x0 into the BDIA pair (s_0, s_1) from which :func:`bdia_sample` with the same γ decodes x0
    exactly (to float rounding): s_{j−1} = B_j(s_j) + (s_{j+1} − F_j(s_j))/γ, one model call per step.

    s_{S−1} comes from one classic DDIM inversion step of x0 (one model call), then j = S − 1, …, 1 each
    take one model call: S calls in all.

    Args:
        model_fn: As for :func:`bdia_sample`.
        x0: The clean sample [B, ...]; the work runs in its dtype.
        scheduler: A DDIMScheduler or FlowMatchDDIMScheduler on which ``set_timesteps`` was called (not
            modified).
        gamma: γ ∈ (0, 1]: the recursion divides by γ. γ < 1 amplifies, like γ^−S, whatever part of the
            start the chain does not follow smoothly (module docstring): a latent over 1000 times the RMS of
            x0 (or of 1) is logged as a warning on the ``ddim_sched`` logger.
        callback: Optional ``callback(i, t, x)`` after inverse step i = 0..S−1 with the state reached, at
            timestep t = ``timesteps[S − 1 − i]`` (the last call: s_0 at ``timesteps[0]``).

    Returns:
        :class:`BDIALatents` (s_0, s_1), each of x0's shape and dtype.

    Raises:
        TypeError, ValueError: As :func:`bdia_sample`; gamma must be > 0; a step that cannot be inverted.
    """
    checked = _check_arguments(model_fn, scheduler, callback)
    rate = _check_gamma(gamma, invertible=True)
    check_latent("x0", x0)
    stepping = stepper(checked)
    timesteps = checked.timesteps
    S = len(timesteps)
    # Classic DDIM inversion of the last step: the model read at x0, on timestep t_{S−1}.
    t = timesteps[S - 1]
    landed = step(stepping, model_fn(x0, t), t, x0)
    later, x = x0, x0 + (x0 - landed) * inverse_slope(checked, t)
    if callback is not None:
        callback(0, t, x)
    for j in range(S - 1, 0, -1):
        t = timesteps[j]
        m = model_fn(x, t)
        earlier = step_to_level(stepping, m, j, x, j - 1) + (later - step(stepping, m, t, x)) / rate
        later, x = x, earlier
        if callback is not None:
            callback(S - j, timesteps[j - 1], x)
    _warn_if_blown_up(x, x0, rate, S)
    return BDIALatents(x, later)


def _warn_if_blown_up(latent: torch.Tensor, x0: torch.Tensor, gamma: float, steps: int) -> None:
    """Log a warning when the encoded latent is not finite or GROWTH_WARNING times the RMS of x0 (or of 1)."""
    rms = float(latent.double().pow(2).mean().sqrt())
    scale = max(1.0, float(x0.double().pow(2).mean().sqrt()))
    if not (rms <= GROWTH_WARNING * scale):  # also catches NaN
        logger.warning(
            "bdia_invert: the encoded latent has RMS %.3g (x0: %.3g): the backward recursion amplifies like "
            "gamma^-S = %.3g here (gamma=%g, S=%d); use gamma closer to 1 (1 does not amplify)",
            rms,
            scale,
            gamma**-steps,
            gamma,
            steps,
        )
