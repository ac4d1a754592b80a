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
====================  ==================================================================================

The Beta quantile is computed here (continued fraction and bisection), so no SciPy is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

# Levels as a numpy array or a tensor: the elementwise formulas take either.
Levels = TypeVar("Levels", np.ndarray, torch.Tensor)

__all__ = [
    "SIGMA_SCHEDULES",
    "TIME_SHIFTS",
    "beta_quantile",
    "beta_sigmas",
    "exponential_sigmas",
    "flow_sigmas",
    "karras_sigmas",
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


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """n levels from σ_max to σ_min, uniform in σ^(1/ρ) (Karras et al. 2022, eq. 5)."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """n levels from σ_max to σ_min, uniform in log σ."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def _beta_continued_fraction(x: np.ndarray, a: float, b: float, terms: int = 300) -> np.ndarray:
    """The continued fraction of the regularised incomplete beta function (modified Lentz), elementwise."""
    tiny = 1e-300
    c = np.ones_like(x)
    d = 1 - (a + b) * x / (a + 1)
    d = 1 / np.where(np.abs(d) < tiny, tiny, d)
    h = d.copy()
    for m in range(1, terms + 1):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1 + numerator / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            h = h * d * c
        if np.all(np.abs(d * c - 1) < 1e-16):
            break
    return h


def _beta_cdf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """I_x(a, b), the Beta(a, b) CDF, for x in [0, 1]."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    out = np.where(x >= 1, 1.0, 0.0)
    inner = (x > 0) & (x < 1)
    # The fraction converges fast below (a + 1)/(a + b + 2); above, I_x(a, b) = 1 − I_{1−x}(b, a).
    direct = inner & (x < (a + 1) / (a + b + 2))
    mirrored = inner & ~direct
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    if direct.any():
        v = x[direct]
        front = np.exp(log_norm + a * np.log(v) + b * np.log1p(-v))
        out[direct] = front * _beta_continued_fraction(v, a, b) / a
    if mirrored.any():
        v = 1 - x[mirrored]
        front = np.exp(log_norm + b * np.log(v) + a * np.log1p(-v))
        out[mirrored] = 1 - front * _beta_continued_fraction(v, b, a) / b
    return out


def beta_quantile(q: np.ndarray, a: float, b: float) -> np.ndarray:
    """F⁻¹(q) of Beta(a, b) for q in [0, 1], to about 1e-15: Newton's method on the CDF from the tails' power
    laws, kept inside a bisection bracket (a step that would leave the bracket bisects it instead)."""
    q = np.asarray(q, dtype=np.float64)
    lo, hi = np.zeros_like(q), np.ones_like(q)
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    # Start from the tails' power laws, F(x) ≈ x^a / (a·B) and 1 − F(x) ≈ (1 − x)^b / (b·B).
    inner = np.clip(q, 1e-300, 1 - 1e-16)
    lower = np.exp((np.log(a * inner) - log_norm) / a)
    upper = 1 - np.exp((np.log(b * (1 - inner)) - log_norm) / b)
    x = np.clip(np.where(inner < _beta_cdf(np.array([0.5]), a, b)[0], lower, upper), 1e-300, 1 - 1e-16)
    done = (q <= 0) | (q >= 1)
    for _ in range(100):
        cdf = _beta_cdf(x, a, b)
        below = cdf < q
        lo, hi = np.where(below, x, lo), np.where(below, hi, x)
        with np.errstate(divide="ignore", over="ignore"):
            density = np.exp(log_norm + (a - 1) * np.log(x) + (b - 1) * np.log1p(-x))
        newton = x - (cdf - q) / density
        step = np.where((newton >= lo) & (newton <= hi), newton, (lo + hi) / 2)
        # The CDF itself is accurate to a few 1e-15: an element is done once a step moves it by less than that.
        done |= (np.abs(step - x) <= 1e-14) | (hi - lo <= 1e-14)
        x = np.where(done, x, step)
        if done.all():
            break
    return np.where(q <= 0, 0.0, np.where(q >= 1, 1.0, x))


def beta_sigmas(sigma_min: float, sigma_max: float, n: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """n levels from σ_max to σ_min at the Beta(α, β) quantiles of 1 − linspace(0, 1, n) (Lee et al. 2024)."""
    quantiles = beta_quantile(1 - np.linspace(0, 1, n), alpha, beta)
    return sigma_min + quantiles * (sigma_max - sigma_min)


# The option that turns each conversion on -> (σ_min, σ_max, n) ↦ n levels.
SIGMA_SCHEDULES: dict[str, Callable[[float, float, int], np.ndarray]] = {
    "use_karras_sigmas": karras_sigmas,
    "use_exponential_sigmas": exponential_sigmas,
    "use_beta_sigmas": beta_sigmas,
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
