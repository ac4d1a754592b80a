r"""Noise-level grids: S levels from σ_max down to σ_min, placed by a rule, as float64 numpy arrays.

Pure functions of (σ_min, σ_max, S), shared by the DDIM spacings (:mod:`ddim_sched.tables.spacing`, in
k-diffusion's σ = √((1 − ᾱ)/ᾱ)) and the flow schedules (:mod:`ddim_sched.tables.flow_sigmas`, in the flow
level σ ∈ (0, 1]):

================  ====================================================================  ========================
grid              σ_i, i = 0..S−1, r = i/(S−1) (r = 0 for S = 1)                        source
================  ====================================================================  ========================
karras (ρ = 7)    (σ_max^{1/ρ} + r·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ                        Karras et al. 2022, eq. 5
exponential       exp((1 − r)·log σ_max + r·log σ_min): uniform in log σ, which is       DPM-Solver (Lu et al.
                  uniform in log-SNR, since SNR = 1/σ²                                  2022) ``logSNR``
beta (0.6, 0.6)   σ_min + F⁻¹(1 − r)·(σ_max − σ_min), F the Beta(α, β) CDF             diffusers' ``use_beta_
                                                                                        sigmas`` (Lee et al. 2024)
kl_optimal        tan((1 − r)·atan σ_max + r·atan σ_min)                                Sabour et al. 2024 (AYS)
linear_quadratic  σ_max·(1 − x_i): x linear up to τ over the first half of the steps,    Mochi (Genmo 2024),
                  then quadratic up to 1 (τ = ``threshold_noise`` = 0.025)              ComfyUI
================  ====================================================================  ========================

Every grid starts at σ_max; karras, exponential, beta and kl_optimal end at σ_min, linear_quadratic above 0
(its next level, σ_S, would be 0). The Beta quantile is computed here (continued fraction and Newton's method
in a bisection bracket), so no SciPy is needed.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "beta_quantile",
    "beta_sigmas",
    "exponential_sigmas",
    "karras_sigmas",
    "kl_optimal_sigmas",
    "linear_quadratic_sigmas",
]


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


def _ramp(n: int) -> np.ndarray:
    """r = i/(n − 1) for i = 0..n−1, float64 ([0] for n = 1)."""
    return np.linspace(0.0, 1.0, n)


def kl_optimal_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """n levels from σ_max to σ_min, uniform in atan σ: tan((1 − r)·atan σ_max + r·atan σ_min).

    The schedule Sabour et al. 2024 (Align Your Steps, section 3) derive as KL-optimal for data that is a
    single Gaussian; AUTOMATIC1111's and ComfyUI's ``kl_optimal`` scheduler. σ_max may be +∞ (atan = π/2).
    """
    ramp = _ramp(n)
    return np.tan((1 - ramp) * math.atan(sigma_max) + ramp * math.atan(sigma_min))


def linear_quadratic_sigmas(
    sigma_max: float, n: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> np.ndarray:
    """n levels σ_max·(1 − x_i), i = 0..n−1, of Mochi's linear-quadratic schedule (Genmo 2024; ComfyUI's
    ``linear_quadratic``, written for flow models where σ_max = 1).

    x rises linearly from 0 by τ/L per step for the first L = ``linear_steps`` (default n // 2) steps, then
    quadratically, so that the (n+1)-th level, never returned, is exactly 0 (x_n = 1); τ = ``threshold_noise``.
    For n = 1 the one level is σ_max.

    Raises:
        ValueError: linear_steps outside [1, n − 1] (for n >= 2), or threshold_noise outside (0, 1).
    """
    if not 0.0 < threshold_noise < 1.0:
        raise ValueError(f"threshold_noise must lie in (0, 1); got {threshold_noise!r}")
    if n == 1:
        return np.array([float(sigma_max)])
    L = n // 2 if linear_steps is None else linear_steps
    if not 1 <= L <= n - 1:
        raise ValueError(f"linear_steps must lie in [1, n - 1 = {n - 1}]; got {linear_steps!r}")
    Q = n - L
    i = np.arange(n, dtype=np.float64)
    # The quadratic q·i² + slope·i + c continues the line at i = L and reaches 1 at i = n.
    excess = L - threshold_noise * n
    q = excess / (L * Q * Q)
    slope = threshold_noise / L - 2 * excess / (Q * Q)
    c = q * L * L
    x = np.where(i < L, i * threshold_noise / L, q * i * i + slope * i + c)
    return sigma_max * (1.0 - x)
