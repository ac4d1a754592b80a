r"""The DDIM step on the rectified-flow and variance-exploding paths: levels, coefficients, and applying them.

=================  ==========================  ====================================================
path               level (a, b) at noise σ     where
=================  ==========================  ====================================================
rectified flow     (1 − σ, σ)   :func:`flow_level`   SD3, Flux: σ ∈ [0, 1], the model predicts u = ε − x0
variance exploding (1, σ)       :func:`ve_level`     k-diffusion: σ = √((1 − ᾱ)/ᾱ), x_VE = x_VP/√ᾱ
=================  ==========================  ====================================================

:func:`flow_step_coefficients` is :func:`ddim_sched.core.update.step_coefficients` on the flow path with the
noise clamped the way k-diffusion clamps it, σ_step ≤ b_s, so that every η >= 0 is a valid step: η = 0 is
the Euler step x_s = x_t + (σ_s − σ_t)·u, η = 1 the DDPM posterior, and η → ∞ re-noises x̂0 completely,
x_s = (1 − σ_s)·x̂0 + σ_s·z (diffusers' ``stochastic_sampling``, ``renoise=True`` here).
:func:`ve_ancestral_step` gives k-diffusion's (σ_down, σ_up) from the same update.
"""

from __future__ import annotations

import torch

from ..core.update import StepCoefficients, step_coefficients

__all__ = ["Value", "flow_level", "flow_step_coefficients", "ve_ancestral_step", "ve_level"]

# A float or a tensor (mixed freely: a float level with a tensor η, ...).
Value = float | torch.Tensor


def flow_level(sigma: Value) -> tuple[Value, Value]:
    """(a, b) = (1 − σ, σ) of the rectified-flow path at noise level σ."""
    return 1 - sigma, sigma


def ve_level(sigma: Value) -> tuple[Value, Value]:
    """(a, b) = (1, σ) of the variance-exploding path at noise level σ."""
    return 1 + 0 * sigma, sigma


def _minimum(a: Value, b: Value) -> Value:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))
    return min(a, b)


def flow_step_coefficients(
    sigma_t: Value, sigma_s: Value, eta: Value, *, renoise: bool = False, inverted: bool = False
) -> StepCoefficients:
    """One DDIM step on the flow path from noise level σ_t to σ_s with η, for a velocity model output.

    The noise the step adds is min(η·b_s·√(1 − r), b_s) (eq. 16, clamped at b_s as k-diffusion clamps
    σ_up at σ_to; no change for η <= 1). ``renoise`` is the η → ∞ end: x_s = a_s·x̂0 + b_s·z. ``inverted``
    reads the model output as x0 − ε (Mochi's convention) instead of ε − x0. Floats or broadcastable tensors.
    """
    a_t, b_t = flow_level(sigma_t)
    a_s, b_s = flow_level(sigma_s)
    row = step_coefficients(a_t, b_t, a_s, b_s, eta, "flow_prediction")
    if renoise:
        zero = 0.0 * row.eps_x
        row = _with(
            row,
            prev_x=a_s * row.x0_x,
            prev_m=a_s * row.x0_m,
            eps_x=zero,
            eps_m=zero,
            clip_x0=a_s + zero,
            clip_x=zero,
            sigma=b_s + zero,
        )
    else:
        row = _with(row, sigma=_minimum(row.sigma, b_s))
    if inverted:
        row = _with(row, x0_m=-row.x0_m, prev_m=-row.prev_m, eps_m=-row.eps_m)
    return row


def _with(row: StepCoefficients, **changes: Value) -> StepCoefficients:
    """``row`` with some fields replaced (``NamedTuple._replace``, which dynamo in torch 2.6 cannot trace)."""
    return StepCoefficients(*[changes.get(name, row[i]) for i, name in enumerate(StepCoefficients._fields)])


def ve_ancestral_step(sigma_from: Value, sigma_to: Value, eta: Value = 1.0) -> tuple[Value, Value]:
    """(σ_down, σ_up) of the DDIM step with η from σ_from to σ_to on the variance-exploding path, the noise
    clamped at σ_to as in :func:`flow_step_coefficients`: the step is x_to = x̂0 + σ_down·ε̂ + σ_up·z.

    This is k-diffusion's ``get_ancestral_step`` (the tests hold it to that formula), and DDIMScheduler's
    step in x/√ᾱ coordinates: σ_up = σ_DDIM(η)/√ᾱ_to, with σ = √((1 − ᾱ)/ᾱ) (``DDIMScheduler.sigmas``).
    """
    a_t, b_t = ve_level(sigma_from)
    a_s, b_s = ve_level(sigma_to)
    row = step_coefficients(a_t, b_t, a_s, b_s, eta, "epsilon")
    return row.eps_m, _minimum(row.sigma, b_s)  # eps_m, the weight of ε̂: √(σ_to² − σ_up²)
