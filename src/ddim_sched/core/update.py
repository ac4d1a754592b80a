r"""The DDIM update (Song, Meng & Ermon 2020, eqs. 9, 12 and 16), written as the paper writes it, on any
Gaussian noise path.

A noise path gives each noise level a data scale ``a`` and a noise scale ``b``: x_t = a_t·x0 + b_t·ε
(α_t and σ_t in much of the literature; here ``a, b`` so that σ keeps its eq. 16 meaning).

==================  ====================================================================================
path                a, b at level t
==================  ====================================================================================
variance preserving a = √ᾱ_t, b = √(1 − ᾱ_t)   (DDPM/DDIM; ᾱ = alpha_bar, diffusers' ``alphas_cumprod``)
variance exploding  a = 1, b = σ_t              (k-diffusion's sigmas; DDIM η = 0 is Euler there)
rectified flow      a = 1 − t, b = t            (SD3, Flux)
==================  ====================================================================================

One step goes from level t to level s (s less noisy when sampling). With m the model's output:

======================  ================================================================================
x̂0, ε̂   (eq. 9)         the model output read as a prediction of x0 and of ε (``prediction_type``)
r                        SNR_t / SNR_s = (a_t·b_s)² / (a_s·b_t)², SNR = a²/b²; in [0, 1] when s is less
                         noisy; taken as 1 otherwise (an inversion step), where σ is 0
σ_t(η)  (eq. 16)         η · b_s · √(1 − r)   (VP: η·√((1 − ᾱ_s)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_s); η = 1 is
                         DDPM's posterior standard deviation, η = 0 is DDIM)
x_s     (eq. 12)         a_s·x̂0 + √(b_s² − σ²)·ε̂ + σ·z,   with √(b_s² − σ²) = b_s·√((1 − η²)(1 − r) + r)
======================  ================================================================================

:func:`ddim_update` is that step, term by term. Without clipping x̂0 and x_s are linear in (x_t, m), so
:func:`step_coefficients` also states the step as linear-combination weights; the schedulers apply them
with a fused engine (``ddim_sched.core._fused``) that the tests check against :func:`ddim_update`.

The coefficient functions take Python floats or tensors alike (the schedulers use floats on the host
and float64 tensors on a device), and never divide by zero: at the ends of the noise range (a = 0 at zero
terminal SNR, b = 0 for a clean sample) they give the limits of the formulas.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, Union, get_args, overload

import torch

from .thresholding import NO_CLIP, X0Clip

__all__ = [
    "PREDICTION_TYPES",
    "VP_PREDICTION_TYPES",
    "PredictionType",
    "check_prediction_type",
    "StepCoefficients",
    "ddim_direction",
    "ddim_sigma",
    "ddim_update",
    "eps_from_x0",
    "predict_x0_eps",
    "prediction_weights",
    "snr_ratio",
    "step_coefficients",
    "vp_level",
]

# What a model on the variance-preserving path may predict: ε, x0, or v = a·ε − b·x0 (Salimans & Ho 2022).
PredictionType = Literal["epsilon", "sample", "v_prediction"]
VP_PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)
# ... and on the flow path, the velocity u = ε − x0.
PREDICTION_TYPES: tuple[str, ...] = (*VP_PREDICTION_TYPES, "flow_prediction")

# A number: a Python float, or a tensor broadcastable against the others.
Number = Union[float, torch.Tensor]  # noqa: UP007 (a runtime alias, for Python 3.10's annotations too)


def _is_tensor(*values: object) -> bool:
    return any(isinstance(v, torch.Tensor) for v in values)


def _sqrt(value: Number) -> Number:
    """√max(value, 0): the square root of a quantity that is >= 0 up to rounding."""
    if isinstance(value, torch.Tensor):
        return value.clamp(min=0).sqrt()
    return math.sqrt(value) if value > 0 else 0.0


def _divide(numerator: Number, denominator: Number) -> Number:
    """numerator / denominator with IEEE semantics for floats too (x/0 = ±inf, 0/0 = nan), never an error."""
    if _is_tensor(numerator, denominator) or denominator != 0:
        return numerator / denominator
    return math.copysign(math.inf, numerator) if numerator != 0 else math.nan


@overload
def vp_level(alpha_bar: float) -> tuple[float, float]: ...


@overload
def vp_level(alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def vp_level(alpha_bar: Number) -> tuple[Number, Number]:
    """(a, b) = (√ᾱ, √(1 − ᾱ)) of the variance-preserving path at cumulative signal level ᾱ."""
    return _sqrt(alpha_bar), _sqrt(1 - alpha_bar)


def prediction_weights(a: Number, b: Number, prediction_type: str) -> tuple[Number, Number, Number, Number]:
    """Eq. 9 as weights: x̂0 = w[0]·x_t + w[1]·m and ε̂ = w[2]·x_t + w[3]·m for a model output m.

    epsilon: x̂0 = (x − b·m)/a, ε̂ = m.  sample: x̂0 = m, ε̂ = (x − a·m)/b.  v_prediction (v = a·ε − b·x0):
    x̂0 = (a·x − b·v)/n, ε̂ = (b·x + a·v)/n with n = a² + b² (1 on the VP path).  flow_prediction
    (u = ε − x0): x̂0 = (x − b·u)/(a + b), ε̂ = (x + a·u)/(a + b) (a + b = 1 on the flow path).

    Raises:
        ValueError: An unknown prediction_type.
    """
    if prediction_type == "epsilon":
        return _divide(1.0, a), _divide(-b, a), 0.0 * a, 1.0 + 0.0 * a
    if prediction_type == "sample":
        return 0.0 * b, 1.0 + 0.0 * b, _divide(1.0, b), _divide(-a, b)
    if prediction_type == "v_prediction":
        n = a * a + b * b
        return a / n, -b / n, b / n, a / n
    if prediction_type == "flow_prediction":
        n = a + b
        return 1 / n, -b / n, 1 / n, a / n
    raise _unknown_prediction_type(prediction_type)


def check_prediction_type(prediction_type: str) -> str:
    """``prediction_type`` if it is one of :data:`PREDICTION_TYPES`.

    Raises:
        ValueError: Any other value (the message lists the accepted ones).
    """
    if prediction_type not in PREDICTION_TYPES:
        raise _unknown_prediction_type(prediction_type)
    return prediction_type


def _unknown_prediction_type(prediction_type: object) -> ValueError:
    accepted = ", ".join(map(repr, PREDICTION_TYPES))
    return ValueError(f"prediction_type must be one of {accepted}; got {prediction_type!r}")


def predict_x0_eps(
    model_output: torch.Tensor, sample: torch.Tensor, a: Number, b: Number, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9: (x̂0, ε̂) from the model output at x_t = sample on the level (a, b)."""
    x0_x, x0_m, eps_x, eps_m = prediction_weights(a, b, prediction_type)
    return x0_x * sample + x0_m * model_output, eps_x * sample + eps_m * model_output


def eps_from_x0(sample: torch.Tensor, x0: torch.Tensor, a: Number, b: Number) -> torch.Tensor:
    """ε̂ = (x_t − a·x̂0)/b: the noise that a (clipped) x̂0 implies."""
    return (sample - a * x0) / b


def snr_ratio(a_t: Number, b_t: Number, a_s: Number, b_s: Number) -> Number:
    """r = SNR_t/SNR_s = (a_t·b_s)²/(a_s·b_t)², in [0, 1] for a step to a less noisy level, else 1."""
    numerator, denominator = a_t * b_s, a_s * b_t
    if isinstance(numerator, torch.Tensor) or isinstance(denominator, torch.Tensor):
        numerator, denominator = torch.as_tensor(numerator), torch.as_tensor(denominator)
        denoising = numerator < denominator
        safe = torch.where(denoising, denominator, torch.ones_like(denominator))
        return torch.where(denoising, (numerator / safe) ** 2, torch.ones_like(safe))
    return (numerator / denominator) ** 2 if numerator < denominator else 1.0


def ddim_sigma(b_s: Number, r: Number, eta: Number) -> Number:
    """Eq. 16: σ_t(η) = η · b_s · √(1 − r), the standard deviation of the fresh noise a step adds."""
    return eta * b_s * _sqrt(1 - r)


def ddim_direction(b_s: Number, r: Number, eta: Number) -> Number:
    """The weight of ε̂ in eq. 12, √(b_s² − σ²) = b_s·√((1 − η²)(1 − r) + r), free of cancellation
    (0 where η > 1 would make it imaginary)."""
    return b_s * _sqrt((1 - eta * eta) * (1 - r) + r)


class StepCoefficients(NamedTuple):
    """One step from level (a_t, b_t) to (a_s, b_s) with η, as linear-combination weights.

    Unclipped: x̂0 = x0_x·x_t + x0_m·m and x_s = prev_x·x_t + prev_m·m + sigma·z.
    Clipped x̂0 with ε̂ from the model: x_s = dir_x0·x̂0 + eps_x·x_t + eps_m·m + sigma·z.
    Clipped x̂0 with ε̂ re-derived from it (``use_clipped_model_output``): x_s = clip_x0·x̂0 + clip_x·x_t + sigma·z.
    Each field is a float or a tensor of the levels' shape; the levels themselves come along for the
    readable path.
    """

    x0_x: float | torch.Tensor
    x0_m: float | torch.Tensor
    prev_x: float | torch.Tensor
    prev_m: float | torch.Tensor
    dir_x0: float | torch.Tensor
    eps_x: float | torch.Tensor
    eps_m: float | torch.Tensor
    clip_x0: float | torch.Tensor
    clip_x: float | torch.Tensor
    sigma: float | torch.Tensor
    a_t: float | torch.Tensor
    b_t: float | torch.Tensor
    a_s: float | torch.Tensor
    b_s: float | torch.Tensor


def step_coefficients(
    a_t: Number, b_t: Number, a_s: Number, b_s: Number, eta: Number, prediction_type: str
) -> StepCoefficients:
    """The weights of :class:`StepCoefficients` for one step (floats, or tensors of the broadcast shape).

    Raises:
        ValueError: An unknown prediction_type.
    """
    x0_x, x0_m, eps_x, eps_m = prediction_weights(a_t, b_t, prediction_type)
    r = snr_ratio(a_t, b_t, a_s, b_s)
    direction = ddim_direction(b_s, r, eta)
    return StepCoefficients(
        x0_x=x0_x,
        x0_m=x0_m,
        prev_x=a_s * x0_x + direction * eps_x,
        prev_m=a_s * x0_m + direction * eps_m,
        dir_x0=a_s + 0.0 * direction,
        eps_x=direction * eps_x,
        eps_m=direction * eps_m,
        clip_x0=a_s - direction * _divide(a_t, b_t),
        clip_x=_divide(direction, b_t),
        sigma=ddim_sigma(b_s, r, eta),
        a_t=a_t,
        b_t=b_t,
        a_s=a_s,
        b_s=b_s,
    )


def ddim_update(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    level_t: tuple[Number, Number],
    level_s: tuple[Number, Number],
    eta: Number = 0.0,
    prediction_type: str = "epsilon",
    clip: X0Clip = NO_CLIP,
    use_clipped_model_output: bool = False,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step from level t to level s, term by term (eqs. 9, 16, 12). Differentiable.

    Args:
        model_output: m, [B, ...], in the dtype to compute in.
        sample: x_t, same shape.
        level_t: (a_t, b_t), floats or tensors broadcastable over the sample ([B, 1, ..., 1] per sample).
        level_s: (a_s, b_s), the level to land on.
        eta: η >= 0, a float or a broadcastable tensor.
        prediction_type: What m is (see :func:`prediction_weights`).
        clip: How to bound x̂0 (default: not at all).
        use_clipped_model_output: Re-derive ε̂ from the bounded x̂0.
        noise: z, the sample's shape; None for a deterministic step (σ's term is then left out).

    Returns:
        (x_s, x̂0).
    """
    (a_t, b_t), (a_s, b_s) = level_t, level_s
    # Eq. 9: the model output read as predictions of x0 and of the noise.
    x0, eps = predict_x0_eps(model_output, sample, a_t, b_t, prediction_type)
    if clip.active:
        x0 = clip(x0)
        if use_clipped_model_output:
            eps = eps_from_x0(sample, x0, a_t, b_t)
    # Eq. 16: the standard deviation of the noise this step adds.
    r = snr_ratio(a_t, b_t, a_s, b_s)
    sigma = ddim_sigma(b_s, r, eta)
    # Eq. 12: the predicted x0, moved to level s, plus the part of ε̂ the noise does not replace.
    x_s = a_s * x0 + ddim_direction(b_s, r, eta) * eps
    if noise is not None:
        x_s = x_s + sigma * noise
    return x_s, x0
