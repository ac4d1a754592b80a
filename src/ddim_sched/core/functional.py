r"""The DDIM step on the variance-preserving path, by noise level ᾱ: pure functions over coefficient tables.

:func:`ddim_coefficients` gives every weight of a step from ᾱ_t to ᾱ_prev as one float64 row (or a
table of rows), :func:`ddim_step` applies such a row to a batch. They are
:func:`ddim_sched.core.update.step_coefficients` and the schedulers' fused engine with the levels a = √ᾱ,
b = √(1 − ᾱ); see :mod:`ddim_sched.core.update` for the step written as the paper writes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._fused import STRUCTURAL_ZEROS, WEIGHTS
from .runtime import compute_dtype
from .step import apply_step, check_out
from .thresholding import ClipMode, X0Clip
from .update import StepCoefficients, check_prediction_type, step_coefficients, vp_level

__all__ = ["COEFFICIENTS", "COLUMN", "STRUCTURAL_ZEROS", "ddim_coefficients", "ddim_step"]

# Columns of the coefficient tensor returned by ddim_coefficients (see update.StepCoefficients).
COEFFICIENTS: tuple[str, ...] = WEIGHTS
COLUMN = {name: i for i, name in enumerate(COEFFICIENTS)}


def ddim_coefficients(
    alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float | torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """All step coefficients for the given noise levels, in float64.

    Args:
        alpha_bar_t: ᾱ at the current timesteps, any shape [...].
        alpha_bar_prev: ᾱ at the timesteps stepped to, broadcastable against it.
        eta: η >= 0, a float or a broadcastable tensor.
        prediction_type: ``"epsilon"``, ``"sample"``, ``"v_prediction"`` or ``"flow_prediction"``.

    Returns:
        float64 tensor [..., len(COEFFICIENTS)], columns named by ``COEFFICIENTS``.

    Raises:
        ValueError: An unknown prediction_type.
    """
    a_t, b_t = vp_level(torch.as_tensor(alpha_bar_t, dtype=torch.float64))
    a_s, b_s = vp_level(torch.as_tensor(alpha_bar_prev, dtype=torch.float64, device=a_t.device))
    if isinstance(eta, torch.Tensor):
        eta = eta.to(device=a_t.device, dtype=torch.float64)
    row = step_coefficients(a_t, b_t, a_s, b_s, eta, prediction_type)
    return torch.stack(torch.broadcast_tensors(*row[: len(COEFFICIENTS)]), dim=-1)


def ddim_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    coefficients: torch.Tensor | Sequence[float],
    prediction_type: str,
    clip: ClipMode = "none",
    clip_sample_range: float = 1.0,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    use_clipped_model_output: bool = False,
    noise: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update (eq. 12) from precomputed coefficients (:func:`ddim_sched.core.step.apply_step`:
    differentiable in the tensors and in tensor coefficients).

    Args:
        model_output: m, [B, ...], any floating dtype and layout.
        sample: x_t, same shape.
        coefficients: One row of :func:`ddim_coefficients` for the whole batch, as a [K] tensor or a sequence
            of K floats, or [B, K] rows, one per sample.
        prediction_type: What m is.
        clip: ``"none"``, ``"clip"`` (clamp x̂0 to ±clip_sample_range) or ``"threshold"`` (dynamic).
        clip_sample_range, dynamic_thresholding_ratio, sample_max_value: as in the config.
        use_clipped_model_output: Re-derive ε̂ from the clipped x̂0.
        noise: z, [B, ...], or None for a deterministic step.
        out: Where to write x_prev (the sample's shape and dtype; it may be any input), or None.

    Returns:
        (x_prev, x̂0) of the sample's dtype; x_prev is ``out`` when given.

    Raises:
        ValueError: An unknown clip mode or prediction_type, or ``out`` of another shape or dtype.
    """
    bounds = X0Clip(clip, clip_sample_range, dynamic_thresholding_ratio, sample_max_value)
    check_prediction_type(prediction_type)
    if out is not None:
        check_out(out, sample)
    columns: tuple[float | torch.Tensor, ...]
    if isinstance(coefficients, torch.Tensor):
        columns = coefficients.to(device=sample.device, dtype=compute_dtype(sample.dtype)).unbind(-1)
    else:
        columns = tuple(float(c) for c in coefficients)
    levels = (float("nan"),) * (len(StepCoefficients._fields) - len(columns))
    weights = StepCoefficients(*columns, *levels)
    prev, x0 = apply_step(model_output, sample, weights, prediction_type, bounds, use_clipped_model_output, noise, out)
    return prev, x0  # type: ignore[return-value]  # x̂0 is always computed here
