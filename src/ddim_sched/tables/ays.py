r"""Align Your Steps (Sabour et al. 2024): the published 10-step noise levels, and the paper's log-linear
interpolation to any number of steps.

NVIDIA's release ("How to use AYS", the project page) gives for each model the 11 noise levels
σ_0 > … > σ_10 of a 10-step schedule, in k-diffusion's σ = √((1 − ᾱ)/ᾱ); the sampler visits the first 10
and its last step goes to σ = 0. For another number of steps S it interpolates the 11 levels
log-linearly to S + 1 levels, and again visits all but the last:

    log σ'(u) = piecewise-linear interpolation of log σ_i at u_i = i/10, sampled at u = j/S, j = 0..S

========  =================================================  ==========================================
preset    model (ᾱ table)                                    published 10-step timesteps (diffusers'
                                                             ``AysSchedules``)
========  =================================================  ==========================================
sd15      Stable Diffusion 1.5 (scaled_linear 0.00085–0.012)  999, 850, 736, 645, 545, 455, 343, 233, 124, 24
sdxl      Stable Diffusion XL (the same ᾱ table)             999, 845, 730, 587, 443, 310, 193, 116, 53, 13
svd       Stable Video Diffusion (EDM, σ up to 700)          none: its levels are not those of an ᾱ table
========  =================================================  ==========================================

The SD 1.5 and SD XL levels are exactly σ(t) of their published timesteps on that table (σ_10 = σ(0));
:func:`ddim_sched.tables.spacing.nearest_timesteps` maps them back to those timesteps, and the spacings
``ays_sd15`` / ``ays_sdxl`` of :data:`ddim_sched.tables.spacing.SPACINGS` are these levels for any S.
SD 1.5 and SD XL share one ᾱ table, so a scheduler config cannot tell which preset it wants: the spacing
names say it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["AYS_PRESETS", "AysPreset", "ays_sigmas", "loglinear_interp"]


class AysPreset(NamedTuple):
    """One model's Align Your Steps schedule as published: its 11 noise levels (k-diffusion σ, the 10-step
    schedule and its last level), and the 10 timesteps they are on the model's ᾱ table (None for EDM models)."""

    noise_levels: tuple[float, ...]
    timesteps: tuple[int, ...] | None


# NVIDIA's "How to use AYS" page (also ComfyUI's AlignYourStepsScheduler and diffusers' AysSchedules,
# which rounds the levels to 3 decimals and writes the last one as 0).
AYS_PRESETS: dict[str, AysPreset] = {
    "sd15": AysPreset(
        noise_levels=(
            14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
            0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582,
        ),
        timesteps=(999, 850, 736, 645, 545, 455, 343, 233, 124, 24),
    ),
    "sdxl": AysPreset(
        noise_levels=(
            14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
            0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582,
        ),
        timesteps=(999, 845, 730, 587, 443, 310, 193, 116, 53, 13),
    ),
    "svd": AysPreset(
        noise_levels=(700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
        timesteps=None,
    ),
}  # fmt: skip


def loglinear_interp(levels: np.ndarray | tuple[float, ...], n: int) -> np.ndarray:
    """n levels from a decreasing positive sequence, interpolated linearly in log σ over evenly spaced
    positions (the AYS recipe); the first and last levels are kept. float64.

    Raises:
        ValueError: Fewer than 2 levels, a level <= 0 or not finite, levels not strictly decreasing, or n < 2.
    """
    values = np.asarray(levels, dtype=np.float64)
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"levels must be a 1-D sequence of at least 2 noise levels; got shape {values.shape}")
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        raise ValueError(f"levels must be finite and > 0; got {values.tolist()}")
    if not np.all(np.diff(values) < 0):
        raise ValueError(f"levels must be strictly decreasing; got {values.tolist()}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an int >= 2; got {n!r}")
    known = np.linspace(0.0, 1.0, values.size)
    wanted = np.linspace(0.0, 1.0, int(n))
    # np.interp needs increasing abscissae and reads the ordinates in that order: interpolate the
    # reversed (increasing) log levels and reverse back.
    return np.exp(np.interp(wanted, known, np.log(values[::-1])))[::-1].copy()


def ays_sigmas(model: str, num_inference_steps: int = 10) -> np.ndarray:
    """The Align Your Steps schedule of ``model`` for S steps, as k-diffusion sigmas: S + 1 float64 levels,
    the S visited (noisiest first), then 0, the level the last step lands on.

    At S = 10 these are the published levels; otherwise their log-linear interpolation to S + 1 levels
    (:func:`loglinear_interp`) with the last replaced by 0, as the release prescribes.

    Args:
        model: A key of :data:`AYS_PRESETS`: "sd15", "sdxl" or "svd".
        num_inference_steps: S >= 1.

    Raises:
        ValueError: An unknown model or S < 1.
        TypeError: S is not an int.
    """
    if model not in AYS_PRESETS:
        raise ValueError(f"model must be one of {', '.join(map(repr, AYS_PRESETS))}; got {model!r}")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise TypeError(f"num_inference_steps must be an int; got {num_inference_steps!r}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1; got {num_inference_steps}")
    levels = np.array(AYS_PRESETS[model].noise_levels, dtype=np.float64)
    if num_inference_steps + 1 != levels.size:
        levels = loglinear_interp(levels, int(num_inference_steps) + 1)
    levels[-1] = 0.0
    return levels
