r"""The noise level a scheduler is at for a timestep, read from its public tables: what per-step recipes
(guidance intervals, exposure-bias scaling) need and a pipeline loop does not have.

=======================  ==========================================  ===================================
scheduler                x_t = a·x0 + b·ε at timestep t              read from
=======================  ==========================================  ===================================
DDIM family              a = √ᾱ_t, b = √(1 − ᾱ_t)                    ``alpha_bar`` (float64), by integer t
FlowMatchDDIMScheduler   a = 1 − σ_t, b = σ_t                        ``noise_levels`` at the nearest of
                                                                     ``timesteps``
other (diffusers' VP)    a = √ᾱ_t, b = √(1 − ᾱ_t)                    ``alphas_cumprod``, by integer t
=======================  ==========================================  ===================================

Noise intervals are stated in k-diffusion's σ = b/a = 1/√SNR (:func:`sigma_at`), which is the same number
on every path: √((1 − ᾱ)/ᾱ) for DDIM, σ/(1 − σ) for a flow level σ.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..common.arguments import timestep_values
from ..ddim.base import DDIMSchedulerBase
from ..flow.scheduler import FlowMatchDDIMScheduler

__all__ = ["levels_at", "sigma_at"]


def _vp_levels(table: torch.Tensor, timestep: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(√ᾱ_t, √(1 − ᾱ_t)) gathered from a float64 ᾱ table at integer timesteps (validated)."""
    T = int(table.numel())
    shape = tuple(timestep.shape) if isinstance(timestep, (torch.Tensor, np.ndarray)) else ()
    t = timestep_values(timestep, name="timestep", num_train_timesteps=T, shape=shape)
    if isinstance(t, torch.Tensor):
        index, device = t, t.device
    else:
        index, device = torch.as_tensor(np.asarray(t, dtype=np.int64)), torch.device("cpu")
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    alpha_bar = table.to(device=device, dtype=dtype)[index.reshape(-1)].reshape(index.shape)
    return alpha_bar.sqrt(), (1 - alpha_bar).clamp(min=0).sqrt()


def _flow_levels(scheduler: FlowMatchDDIMScheduler, timestep: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 − σ_t, σ_t) at the nearest of the flow scheduler's timesteps."""
    timesteps = scheduler.timesteps.to(torch.float64)
    levels = scheduler.noise_levels[: timesteps.numel()]
    if isinstance(timestep, torch.Tensor):
        if timestep.is_complex() or timestep.dtype == torch.bool:
            raise TypeError(f"timestep must be a real tensor; got dtype {timestep.dtype}")
        t = timestep.detach().to(torch.float64)
    elif isinstance(timestep, (int, float, np.integer, np.floating)) and not isinstance(timestep, bool):
        t = torch.tensor(float(timestep), dtype=torch.float64)
    else:
        raise TypeError(f"timestep must be a number or a tensor; got {timestep!r}")
    dtype = torch.float32 if t.device.type == "mps" else torch.float64
    index = (t.reshape(-1, 1) - timesteps.to(t.device)).abs().argmin(dim=1)
    sigma = levels.to(device=t.device, dtype=dtype)[index].reshape(t.shape)
    return 1 - sigma, sigma


def levels_at(scheduler: Any, timestep: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with x_t = a·x0 + b·ε at ``timestep``, from the scheduler's own tables.

    Args:
        scheduler: A ddim_sched DDIM scheduler (``alpha_bar``), a ``FlowMatchDDIMScheduler``
            (``noise_levels`` at the nearest of its ``timesteps``), or any scheduler with an
            ``alphas_cumprod`` table indexed by integer timesteps (diffusers' DDIM, DDPM, ...).
        timestep: An int or a number, or a tensor ([] or [B], or any per-element shape); integer for the
            ᾱ-table schedulers, a timestep of the schedule for the flow scheduler. Device tensors are not
            read (no host sync).

    Returns:
        (a, b) as float64 tensors of the timestep's shape on its device (float32 on MPS).

    Raises:
        TypeError: A scheduler without noise tables, or a timestep of the wrong kind.
        ValueError: A host timestep out of range.
    """
    if isinstance(scheduler, FlowMatchDDIMScheduler):
        return _flow_levels(scheduler, timestep)
    if isinstance(scheduler, DDIMSchedulerBase):
        return _vp_levels(scheduler.alpha_bar, timestep)
    table = getattr(scheduler, "alphas_cumprod", None)
    if isinstance(table, torch.Tensor):
        return _vp_levels(table.detach().to("cpu", torch.float64), timestep)
    raise TypeError(
        "scheduler must be a ddim_sched DDIM or flow scheduler, or have an alphas_cumprod table; "
        f"got {type(scheduler).__name__}"
    )


def sigma_at(scheduler: Any, timestep: Any) -> torch.Tensor:
    """k-diffusion's σ = b/a = 1/√SNR at ``timestep`` (+∞ where a = 0: pure noise), as :func:`levels_at`
    reads the levels: √((1 − ᾱ_t)/ᾱ_t) for DDIM, σ_t/(1 − σ_t) for a flow level σ_t.

    Returns:
        A float64 tensor of the timestep's shape on its device.
    """
    a, b = levels_at(scheduler, timestep)
    return torch.where(a > 0, b / torch.where(a > 0, a, torch.ones_like(a)), torch.full_like(a, float("inf")))
