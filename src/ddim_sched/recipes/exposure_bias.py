r"""Epsilon scaling against exposure bias (Ning et al. 2024, "Elucidating the Exposure Bias in Diffusion
Models", ICLR; ADM-ES): divide the predicted noise by λ_t slightly above 1 at every sampling step.

A network trained on forward-process inputs sees, while sampling, inputs whose noise it over-predicts; the
paper scales ε̂ down, ε̂' = ε̂/λ_t. Here λ_t is constant (the paper's "uniform" schedule, ComfyUI's
``Epsilon Scaling`` node, default 1.005). x̂0 follows from x_t and the scaled ε̂, x̂0' = (x_t − b·ε̂')/a, and
the model output of the scheduler's ``prediction_type`` is rewritten to the one that reads as (x̂0', ε̂').
With eq. 9's weights ε̂ = e_x·x_t + e_m·m this is

    m' = m/λ − (1 − 1/λ)·(e_x/e_m)·x_t        (ε: m' = m/λ;  x0: + (1 − 1/λ)·x_t/a;  v: − (1 − 1/λ)·(b/a)·x_t;
                                               flow velocity: − (1 − 1/λ)·x_t/(1 − σ))

At a = 0 (ᾱ = 0, or σ = 1 on the flow path) x_t is the noise itself, scaling ε̂ would send x̂0 to infinity,
and the output is left unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..common.validation import check_floating_tensor, check_real
from ..core.runtime import compute_dtype
from ..core.update import prediction_weights
from ..flow.scheduler import FlowMatchDDIMScheduler
from .levels import levels_at

__all__ = ["epsilon_scaling", "epsilon_scaling_hook"]


def _prediction_type(scheduler: Any) -> str:
    if isinstance(scheduler, FlowMatchDDIMScheduler):
        if scheduler.config.invert_sigmas:
            raise ValueError("epsilon_scaling does not support a flow scheduler with invert_sigmas=True")
        return "flow_prediction"
    prediction_type = getattr(getattr(scheduler, "config", None), "prediction_type", None)
    if not isinstance(prediction_type, str):
        raise TypeError(f"scheduler must have config.prediction_type; got {type(scheduler).__name__}")
    return prediction_type


def epsilon_scaling(
    scheduler: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, scale: float = 1.005
) -> torch.Tensor:
    """The model output whose ε̂ is ε̂/λ (and x̂0 the one x_t then implies), of the scheduler's prediction type.

    Args:
        scheduler: A ddim_sched DDIM or flow scheduler, or any scheduler with ``alphas_cumprod`` and
            ``config.prediction_type`` (:func:`ddim_sched.recipes.levels.levels_at` reads its level).
        model_output: m, [B, ...]: ε, x0, v, or the flow velocity.
        timestep: The step's timestep: a number, a 0-d tensor, or [B] (per sample).
        sample: x_t, the shape of model_output.
        scale: λ, finite and > 0 (1 changes nothing; the paper's values lie slightly above 1).

    Returns:
        m', in model_output's dtype (computed in at least float32).

    Raises:
        TypeError, ValueError: Non-floating tensors, shapes that differ, λ <= 0, an unknown prediction type.
    """
    check_floating_tensor("model_output", model_output)
    check_floating_tensor("sample", sample)
    if model_output.shape != sample.shape:
        raise ValueError(
            f"model_output and sample must have the same shape; got {tuple(model_output.shape)} and "
            f"{tuple(sample.shape)}"
        )
    lam = check_real("scale", scale, 0.0, strict=True)
    prediction_type = _prediction_type(scheduler)
    a, b = levels_at(scheduler, timestep)
    a = a.reshape(a.shape + (1,) * (sample.dim() - a.dim())) if a.dim() else a
    b = b.reshape(b.shape + (1,) * (sample.dim() - b.dim())) if b.dim() else b
    a_safe = torch.where(a > 0, a, torch.ones_like(a))
    _, _, eps_x, eps_m = prediction_weights(a_safe, b, prediction_type)
    # −(1 − 1/λ)·e_x/e_m: the weight of x_t; e_m ≠ 0 wherever a > 0 for every prediction type.
    ratio = torch.as_tensor(eps_x, dtype=a.dtype, device=a.device) / torch.as_tensor(eps_m, dtype=a.dtype)
    x_weight = torch.where(a > 0, -(1 - 1 / lam) * ratio, torch.zeros_like(ratio))
    m_weight = torch.where(a > 0, torch.full_like(ratio, 1 / lam), torch.ones_like(ratio))
    dtype = compute_dtype(model_output.dtype, sample.dtype)
    device = model_output.device
    scaled = m_weight.to(device, dtype) * model_output.to(dtype) + x_weight.to(device, dtype) * sample.to(dtype)
    return scaled.to(model_output.dtype)


def epsilon_scaling_hook(scheduler: Any, scale: float = 1.005) -> Callable[..., Any]:
    """A forward hook that applies :func:`epsilon_scaling` to a denoiser's output, for pipelines:
    ``pipe.unet.register_forward_hook(epsilon_scaling_hook(pipe.scheduler), with_kwargs=True)`` (or
    ``pipe.transformer``). The hook reads the sample and timestep the pipeline passes (positionally or as
    ``sample`` / ``hidden_states`` and ``timestep``) and rewrites the output tuple's first element or the
    output's ``sample``. Scaling each branch of a classifier-free-guidance batch scales the guided output
    alike: the rewrite is affine in m with weights that do not depend on the branch.

    Raises:
        TypeError, ValueError: A bad scale, now; a call without a sample or timestep, when the hook runs.
    """
    lam = check_real("scale", scale, 0.0, strict=True)
    _prediction_type(scheduler)

    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if not isinstance(sample, torch.Tensor) or timestep is None:
            raise TypeError("epsilon_scaling_hook needs the call's sample and timestep (args[0:2] or keywords)")
        if isinstance(output, tuple):
            return (epsilon_scaling(scheduler, output[0], timestep, sample, lam), *output[1:])
        output.sample = epsilon_scaling(scheduler, output.sample, timestep, sample, lam)
        return output

    return hook
