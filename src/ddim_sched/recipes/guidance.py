"""Classifier-free guidance helpers for the sampling loop: guidance rescale (Lin et al. 2023).

Pure functions of tensors. Statistics run in float32 for half-precision inputs (float64 for float64) and
results come back in the inputs' dtype.
"""

from __future__ import annotations

import torch

from ..common.validation import check_floating_tensor, check_real
from ..core.runtime import compute_dtype


def rescale_noise_cfg(
    noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0
) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, eqs. 13–16): pull the guided prediction's scale back to the
    conditional one's, to undo the over-exposure strong classifier-free guidance causes.

    Per sample, with std over all non-batch dimensions (unbiased, as diffusers computes it)::

        x_rescaled = x_cfg · std(x_pos) / std(x_cfg)
        x_final    = φ · x_rescaled + (1 − φ) · x_cfg

    Equal to diffusers' ``rescale_noise_cfg``. The paper recommends φ = 0.7 with guidance w = 7.5.

    Args:
        noise_cfg: x_cfg = x_neg + w·(x_pos − x_neg), the guided prediction, [B, ...].
        noise_pred_text: x_pos, the conditional prediction, same shape.
        guidance_rescale: φ in [0, 1]; 0 returns noise_cfg's values unchanged.

    Returns:
        x_final, [B, ...], in noise_cfg's dtype. Where std(x_cfg) = 0 (a constant sample) that
        sample is returned unscaled rather than as NaN.

    Raises:
        TypeError: Non-tensor or non-floating inputs, a non-real guidance_rescale.
        ValueError: Shapes differ, no batch dimension, or guidance_rescale outside [0, 1].
    """
    check_floating_tensor("noise_cfg", noise_cfg)
    check_floating_tensor("noise_pred_text", noise_pred_text)
    phi = check_real("guidance_rescale", guidance_rescale)
    if not 0.0 <= phi <= 1.0:
        raise ValueError(f"guidance_rescale must lie in [0, 1]; got {guidance_rescale!r}")
    if noise_cfg.shape != noise_pred_text.shape:
        raise ValueError(
            f"noise_cfg and noise_pred_text must have the same shape; got {tuple(noise_cfg.shape)} "
            f"and {tuple(noise_pred_text.shape)}"
        )
    if noise_cfg.dim() < 2:
        raise ValueError(
            f"noise_cfg must be [B, ...] with at least one non-batch dimension; got shape {tuple(noise_cfg.shape)}"
        )
    dtype = compute_dtype(noise_cfg.dtype, noise_pred_text.dtype)
    cfg, text = noise_cfg.to(dtype), noise_pred_text.to(dtype)
    dims = tuple(range(1, cfg.dim()))
    std_text = text.std(dim=dims, keepdim=True)
    std_cfg = cfg.std(dim=dims, keepdim=True)
    ratio = torch.where(std_cfg > 0, std_text / torch.where(std_cfg > 0, std_cfg, 1.0), 1.0)
    # φ·x·r + (1 − φ)·x = x·(φ·r + 1 − φ): eq. 16 with one multiply per element.
    return (cfg * (phi * ratio + (1.0 - phi))).to(noise_cfg.dtype)
