r"""Classifier-free guidance in a limited interval of noise levels (Kynkäänniemi et al. 2024, "Applying
Guidance in a Limited Interval Improves Sample and Distribution Quality in Diffusion Models").

Guidance is harmful at high noise (it drops modes) and unnecessary at low noise, so the paper guides only
for σ in (σ_lo, σ_hi] and runs the conditional model alone elsewhere:

    m = m_u + w·(m_c − m_u)   if σ_lo < σ_t <= σ_hi,     else m = m_c

with σ = 1/√SNR, k-diffusion's σ (:func:`ddim_sched.recipes.levels.sigma_at`). For Stable Diffusion XL
the paper uses (σ_lo, σ_hi] = (0.28, 5.42] with w = 16 (EDM2-XXL on ImageNet-512: (0.19, 1.61]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..common.validation import check_floating_tensor, check_real
from .levels import sigma_at

__all__ = ["GuidanceInterval"]

# The guidance scale a diffusers pipeline is told to use where guidance is off: just above 1, so that it keeps
# its conditional/unconditional batch (at <= 1 it drops it, and its prompt embeddings no longer fit) while
# m_u + w·(m_c − m_u) rounds to m_c.
_JUST_ABOVE_ONE = math.nextafter(1.0, 2.0)


@dataclass(frozen=True)
class GuidanceInterval:
    """Guide with scale w only for σ_lo < σ_t <= σ_hi (k-diffusion σ), else use the conditional output.

    In a hand loop, call :meth:`active` to skip the unconditional model call outside the interval and
    :meth:`guide` to combine the outputs. In a diffusers pipeline, pass the instance as
    ``callback_on_step_end`` and ``guidance_scale=interval.pipeline_scale(pipe.scheduler, first_timestep)``:
    after each step it sets the pipeline's scale for the next timestep (the model still runs on both
    branches there; a hand loop saves the call).

    Args:
        guidance_scale: w, a finite real.
        sigma_lo: σ_lo >= 0, excluded (default: the paper's SD-XL value 0.28).
        sigma_hi: σ_hi > σ_lo, included; may be ``math.inf`` (default: SD-XL's 5.42).

    Raises:
        TypeError, ValueError: A non-real or non-finite w, or σ bounds out of order.
    """

    guidance_scale: float
    sigma_lo: float = 0.28
    sigma_hi: float = 5.42

    def __post_init__(self) -> None:
        object.__setattr__(self, "guidance_scale", check_real("guidance_scale", self.guidance_scale))
        object.__setattr__(self, "sigma_lo", check_real("sigma_lo", self.sigma_lo, 0.0))
        hi = self.sigma_hi
        if not (isinstance(hi, (int, float)) and not isinstance(hi, bool) and hi == math.inf):
            hi = check_real("sigma_hi", hi)
        if not hi > self.sigma_lo:
            raise ValueError(f"sigma_hi must be > sigma_lo = {self.sigma_lo!r}; got sigma_hi={self.sigma_hi!r}")
        object.__setattr__(self, "sigma_hi", float(hi))

    def active(self, scheduler: Any, timestep: Any) -> bool | torch.Tensor:
        """Whether σ_lo < σ_t <= σ_hi: a bool for a host timestep, a bool tensor of the timestep's shape for a
        tensor (on its device, not read)."""
        sigma = sigma_at(scheduler, timestep)
        inside = (sigma > self.sigma_lo) & (sigma <= self.sigma_hi)
        return bool(inside) if not isinstance(timestep, torch.Tensor) else inside

    def scale(self, scheduler: Any, timestep: Any) -> float | torch.Tensor:
        """w inside the interval, 1 outside (m_u + 1·(m_c − m_u) = m_c): a float, or a float64 tensor of the
        timestep's shape."""
        inside = self.active(scheduler, timestep)
        if isinstance(inside, bool):
            return self.guidance_scale if inside else 1.0
        return torch.where(inside, self.guidance_scale, 1.0).to(torch.float64)

    def guide(
        self, scheduler: Any, timestep: Any, model_output_uncond: torch.Tensor, model_output_cond: torch.Tensor
    ) -> torch.Tensor:
        """m_u + w·(m_c − m_u) where the interval holds, m_c elsewhere (per sample for [B] timesteps), in
        the outputs' dtype.

        Raises:
            TypeError, ValueError: Non-floating outputs, or outputs of different shapes.
        """
        check_floating_tensor("model_output_uncond", model_output_uncond)
        check_floating_tensor("model_output_cond", model_output_cond)
        if model_output_uncond.shape != model_output_cond.shape:
            raise ValueError(
                "model_output_uncond and model_output_cond must have the same shape; got "
                f"{tuple(model_output_uncond.shape)} and {tuple(model_output_cond.shape)}"
            )
        inside = self.active(scheduler, timestep)
        if isinstance(inside, bool):
            if not inside:
                return model_output_cond
            return torch.add(model_output_uncond, model_output_cond - model_output_uncond, alpha=self.guidance_scale)
        guided = torch.add(model_output_uncond, model_output_cond - model_output_uncond, alpha=self.guidance_scale)
        mask = inside.to(model_output_cond.device)
        mask = mask.reshape(mask.shape + (1,) * (model_output_cond.dim() - mask.dim())) if mask.dim() else mask
        return torch.where(mask, guided, model_output_cond)

    def pipeline_scale(self, scheduler: Any, timestep: Any) -> float:
        """The ``guidance_scale`` to give a diffusers pipeline for ``timestep`` (one host timestep): w inside
        the interval, else the float just above 1, so that the pipeline keeps its two-branch batch while its
        guidance m_u + scale·(m_c − m_u) is m_c to rounding."""
        return self.guidance_scale if bool(self.active(scheduler, timestep)) else _JUST_ABOVE_ONE

    def __call__(
        self, pipeline: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """diffusers' ``callback_on_step_end``: set ``pipeline._guidance_scale`` (what its ``guidance_scale``
        property reads) for the timestep after ``step_index``; returns ``callback_kwargs`` unchanged."""
        timesteps = pipeline.scheduler.timesteps
        if step_index + 1 < len(timesteps):
            pipeline._guidance_scale = self.pipeline_scale(pipeline.scheduler, timesteps[step_index + 1])
        return callback_kwargs
