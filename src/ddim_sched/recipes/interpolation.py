"""Latent interpolation: slerp between two latents (DDIM paper eq. 67), in at least float32."""

from __future__ import annotations

import torch

from ..common.validation import check_floating_tensor, check_real
from ..core.runtime import compute_dtype


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
    check_floating_tensor("z0", z0)
    check_floating_tensor("z1", z1)
    if z0.dim() == 0 or z1.dim() == 0:
        raise ValueError("z0 and z1 must be vectors [D] or batches [B, ...]; got a 0-d tensor")
    vector = z0.dim() == 1
    if z0.dim() != z1.dim() or (z0.shape != z1.shape if vector else z0.shape[1:] != z1.shape[1:]):
        raise ValueError(f"z0 and z1 must have the same non-batch shape; got {tuple(z0.shape)} and {tuple(z1.shape)}")
    out_dtype = torch.promote_types(z0.dtype, z1.dtype)
    dtype = compute_dtype(z0.dtype, z1.dtype)
    if isinstance(alpha, torch.Tensor):
        if not alpha.is_floating_point():
            raise TypeError(f"alpha must be a float or a floating-point tensor; got dtype {alpha.dtype}")
        if alpha.dim() > 1:
            raise ValueError(f"alpha must be a float, a 0-d tensor or a 1-D tensor; got shape {tuple(alpha.shape)}")
        a = alpha.to(device=z0.device, dtype=dtype)
    else:
        a = torch.tensor(check_real("alpha", alpha), device=z0.device, dtype=dtype)
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
