"""Beta schedules: pure float64 factories from a config's numbers to β_1..β_T, and ᾱ transforms.

Every function returns a new float64 ``torch.Tensor`` on the CPU. Notation: α_t = 1 − β_t and
ᾱ_t = ∏_{s<=t} α_s (``alpha_bar``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

DTYPE = torch.float64


def linear(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """β evenly spaced from beta_start to beta_end (DDPM)."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=DTYPE)


def scaled_linear(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """√β evenly spaced from √beta_start to √beta_end, squared (Stable Diffusion)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=DTYPE) ** 2


def _alpha_bar_cosine(t: torch.Tensor) -> torch.Tensor:
    """GLIDE / improved-DDPM cosine ᾱ(t) with offset s = 0.008."""
    return torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _alpha_bar_exp(t: torch.Tensor) -> torch.Tensor:
    """Exponential ᾱ(t) = exp(−12 t)."""
    return torch.exp(-12.0 * t)


def _alpha_bar_laplace(t: torch.Tensor) -> torch.Tensor:
    """diffusers' "laplace" transform (log-SNR from a Laplace quantile)."""
    log_snr = -0.5 * torch.sign(0.5 - t) * torch.log(1 - 2 * (0.5 - t).abs() + 1e-6)
    snr = torch.exp(log_snr)
    return torch.sqrt(snr / (1 + snr))


ALPHA_BAR_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "cosine": _alpha_bar_cosine,
    "exp": _alpha_bar_exp,
    "laplace": _alpha_bar_laplace,
}


def betas_for_alpha_bar(
    num_train_timesteps: int, alpha_transform_type: str = "cosine", max_beta: float = 0.999
) -> torch.Tensor:
    """Discretise a continuous ᾱ(t), t ∈ [0, 1]: β_i = min(1 − ᾱ((i+1)/T) / ᾱ(i/T), max_beta).

    Args:
        num_train_timesteps: T.
        alpha_transform_type: ``"cosine"`` (GLIDE), ``"exp"`` or ``"laplace"``.
        max_beta: Cap on each β, < 1 to keep ᾱ_T > 0.

    Returns:
        float64 tensor of shape [T].

    Raises:
        ValueError: Unknown alpha_transform_type (the message lists the accepted ones).
    """
    if alpha_transform_type not in ALPHA_BAR_TRANSFORMS:
        names = ", ".join(repr(k) for k in ALPHA_BAR_TRANSFORMS)
        raise ValueError(f"alpha_transform_type must be one of {names}; got {alpha_transform_type!r}")
    alpha_bar = ALPHA_BAR_TRANSFORMS[alpha_transform_type]
    steps = torch.arange(num_train_timesteps + 1, dtype=DTYPE) / num_train_timesteps
    levels = alpha_bar(steps)
    return (1 - levels[1:] / levels[:-1]).clamp(max=max_beta)


def squaredcos_cap_v2(num_train_timesteps: int, beta_start: float = 0.0, beta_end: float = 0.0) -> torch.Tensor:
    """The cosine schedule capped at β = 0.999 (beta_start/beta_end are unused)."""
    return betas_for_alpha_bar(num_train_timesteps, "cosine")


def trained(betas: object) -> torch.Tensor:
    """An explicit sequence of betas as a float64 tensor."""
    return torch.as_tensor(betas, dtype=DTYPE).clone()


# name -> factory(num_train_timesteps, beta_start, beta_end); the config's beta_schedule options.
BETA_SCHEDULES: dict[str, Callable[[int, float, float], torch.Tensor]] = {
    "linear": linear,
    "scaled_linear": scaled_linear,
    "squaredcos_cap_v2": squaredcos_cap_v2,
}


def alpha_bar_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = ∏_{s<=t} (1 − β_s), in float64."""
    return torch.cumprod(1.0 - betas.to(DTYPE), dim=0)


def betas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Invert the cumulative product: α_t = ᾱ_t / ᾱ_{t−1} (α_0 = ᾱ_0), β = 1 − α."""
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas to zero terminal SNR (Lin et al. 2023, Algorithm 1), keeping √ᾱ_0.

    s = √ᾱ; s ← (s − s_T) · s_0 / (s_0 − s_T); ᾱ = s². The result has ᾱ_T = 0 exactly (β_T = 1).
    """
    s = alpha_bar_from_betas(betas).sqrt()
    s_0, s_T = s[0].clone(), s[-1].clone()
    s = (s - s_T) * (s_0 / (s_0 - s_T))
    return betas_from_alpha_bar(s**2)


def shift_snr(alpha_bar: torch.Tensor, snr_shift_scale: float) -> torch.Tensor:
    """Divide the SNR ᾱ/(1−ᾱ) by ``snr_shift_scale`` (CogVideoX): ᾱ ← ᾱ / (s + (1 − s)·ᾱ)."""
    s = snr_shift_scale
    return alpha_bar / (s + (1 - s) * alpha_bar)


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: object = None,
    rescale_betas_zero_snr: bool = False,
    snr_shift_scale: float = 1.0,
) -> torch.Tensor:
    """β_1..β_T in float64 for a configuration: schedule (or trained betas), SNR shift, zero-SNR rescale.

    The SNR shift is applied to ᾱ before the zero-SNR rescale, as CogVideoX does.
    """
    if trained_betas is not None:
        betas = trained(trained_betas)
    else:
        betas = BETA_SCHEDULES[beta_schedule](num_train_timesteps, beta_start, beta_end)
    if snr_shift_scale != 1.0:
        betas = betas_from_alpha_bar(shift_snr(alpha_bar_from_betas(betas), snr_shift_scale))
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas
