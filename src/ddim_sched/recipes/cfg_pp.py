r"""CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models")
as one DDIM step through the scheduler's public API.

Classifier-free guidance feeds the step one output m_w = m_u + w·(m_c − m_u) and DDIM (eq. 12) uses it
twice: for x̂0 and for the direction term. CFG++ takes x̂0 from the guided output and the direction from the
unconditional one, with λ ∈ [0, 1] in place of w::

    m_λ = m_u + λ·(m_c − m_u)
    x_prev = √ᾱ_prev · x̂0(m_λ) + √(1 − ᾱ_prev − σ²) · ε̂(m_u) + σ·z          (σ = σ_t(η), eq. 16)

The step is linear in the model output wherever x̂0 is not clipped, ε̂(m) = eps_x·x_t + E·m, so
x_prev = step(m_λ) − D·E·(m_λ − m_u) with D = √(1 − ᾱ_prev − σ²): :func:`cfg_pp_step` runs the scheduler's
own step on m_λ and subtracts ``StepCoefficients.eps_m``·λ·(m_c − m_u) (eps_m = D·E). This holds for every
``prediction_type`` (E = 1 for ε, −√ᾱ/√(1 − ᾱ) for x0, √ᾱ for v) and also with ``clip_sample`` or
thresholding, since the scheduler then clips x̂0 and still takes ε̂ from the model output; only
``use_clipped_model_output`` (ε̂ re-derived from the clipped x̂0) has no CFG++ reading, and is not offered.

Scale convention: CFG++'s λ interpolates between the unconditional (0) and the conditional (1) model, where
CFG's w extrapolates beyond 1. AUTOMATIC1111's "DDIM CFG++" and ComfyUI's ``*_cfg_pp`` samplers take the
CFG slider value and use λ = w / 12.5 (w = 7.5 → λ = 0.6); the paper's experiments use λ up to 1.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch

from ..common.arguments import eta_values
from ..common.validation import check_floating_tensor, check_real
from ..compat.output import DDIMSchedulerOutput
from ..core.noise import Generator
from ..core.runtime import compute_dtype
from ..core.update import step_coefficients
from ..ddim.scheduler import DDIMScheduler
from .levels import levels_at

__all__ = ["CFG_PP_SCALE_DIVISOR", "cfg_pp_step"]

# AUTOMATIC1111 and ComfyUI read a CFG++ sampler's guidance slider w as λ = w / 12.5.
CFG_PP_SCALE_DIVISOR = 12.5


def _direction_weight(
    scheduler: DDIMScheduler, timestep: Any, eta: float | torch.Tensor, sample: torch.Tensor
) -> float | torch.Tensor:
    """eps_m of the step from ``timestep`` with η (the weight of the model output in the direction term): a
    float64 host float for one host timestep, else a tensor that broadcasts over the sample."""
    if isinstance(timestep, torch.Tensor) and timestep.numel() == 1 and timestep.device.type == "cpu":
        timestep = int(timestep)  # a pipeline's loop variable on the host: read it (no device sync)
    if isinstance(timestep, (int, np.integer)) and not isinstance(timestep, bool) and isinstance(eta, float):
        return float(scheduler.coefficients(int(timestep), eta).eps_m)
    t = timestep if isinstance(timestep, torch.Tensor) else torch.as_tensor(np.asarray(timestep, dtype=np.int64))

    def padded(x: torch.Tensor) -> torch.Tensor:  # [B] -> [B, 1, ..., 1]; [] and per-element shapes stay
        return x.reshape(x.shape + (1,) * (sample.dim() - x.dim())) if x.dim() else x

    a_t, b_t = levels_at(scheduler, t)
    target = cast(torch.Tensor, scheduler.previous_timestep(t.to(torch.int64))).to(a_t.device)
    final = 1.0 if scheduler.config.set_alpha_to_one else float(scheduler.alpha_bar[0])
    table = scheduler.alpha_bar.to(device=a_t.device, dtype=a_t.dtype)
    alpha_bar_s = torch.where(target >= 0, table[target.clamp(min=0)], torch.full_like(a_t, final))
    a_s, b_s = alpha_bar_s.sqrt(), (1 - alpha_bar_s).clamp(min=0).sqrt()
    rate = eta.to(device=a_t.device, dtype=a_t.dtype) if isinstance(eta, torch.Tensor) else eta
    prediction_type = scheduler.config.prediction_type
    weight = step_coefficients(padded(a_t), padded(b_t), padded(a_s), padded(b_s), rate, prediction_type).eps_m
    return cast(torch.Tensor, weight)


def cfg_pp_step(
    scheduler: DDIMScheduler,
    model_output_uncond: torch.Tensor,
    model_output_cond: torch.Tensor,
    timestep: Any,
    sample: torch.Tensor,
    guidance_scale: float,
    *,
    eta: float | torch.Tensor = 0.0,
    generator: Generator = None,
    variance_noise: torch.Tensor | None = None,
    return_dict: bool = True,
) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step with CFG++: x̂0 from the guided output m_λ = m_u + λ·(m_c − m_u), the direction term of
    eq. 12 from the unconditional one (module docstring).

    At equal conditional and unconditional outputs, or at λ = 0, it is exactly ``scheduler.step`` on the
    unconditional output (the same values, bit for bit); at λ = 1 x̂0 is the conditional model's.

    Args:
        scheduler: A ddim_sched ``DDIMScheduler`` (or ``DDIMParallelScheduler``) after ``set_timesteps``.
        model_output_uncond: m_u, the model output without the condition, [B, ...], of the scheduler's
            ``prediction_type``.
        model_output_cond: m_c, with the condition, the same shape.
        timestep: As ``scheduler.step`` takes it: an int, a 0-d tensor (a pipeline's loop variable) or one
            timestep per sample [B].
        sample: x_t, [B, ...].
        guidance_scale: λ, a finite real (CFG++ uses [0, 1]; λ = w / :data:`CFG_PP_SCALE_DIVISOR` for a CFG
            slider value w).
        eta: η >= 0, a float or [B] tensor, as ``scheduler.step``.
        generator: For the η > 0 noise, as ``scheduler.step`` (the same noise a plain step draws).
        variance_noise: The noise z itself, as ``scheduler.step``.
        return_dict: Return a ``DDIMSchedulerOutput`` (True) or a tuple.

    Returns:
        (x_prev, x̂0(m_λ)) in the sample's dtype, as ``scheduler.step`` returns them.

    Raises:
        TypeError: Not a ddim_sched DDIMScheduler (the inverse scheduler is not supported), non-tensor or
            non-floating outputs, a non-real guidance_scale.
        ValueError: Shapes that differ, a non-finite guidance_scale, and whatever ``scheduler.step`` refuses.
    """
    if not isinstance(scheduler, DDIMScheduler):
        raise TypeError(
            "cfg_pp_step needs a ddim_sched DDIMScheduler or DDIMParallelScheduler (sampling, not inversion); "
            f"got {type(scheduler).__name__}"
        )
    check_floating_tensor("model_output_uncond", model_output_uncond)
    check_floating_tensor("model_output_cond", model_output_cond)
    check_floating_tensor("sample", sample)
    if not model_output_uncond.shape == model_output_cond.shape == sample.shape:
        raise ValueError(
            "model_output_uncond, model_output_cond and sample must have the same shape; got "
            f"{tuple(model_output_uncond.shape)}, {tuple(model_output_cond.shape)} and {tuple(sample.shape)}"
        )
    scale = check_real("guidance_scale", guidance_scale)
    if not (type(eta) is float and eta >= 0.0):
        eta = eta_values(eta, tuple(sample.shape), sample.device)
    difference = model_output_cond - model_output_uncond
    guided = torch.add(model_output_uncond, difference, alpha=scale)
    prev_sample, pred_original_sample = scheduler.step(
        guided, timestep, sample, eta=eta, generator=generator, variance_noise=variance_noise, return_dict=False
    )
    weight = _direction_weight(scheduler, timestep, eta, sample)
    dtype = compute_dtype(sample.dtype)
    # x_prev(m_λ) − D·(ε̂(m_λ) − ε̂(m_u)) = x_prev(m_λ) − eps_m·λ·(m_c − m_u)
    if isinstance(weight, float):
        corrected = torch.add(prev_sample.to(dtype), difference.to(dtype), alpha=-weight * scale)
    else:
        corrected = prev_sample.to(dtype) - (weight.to(dtype) * scale) * difference.to(dtype)
    prev_sample = corrected.to(sample.dtype)
    if not return_dict:
        return prev_sample, pred_original_sample
    return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
