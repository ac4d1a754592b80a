"""Applying a step's coefficients: the one call every scheduler's ``step`` makes after looking them up.

A step's :class:`~ddim_sched.core.update.StepCoefficients` are the weights of two linear combinations,
x̂0 = x0_x·x_t + x0_m·m and x_s = prev_x·x_t + prev_m·m + σ·z (with the variants of a bounded x̂0).
:func:`apply_step` evaluates them: with the private fused engine (:mod:`ddim_sched.core._fused`, the
fewest passes over memory, writing into fresh buffers or ``out=``), or, while autograd records any input,
with the same terms out of place, so that gradients flow through the inputs, the noise and the weights
themselves (a tensor η). Both evaluate the terms the engine lists for a prediction type and bound, so
they are one formula; the tests hold both to :func:`ddim_sched.core.update.ddim_update`, the step as the paper
writes it.

Dtype rule (:func:`~ddim_sched.core.runtime.compute_dtype`): arithmetic in float64 for float64 samples and
in float32 otherwise; the outputs in the sample's dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from ._fused import _terms as step_terms
from ._fused import as_column, device_row, fused_prev_sample, fused_step, takes_host_weights
from .runtime import compute_dtype, is_sharded, laid_out_like
from .thresholding import NO_CLIP, X0Clip
from .update import StepCoefficients

__all__ = ["apply_step", "check_out", "device_row", "in_compute_dtype", "takes_host_weights"]


def check_out(out: Any, sample: torch.Tensor) -> None:
    """That ``out`` is a writable tensor of the sample's shape and dtype, no element stored twice.

    Raises:
        ValueError: Another shape or dtype, not a tensor, or an expanded tensor (stride 0).
    """
    if not isinstance(out, torch.Tensor) or out.shape != sample.shape or out.dtype != sample.dtype:
        raise ValueError(
            f"out must be a tensor of the sample's shape {tuple(sample.shape)} and dtype {sample.dtype}; "
            f"got {getattr(out, 'shape', out)!r} of dtype {getattr(out, 'dtype', None)}"
        )
    if any(stride == 0 and size > 1 for stride, size in zip(out.stride(), out.shape, strict=True)):
        raise ValueError(
            f"out must not be an expanded tensor (stride 0 stores one element many times); got strides {out.stride()}"
        )


def in_compute_dtype(weights: StepCoefficients, sample: torch.Tensor) -> StepCoefficients:
    """Tensor weights in the sample's compute dtype on its device, converted together in one copy unless they
    already are; host floats as they are."""
    weight = weights.prev_x
    if type(weight) is float:
        return weights
    dtype = compute_dtype(sample.dtype)
    if not isinstance(weight, torch.Tensor) or (weight.dtype == dtype and weight.device == sample.device):
        return weights
    if not all(isinstance(w, torch.Tensor) for w in weights):  # some host floats among them: each on its own
        return StepCoefficients(*(w.to(sample.device, dtype) if isinstance(w, torch.Tensor) else w for w in weights))
    columns = torch.stack(torch.broadcast_tensors(*weights)).to(device=sample.device, dtype=dtype)
    return StepCoefficients(*columns.unbind(0))


def _laid_out(
    weights: StepCoefficients, model_output: torch.Tensor, noise: torch.Tensor | None, sample: torch.Tensor
) -> tuple[StepCoefficients, torch.Tensor, torch.Tensor | None]:
    """For a sharded (``DTensor``) sample: tensor weights replicated on its mesh, and a plain model output or
    noise of the sample's global shape laid out as the sample is (the noise drawn whole, then distributed)."""
    weights = StepCoefficients(*(laid_out_like(w, sample, True) if isinstance(w, torch.Tensor) else w for w in weights))
    model_output = laid_out_like(model_output, sample, False)
    return weights, model_output, None if noise is None else laid_out_like(noise, sample, False)


def _recording(
    model_output: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor | None, weights: StepCoefficients
) -> bool:
    """Whether autograd records an operation on the inputs, the noise or tensor weights (a tensor η)."""
    if not torch.is_grad_enabled():
        return False
    if model_output.requires_grad or sample.requires_grad or (noise is not None and noise.requires_grad):
        return True
    weight, sigma = weights.prev_x, weights.sigma
    return type(weight) is not float and (
        (isinstance(weight, torch.Tensor) and weight.requires_grad)
        or (isinstance(sigma, torch.Tensor) and sigma.requires_grad)
    )


def _linear_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    weights: StepCoefficients,
    terms: tuple[Any, Any],
    clip: X0Clip,
    noise: torch.Tensor | None,
    out: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused engine's terms evaluated out of place (differentiable), in the compute dtype."""
    dtype, ndim = compute_dtype(sample.dtype), sample.dim()
    sources: list[Any] = [sample.to(dtype), model_output.to(dtype), None if noise is None else noise.to(dtype)]

    def weight(j: int) -> Any:
        w = weights[j]
        return as_column(w.to(sample.device, dtype), ndim) if isinstance(w, torch.Tensor) else w

    def combine(term_list: Any) -> torch.Tensor:
        total: Any = 0
        for j, s in term_list:
            total = total + weight(j) * sources[s]
        return total

    x0_terms, prev_terms = terms
    x0 = clip(combine(x0_terms)) if x0_terms else None
    sources.append(x0)
    prev = combine(prev_terms).to(sample.dtype)
    if out is not None:
        prev = out.copy_(prev)
    return prev, None if x0 is None else x0.to(sample.dtype)


def apply_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    weights: StepCoefficients,
    prediction_type: str,
    clip: X0Clip = NO_CLIP,
    use_clipped_model_output: bool = False,
    noise: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    with_x0: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x_s, x̂0) of one step from its coefficients, in the sample's dtype.

    Args:
        model_output, sample: m and x_t, [B, ...], floating, the same shape, any layout.
        weights: Host floats, or tensors that broadcast over the sample from its leading dimensions (any
            dtype and device: converted once to the compute dtype on the sample's device).
        prediction_type: What m is (a name in :data:`ddim_sched.core.update.PREDICTION_TYPES`); selects the
            terms that are structurally zero.
        clip: How to bound x̂0 (default: not at all).
        use_clipped_model_output: Re-derive ε̂ from the bounded x̂0.
        noise: z of the sample's shape, or None for a deterministic step.
        out: Where to write x_s (the sample's shape and dtype; it may be any of the inputs), or None.
        with_x0: Also return x̂0; without it (and without a bound on x̂0) x̂0 is not computed: None.

    Returns:
        (x_s, x̂0): x_s is ``out`` when given; x̂0 a new tensor, or None without ``with_x0``.
    """
    weights = in_compute_dtype(weights, sample)
    if type(sample) is not torch.Tensor and is_sharded(sample):
        weights, model_output, noise = _laid_out(weights, model_output, noise, sample)
    if _recording(model_output, sample, noise, weights):
        terms = step_terms(prediction_type, clip.active, use_clipped_model_output, noise is not None)
        if not with_x0 and not clip.active:
            terms = ((), terms[1])
        return _linear_step(model_output, sample, weights, terms, clip, noise, out)
    if not with_x0 and not clip.active:
        return fused_prev_sample(model_output, sample, weights, prediction_type, noise, out), None
    return fused_step(model_output, sample, weights, prediction_type, clip, use_clipped_model_output, noise, out)
