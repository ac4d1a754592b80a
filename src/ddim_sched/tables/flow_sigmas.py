r"""Noise levels of flow-matching schedules as pure functions on float64 numpy arrays.

On the rectified-flow path x_σ = (1 − σ)·x0 + σ·ε the noise level σ runs from 1 (pure noise) to 0 (data).
A schedule is a strictly decreasing array of levels in (0, 1]; the scheduler appends the final σ = 0.
These are the transformations diffusers' ``FlowMatchEulerDiscreteScheduler`` (0.42.1) applies, in its
order (:func:`flow_sigmas`), written from its documented formulas:

====================  ==================================================================================
transformation        formula
====================  ==================================================================================
static shift s        σ ← s·σ / (1 + (s − 1)·σ)                      (SD3: s = 3; SNR divided by s²)
exponential time      σ ← e^μ / (e^μ + (1/σ − 1)^γ)                  (Flux: μ from the image size, γ = 1)
shift (dynamic)
linear time shift     σ ← μ / (μ + (1/σ − 1)^γ)
shift_terminal τ      σ ← 1 − (1 − σ)·(1 − τ)/(1 − σ_last)            (LTX-Video: the last level becomes τ)
karras (ρ = 7)        (σ_max^{1/ρ} + r·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, r = 0..1 (Karras et al. 2022)
exponential           exp(linspace(log σ_max, log σ_min))
beta (α = β = 0.6)    σ_min + F⁻¹(1 − r)·(σ_max − σ_min), F the Beta(0.6, 0.6) CDF (Lee et al. 2024)
kl_optimal            tan((1 − r)·atan σ_max + r·atan σ_min) (Sabour et al. 2024; ComfyUI's ``kl_optimal``)
linear_quadratic      σ_max·(1 − x_i), Mochi's linear-then-quadratic x (Genmo 2024; σ_min is not used)
====================  ==================================================================================

diffusers offers the first three respacings (``use_karras_sigmas``, ...); ``kl_optimal`` and
``linear_quadratic`` are ddim_sched's, with flags of the same form. The DDIM spacings that need an ᾱ
table or σ → ∞ (``logsnr``: log-SNR is infinite at σ = 1; the Align Your Steps presets, made for SD's
table) or that are the flow default already (the timestep-axis ``normal``, ``simple``) are not offered.

The respacings are the σ grids of :mod:`ddim_sched.tables.sigma_grids`, shared with the DDIM spacings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from .sigma_grids import (
    beta_sigmas,
    exponential_sigmas,
    karras_sigmas,
    kl_optimal_sigmas,
    linear_quadratic_sigmas,
)

# Levels as a numpy array or a tensor: the elementwise formulas take either.
Levels = TypeVar("Levels", np.ndarray, torch.Tensor)

__all__ = [
    "SIGMA_SCHEDULES",
    "TIME_SHIFTS",
    "flow_sigmas",
    "shift_sigmas",
    "stretch_to_terminal",
    "time_shift",
]


def shift_sigmas(sigmas: Levels, shift: float) -> Levels:
    """The static shift s·σ / (1 + (s − 1)·σ): the SNR (1 − σ)²/σ² divided by s²; σ = 0 and 1 stay put."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _exponential_shift(mu: float, gamma: float, sigmas: Levels) -> Levels:
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** gamma)


def _linear_shift(mu: float, gamma: float, sigmas: Levels) -> Levels:
    return mu / (mu + (1 / sigmas - 1) ** gamma)


# time_shift_type -> σ ↦ shifted σ for (μ, γ).
TIME_SHIFTS: dict[str, Callable[[float, float, Levels], Levels]] = {
    "exponential": _exponential_shift,
    "linear": _linear_shift,
}


def time_shift(mu: float, gamma: float, sigmas: Levels, kind: str = "exponential") -> Levels:
    """The resolution-dependent shift of ``kind`` (a key of :data:`TIME_SHIFTS`) with μ and exponent γ."""
    return TIME_SHIFTS[kind](mu, gamma, sigmas)


def stretch_to_terminal(sigmas: Levels, terminal: float) -> Levels:
    """Stretch 1 − σ affinely so that the last level becomes ``terminal`` (1 stays 1)."""
    one_minus = 1 - sigmas
    return 1 - one_minus * (1 - terminal) / one_minus[-1]


def _linear_quadratic(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """Mochi's n levels from σ_max (σ_min unused: the schedule ends where its quadratic puts it)."""
    return linear_quadratic_sigmas(sigma_max, n)


# The option that turns each conversion on -> (σ_min, σ_max, n) ↦ n levels: diffusers' three, then ddim_sched's.
SIGMA_SCHEDULES: dict[str, Callable[[float, float, int], np.ndarray]] = {
    "use_karras_sigmas": karras_sigmas,
    "use_exponential_sigmas": exponential_sigmas,
    "use_beta_sigmas": beta_sigmas,
    "use_kl_optimal_sigmas": kl_optimal_sigmas,
    "use_linear_quadratic_sigmas": _linear_quadratic,
}


def flow_sigmas(
    sigmas: np.ndarray,
    *,
    shift: float,
    mu: float | None,
    time_shift_type: str,
    shift_terminal: float | None,
    conversion: str | None,
) -> np.ndarray:
    """diffusers' pipeline of transformations on base levels (float64): the static shift, or the time shift
    with μ when ``mu`` is given; then ``shift_terminal``; then the conversion named by a key of
    :data:`SIGMA_SCHEDULES` (or None) between the resulting first and last levels."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    sigmas = shift_sigmas(sigmas, shift) if mu is None else time_shift(mu, 1.0, sigmas, time_shift_type)
    if shift_terminal:
        sigmas = stretch_to_terminal(sigmas, shift_terminal)
    if conversion is not None:
        sigmas = SIGMA_SCHEDULES[conversion](float(sigmas[-1]), float(sigmas[0]), len(sigmas))
    return np.asarray(sigmas, dtype=np.float64)
