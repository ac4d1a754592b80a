r"""Training-side recipes: SNR, min-SNR-γ loss weights for every prediction target, and the timestep densities
Stable Diffusion 3 trains flow models with. Pure functions of tensors; no model, no optimiser.

Min-SNR-γ (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy") weights the
loss on x0 by min(SNR_t, γ), γ = 5. A model trained on another target m has x0 − x̂0 = c_t·(m − m̂), so the
same weighting on the m-loss is min(SNR, γ)·c_t²:

====================  =========================  ===========================================  =============
target                c_t² (x̂0 per unit of m)    weight                                       SNR → 0 / ∞
====================  =========================  ===========================================  =============
epsilon               1/SNR                      min(SNR, γ)/SNR = min(1, γ/SNR)               1 / 0
sample (x0)           1                          min(SNR, γ)                                   0 / γ
v_prediction          1/(SNR + 1)                min(SNR, γ)/(SNR + 1)                         0 / 0
flow_prediction       σ² = 1/(1 + √SNR)²         min(SNR, γ)/(1 + √SNR)²                       0 / 0
====================  =========================  ===========================================  =============

(flow: u = ε − x0 on x_σ = (1 − σ)·x0 + σ·ε, SNR = ((1 − σ)/σ)², x0 − x̂0 = σ·(û − u).) Each is computed in
a form without 0/0 or ∞/∞, so zero terminal SNR (SNR = 0 at the last timestep) gives the limit, not NaN.

SD3's timestep densities (Esser et al. 2024, "Scaling Rectified Flow Transformers", section 3.1) on
t ∈ (0, 1), with diffusers' names (``training_utils.compute_density_for_timestep_sampling``):

==============  =================================================================  ====================
scheme          sample                                                             density π(t)
==============  =================================================================  ====================
logit_normal    t = sigmoid(n), n ~ N(m, s²)                                       N(logit t; m, s²)/(t(1 − t))
mode            t = 1 − u − s·(cos²(πu/2) − 1 + u), u ~ U(0, 1)                    1/|f'(f⁻¹(t))|
cosmap          t = 1 − 1/(tan(πu/2) + 1), u ~ U(0, 1)                             2/(π(1 − 2t + 2t²))
uniform         t ~ U(0, 1)                                                        1
==============  =================================================================  ====================
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .common.validation import check_int, check_real

__all__ = [
    "MIN_SNR_TARGETS",
    "TIMESTEP_DENSITIES",
    "flow_snr",
    "min_snr_weights",
    "snr",
    "snr_at",
    "timestep_density",
    "sample_timesteps",
    "sd3_loss_weights",
]

MIN_SNR_TARGETS: tuple[str, ...] = ("epsilon", "sample", "v_prediction", "flow_prediction")


def _float64(values: Any, name: str) -> torch.Tensor:
    """A float64 tensor of real values (a number, sequence or tensor), on the tensor's device."""
    tensor = values if isinstance(values, torch.Tensor) else torch.as_tensor(values)
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers; got dtype {tensor.dtype}")
    return tensor.to(torch.float64)


def snr(alpha_bar: Any) -> torch.Tensor:
    """SNR = ᾱ/(1 − ᾱ), elementwise in float64: 0 at ᾱ = 0 (zero terminal SNR), +∞ at ᾱ = 1.

    Raises:
        ValueError: A value outside [0, 1].
    """
    table = _float64(alpha_bar, "alpha_bar")
    if bool(((table < 0) | (table > 1) | table.isnan()).any()):
        raise ValueError("alpha_bar values must lie in [0, 1]")
    return table / (1 - table)


def snr_at(scheduler: Any, timesteps: Any) -> torch.Tensor:
    """SNR_t = ᾱ_t/(1 − ᾱ_t) of integer ``timesteps`` ([B] or any shape), from a ddim_sched scheduler's
    float64 ``alpha_bar`` (or any scheduler's ``alphas_cumprod``, or a 1-D ᾱ table), on the timesteps' device,
    float64. diffusers' ``training_utils.compute_snr`` is the float32 version of this.

    Raises:
        TypeError: No ᾱ table, or non-integer timesteps.
        IndexError: A timestep outside the table.
    """
    table: Any = scheduler
    if not isinstance(table, torch.Tensor):
        table = getattr(scheduler, "alpha_bar", None)
        if not isinstance(table, torch.Tensor):
            table = getattr(scheduler, "alphas_cumprod", None)
        if not isinstance(table, torch.Tensor):
            raise TypeError(f"scheduler must have an alpha_bar or alphas_cumprod table; got {type(scheduler).__name__}")
    t = timesteps if isinstance(timesteps, torch.Tensor) else torch.as_tensor(timesteps)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"timesteps must be integers; got dtype {t.dtype}")
    T = table.numel()
    if not t.is_cuda and bool(((t < 0) | (t >= T)).any()):
        raise IndexError(f"timesteps must lie in [0, {T}); got {t.tolist()}")
    return snr(table.detach().to(t.device))[t.long()]


def flow_snr(sigmas: Any) -> torch.Tensor:
    """SNR = ((1 − σ)/σ)² of flow noise levels σ ∈ [0, 1], float64 (+∞ at σ = 0, 0 at σ = 1).

    Raises:
        ValueError: A level outside [0, 1].
    """
    sigma = _float64(sigmas, "sigmas")
    if bool(((sigma < 0) | (sigma > 1) | sigma.isnan()).any()):
        raise ValueError("sigmas must lie in [0, 1]")
    return ((1 - sigma) / sigma) ** 2


def min_snr_weights(snr_values: Any, gamma: float = 5.0, prediction_type: str = "epsilon") -> torch.Tensor:
    """Min-SNR-γ loss weights for a model trained on ``prediction_type`` (module table), float64.

    Args:
        snr_values: SNR >= 0 per sample (:func:`snr_at`, :func:`flow_snr`); +∞ allowed.
        gamma: γ > 0 (the paper's 5).
        prediction_type: "epsilon", "sample", "v_prediction" or "flow_prediction" (a velocity u = ε − x0).

    Returns:
        The weights, float64, SNR's shape: finite for every SNR in [0, ∞], with the limits at the ends.

    Raises:
        ValueError: An unknown prediction_type, γ <= 0, or a negative or NaN SNR.
    """
    g = check_real("gamma", gamma, 0.0, strict=True)
    if prediction_type not in MIN_SNR_TARGETS:
        accepted = ", ".join(map(repr, MIN_SNR_TARGETS))
        raise ValueError(f"prediction_type must be one of {accepted}; got {prediction_type!r}")
    s = _float64(snr_values, "snr_values")
    if bool(((s < 0) | s.isnan()).any()):
        raise ValueError("snr_values must be >= 0 (and not NaN)")
    clipped = s.clamp(max=g)  # min(SNR, γ), finite
    if prediction_type == "epsilon":
        return torch.where(s > g, g / s, torch.ones_like(s))  # min(1, γ/SNR): 1 below γ, → 0 as SNR → ∞
    if prediction_type == "sample":
        return clipped
    if prediction_type == "v_prediction":
        return clipped / (s + 1)  # ∞ SNR: γ/∞ = 0
    root = s.sqrt()
    return clipped / (1 + root) ** 2


# ------------------------------------------------------------------ SD3's timestep densities


def _mode_map(u: torch.Tensor, scale: float) -> torch.Tensor:
    """f(u) = 1 − u − s·(cos²(πu/2) − 1 + u)."""
    return 1 - u - scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)


def _check_mode_scale(scale: float) -> float:
    s = check_real("mode_scale", scale)
    if not -1.0 <= s <= 2.0 / (math.pi - 2.0):
        raise ValueError(
            f"mode_scale must lie in [-1, 2/(pi - 2) = {2 / (math.pi - 2):.6f}] (f monotone); got {scale!r}"
        )
    return s


def sample_timesteps(
    scheme: str,
    batch_size: int,
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Draw ``batch_size`` flow training times t ∈ (0, 1) by SD3's scheme (module table), float32.

    Draws on ``device`` (``generator`` must live there) the same random numbers as diffusers'
    ``compute_density_for_timestep_sampling`` ("logit_normal": ``torch.normal``; the others ``torch.rand``), so
    "logit_normal", "mode" and "uniform" give its values. diffusers' "cosmap" samples uniformly and leaves the
    cosmap density to the loss weight (:func:`sd3_loss_weights`); here "cosmap" samples it (the SD3 paper's
    f(u) = 1 − 1/(tan(πu/2) + 1)). The SD3 paper's settings: logit-normal (m, s) = (0, 1); mode_scale 1.29 is
    diffusers' training-script default.

    Raises:
        ValueError: An unknown scheme, batch_size < 0, logit_std <= 0, mode_scale outside
            [−1, 2/(π − 2)] (where f is not monotone).
    """
    n = check_int("batch_size", batch_size, 0)
    if scheme == "logit_normal":
        mean = check_real("logit_mean", logit_mean)
        std = check_real("logit_std", logit_std, 0.0, strict=True)
        return torch.sigmoid(torch.normal(mean=mean, std=std, size=(n,), device=device, generator=generator))
    if scheme in ("mode", "cosmap", "uniform"):
        scale = _check_mode_scale(mode_scale) if scheme == "mode" else 0.0
        u = torch.rand(size=(n,), device=device, generator=generator)
        if scheme == "mode":
            return _mode_map(u, scale)
        if scheme == "cosmap":
            return 1 - 1 / (torch.tan(math.pi * u / 2) + 1)
        return u
    raise ValueError(f"scheme must be one of {', '.join(map(repr, TIMESTEP_DENSITIES))}; got {scheme!r}")


def timestep_density(
    scheme: str, t: Any, *, logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29
) -> torch.Tensor:
    """π(t), the probability density on (0, 1) that :func:`sample_timesteps` draws from, float64.

    Raises:
        ValueError: An unknown scheme, t outside [0, 1], or bad parameters (as :func:`sample_timesteps`).
    """
    x = _float64(t, "t")
    if bool(((x < 0) | (x > 1) | x.isnan()).any()):
        raise ValueError("t must lie in [0, 1]")
    if scheme == "uniform":
        return torch.ones_like(x)
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * x + 2 * x * x))
    if scheme == "logit_normal":
        mean = check_real("logit_mean", logit_mean)
        std = check_real("logit_std", logit_std, 0.0, strict=True)
        inner = (x > 0) & (x < 1)
        safe = torch.where(inner, x, torch.full_like(x, 0.5))
        logit = torch.log(safe) - torch.log1p(-safe)
        value = torch.exp(-0.5 * ((logit - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi) * safe * (1 - safe))
        return torch.where(inner, value, torch.zeros_like(x))  # the density → 0 at both ends
    if scheme == "mode":
        scale = _check_mode_scale(mode_scale)
        # f decreases from f(0) = 1 to f(1) = 0: invert by bisection, then π(t) = 1/|f'(u)|.
        lo, hi = torch.zeros_like(x), torch.ones_like(x)
        for _ in range(60):
            mid = (lo + hi) / 2
            above = _mode_map(mid, scale) > x  # still left of f⁻¹(t)
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        u = (lo + hi) / 2
        derivative = -1 - scale + scale * (math.pi / 2) * torch.sin(math.pi * u)
        return 1 / derivative.abs()
    raise ValueError(f"scheme must be one of {', '.join(map(repr, TIMESTEP_DENSITIES))}; got {scheme!r}")


TIMESTEP_DENSITIES: tuple[str, ...] = ("logit_normal", "mode", "cosmap", "uniform")


def sd3_loss_weights(scheme: str | None, sigmas: Any) -> torch.Tensor:
    """diffusers' ``compute_loss_weighting_for_sd3``, float64: "sigma_sqrt" → σ⁻², "cosmap" → the cosmap
    density 2/(π(1 − 2σ + 2σ²)) as a weight (sampling t uniformly and weighting by π equals sampling from π),
    anything else (None, "logit_normal", "mode", "none") → 1.

    Raises:
        ValueError: A level outside [0, 1].
    """
    sigma = _float64(sigmas, "sigmas")
    if bool(((sigma < 0) | (sigma > 1) | sigma.isnan()).any()):
        raise ValueError("sigmas must lie in [0, 1]")
    if scheme == "sigma_sqrt":
        return sigma**-2.0
    if scheme == "cosmap":
        return timestep_density("cosmap", sigma)
    return torch.ones_like(sigma)
