r"""The DDIM update as pure functions: per-sample coefficients, then one fused linear combination.

Notation (Song, Meng & Ermon 2020; diffusers' names in brackets):

======================  =====================================================================
x_t      [sample]        the current noisy sample at timestep t
m        [model_output]  the model's prediction: ε, x0 or v depending on ``prediction_type``
ᾱ_t      [alpha_prod_t]  cumulative product of (1 − β) up to t (``alpha_bar_t``)
ᾱ_prev                   ᾱ at the timestep the step lands on (``final_alpha_cumprod`` after the last)
x̂0       [pred_original_sample]  the predicted clean sample
ε̂        [pred_epsilon]  the predicted noise
σ_t(η)   [std_dev_t]     η · √((1 − ᾱ_prev)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev)              (eq. 16)
x_prev   [prev_sample]   √ᾱ_prev · x̂0 + √(1 − ᾱ_prev − σ²) · ε̂ + σ · z                 (eq. 12)
======================  =====================================================================

Without clipping, x̂0 and x_prev are both linear in (x_t, m), so the step is two fused linear
combinations whose coefficients are computed once, in float64, for a whole batch (or a whole
schedule) by :func:`ddim_coefficients`. :func:`ddim_step` then reads the two inputs and writes
the two outputs. Dtype rule: the arithmetic runs in float64 for float64 samples and in float32
otherwise (float16/bfloat16 included); outputs have the sample's dtype.
"""

from __future__ import annotations

from typing import Literal

import torch

from .thresholding import dynamic_threshold

# Columns of the coefficient tensor returned by ddim_coefficients.
COEFFICIENTS = (
    "x0_x",  # x̂0 = x0_x · x_t + x0_m · m
    "x0_m",
    "prev_x",  # unclipped: x_prev = prev_x · x_t + prev_m · m + σ z
    "prev_m",
    "dir_x0",  # clipped x̂0, ε̂ from the model: x_prev = dir_x0 · x̂0 + eps_x · x_t + eps_m · m + σ z
    "eps_x",
    "eps_m",
    "clip_x0",  # clipped x̂0, ε̂ re-derived from it: x_prev = clip_x0 · x̂0 + clip_x · x_t + σ z
    "clip_x",
    "sigma",
)
COLUMN = {name: i for i, name in enumerate(COEFFICIENTS)}

# Coefficients that are identically zero for a prediction type (their terms are skipped).
STRUCTURAL_ZEROS = {
    "epsilon": frozenset({"eps_x"}),
    "sample": frozenset({"x0_x"}),
    "v_prediction": frozenset(),
}

ClipMode = Literal["none", "clip", "threshold"]


def ddim_coefficients(
    alpha_bar_t: torch.Tensor,
    alpha_bar_prev: torch.Tensor,
    eta: float | torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """All step coefficients for the given noise levels, in float64.

    Args:
        alpha_bar_t: ᾱ at the current timesteps, any shape [...] (float64 recommended).
        alpha_bar_prev: ᾱ at the timesteps stepped to, same shape.
        eta: η >= 0, a float or a tensor broadcastable to that shape.
        prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.

    Returns:
        float64 tensor [..., len(COEFFICIENTS)], columns named by ``COEFFICIENTS``.
    """
    a_t = alpha_bar_t.to(torch.float64)
    a_prev = alpha_bar_prev.to(torch.float64)
    sqrt_a_t, sqrt_b_t = a_t.sqrt(), (1 - a_t).sqrt()
    sqrt_a_prev = a_prev.sqrt()
    # σ² at η = 1, the DDPM posterior variance (eq. 16); 0 where ᾱ_prev = 0 would divide by zero.
    ratio = torch.where(a_prev > 0, a_t / a_prev.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(a_t))
    variance = ((1 - a_prev) / (1 - a_t) * (1 - ratio)).clamp(min=0)
    if isinstance(eta, torch.Tensor):
        eta = eta.to(device=a_t.device, dtype=torch.float64)
    sigma = eta * variance.sqrt()
    # Coefficient of ε̂ in eq. 12; clamped at 0 where η > 1 makes σ² exceed 1 − ᾱ_prev.
    direction = (1 - a_prev - sigma**2).clamp(min=0).sqrt()

    # x̂0 = A_x·x + A_m·m and ε̂ = E_x·x + E_m·m for each parameterisation.
    one, zero = torch.ones_like(a_t), torch.zeros_like(a_t)
    if prediction_type == "epsilon":
        A_x, A_m, E_x, E_m = 1 / sqrt_a_t, -sqrt_b_t / sqrt_a_t, zero, one
    elif prediction_type == "sample":
        A_x, A_m, E_x, E_m = zero, one, 1 / sqrt_b_t, -sqrt_a_t / sqrt_b_t
    elif prediction_type == "v_prediction":
        A_x, A_m, E_x, E_m = sqrt_a_t, -sqrt_b_t, sqrt_b_t, sqrt_a_t
    else:
        raise ValueError(f"prediction_type must be one of 'epsilon', 'sample', 'v_prediction'; got {prediction_type!r}")

    columns = {
        "x0_x": A_x,
        "x0_m": A_m,
        "prev_x": sqrt_a_prev * A_x + direction * E_x,
        "prev_m": sqrt_a_prev * A_m + direction * E_m,
        "dir_x0": sqrt_a_prev.expand_as(a_t),
        "eps_x": direction * E_x,
        "eps_m": direction * E_m,
        # ε̂ = (x_t − √ᾱ_t·x̂0)/√(1−ᾱ_t) from the clipped x̂0.
        "clip_x0": sqrt_a_prev - direction * sqrt_a_t / sqrt_b_t,
        "clip_x": direction / sqrt_b_t,
        "sigma": sigma * one,
    }
    return torch.stack([torch.broadcast_to(columns[name], a_t.shape) for name in COEFFICIENTS], dim=-1)


def _column(coefficients: torch.Tensor, name: str, ndim: int) -> torch.Tensor:
    """One coefficient column shaped [B or 1, 1, ..., 1] to broadcast over a [B, ...] tensor."""
    column = coefficients[..., COLUMN[name]]
    return column.reshape(column.shape + (1,) * (ndim - column.dim()) if column.dim() else (1,) * ndim)


def _combine(terms: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Σ cᵢ·tᵢ in the coefficients' dtype: one multiply, then fused multiply-adds in place."""
    (c0, t0), *rest = terms
    out = torch.mul(t0, c0)
    for c, t in rest:
        out.addcmul_(t, c)
    return out


def ddim_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    coefficients: torch.Tensor,
    prediction_type: str,
    clip: ClipMode = "none",
    clip_sample_range: float = 1.0,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    use_clipped_model_output: bool = False,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update (eq. 12) from precomputed coefficients.

    Args:
        model_output: m, [B, ...], any floating dtype.
        sample: x_t, same shape.
        coefficients: [K] (one timestep for the batch) or [B, K] (one row per sample), from
            :func:`ddim_coefficients`, already cast to the compute dtype and on the sample's device.
        prediction_type: What m is; selects which terms are structurally zero.
        clip: ``"none"``, ``"clip"`` (clamp x̂0 to ±clip_sample_range) or ``"threshold"`` (dynamic).
        clip_sample_range, dynamic_thresholding_ratio, sample_max_value: as in the config.
        use_clipped_model_output: Re-derive ε̂ from the clipped x̂0.
        noise: z, [B, ...], or None for a deterministic step (σ must then be 0 or ignored).

    Returns:
        (x_prev, x̂0), both of the sample's dtype.
    """
    ndim = sample.dim()
    zeros = STRUCTURAL_ZEROS[prediction_type]

    def terms(pairs: list[tuple[str, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(_column(coefficients, name, ndim), t) for name, t in pairs if name not in zeros]

    x0 = _combine(terms([("x0_x", sample), ("x0_m", model_output)]))
    if clip == "none":
        pairs = [("prev_x", sample), ("prev_m", model_output)]
    else:
        if clip == "clip":
            x0.clamp_(-clip_sample_range, clip_sample_range)
        else:
            x0 = dynamic_threshold(x0, dynamic_thresholding_ratio, sample_max_value)
        if use_clipped_model_output:
            pairs = [("clip_x0", x0), ("clip_x", sample)]
        else:
            pairs = [("dir_x0", x0), ("eps_x", sample), ("eps_m", model_output)]
    if noise is not None:
        pairs.append(("sigma", noise))
    prev = _combine(terms(pairs))
    return prev.to(sample.dtype), x0.to(sample.dtype)
