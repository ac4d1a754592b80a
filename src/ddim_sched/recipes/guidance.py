"""Helpers around the sampling loop: guidance rescale (Lin et al. 2023) and latent slerp (DDIM paper eq. 67).

Both are pure functions of tensors. Statistics run in float32 for half-precision inputs (float64 for
float64) and results come back in the inputs' dtype.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, float32 otherwise (half precision included)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        got = getattr(value, "dtype", type(value).__name__)
        raise TypeError(f"{name} must be a floating-point torch.Tensor; got {got}")
    return value


def _real(name: str, value: object) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value!r}")
    return float(value)


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
    _check_tensor("noise_cfg", noise_cfg)
    _check_tensor("noise_pred_text", noise_pred_text)
    phi = _real("guidance_rescale", guidance_rescale)
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
    dtype = _compute_dtype(noise_cfg, noise_pred_text)
    cfg, text = noise_cfg.to(dtype), noise_pred_text.to(dtype)
    dims = tuple(range(1, cfg.dim()))
    std_text = text.std(dim=dims, keepdim=True)
    std_cfg = cfg.std(dim=dims, keepdim=True)
    ratio = torch.where(std_cfg > 0, std_text / torch.where(std_cfg > 0, std_cfg, 1.0), 1.0)
    # φ·x·r + (1 − φ)·x = x·(φ·r + 1 − φ): eq. 16 with one multiply per element.
    return (cfg * (phi * ratio + (1.0 - phi))).to(noise_cfg.dtype)


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation of latents (DDIM paper eq. 67)::

        θ = arccos(⟨z0, z1⟩ / (‖z0‖‖z1‖)),   z(α) = sin((1−α)θ)/sin θ · z0 + sin(αθ)/sin θ · z1

    A 1-D input is one vector; an input [B, ...] is B vectors, each made of all its non-batch
    elements (a whole latent per sample, as in the paper). θ is computed as
    2·atan2(‖ẑ0 − ẑ1‖, ‖ẑ0 + ẑ1‖) on the unit vectors, accurate at every angle. Where sin θ is
    below the compute dtype's epsilon (nearly parallel inputs, where slerp and lerp agree to
    O(θ²), or exactly opposite ones, where the great circle is not unique) the result is the
    linear interpolation (1−α)·z0 + α·z1: never NaN.

    Args:
        z0, z1: Floating tensors, [D] or [B, ...] with the same non-batch shape; batch sizes broadcast.
        alpha: A float, or a floating tensor of shape [] or [K], broadcast against the batch
            dimension (K points along one path when B = 1, or one α per sample when K = B). Values
            outside [0, 1] extrapolate along the great circle.

    Returns:
        z(α) with the broadcast shape, in the promoted dtype of z0 and z1 (computed in at least float32).

    Raises:
        TypeError: Non-tensor or non-floating inputs, a non-real alpha.
        ValueError: Mismatched non-batch shapes, a 0-d input, a non-finite float alpha, or an alpha
            tensor that is not 0-d/1-D.
    """
    _check_tensor("z0", z0)
    _check_tensor("z1", z1)
    if z0.dim() == 0 or z1.dim() == 0:
        raise ValueError("z0 and z1 must be vectors [D] or batches [B, ...]; got a 0-d tensor")
    vector = z0.dim() == 1
    if z0.dim() != z1.dim() or (z0.shape != z1.shape if vector else z0.shape[1:] != z1.shape[1:]):
        raise ValueError(f"z0 and z1 must have the same non-batch shape; got {tuple(z0.shape)} and {tuple(z1.shape)}")
    out_dtype = torch.promote_types(z0.dtype, z1.dtype)
    dtype = _compute_dtype(z0, z1)
    if isinstance(alpha, torch.Tensor):
        if not alpha.is_floating_point():
            raise TypeError(f"alpha must be a float or a floating-point tensor; got dtype {alpha.dtype}")
        if alpha.dim() > 1:
            raise ValueError(f"alpha must be a float, a 0-d tensor or a 1-D tensor; got shape {tuple(alpha.shape)}")
        a = alpha.to(device=z0.device, dtype=dtype)
    else:
        a = torch.tensor(_real("alpha", alpha), device=z0.device, dtype=dtype)
    x0, x1 = z0.to(dtype), z1.to(dtype)
    vector = z0.dim() == 1
    dims = (-1,) if vector else tuple(range(1, x0.dim()))
    # α as a column against the leading (batch) dimension.
    a = a.reshape(a.shape + (1,) * (1 if vector else x0.dim() - 1)) if a.dim() else a

    tiny = torch.finfo(dtype).tiny
    u0 = x0 / torch.linalg.vector_norm(x0, dim=dims, keepdim=True).clamp(min=tiny)
    u1 = x1 / torch.linalg.vector_norm(x1, dim=dims, keepdim=True).clamp(min=tiny)
    theta = 2 * torch.atan2(
        torch.linalg.vector_norm(u0 - u1, dim=dims, keepdim=True),
        torch.linalg.vector_norm(u0 + u1, dim=dims, keepdim=True),
    )
    sin_theta = torch.sin(theta)
    degenerate = sin_theta < torch.finfo(dtype).eps
    safe_sin = torch.where(degenerate, torch.ones_like(sin_theta), sin_theta)
    w0 = torch.where(degenerate, 1 - a, torch.sin((1 - a) * theta) / safe_sin)
    w1 = torch.where(degenerate, a, torch.sin(a * theta) / safe_sin)
    return (w0 * x0 + w1 * x1).to(out_dtype)
