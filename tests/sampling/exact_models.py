"""Exact models for the sampling tests, on both noise paths, from ddim_sched.toy.GaussianMixture.

VP path: the mixture's own exact predictions at x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε.

Flow path x = (1 − σ)·x0 + σ·ε: dividing by n = √((1 − σ)² + σ²) gives x/n = a·x0 + b·ε with
a = (1 − σ)/n, b = σ/n and a² + b² = 1, a VP point at ᾱ = a². Conditioning on x or on x/n is the same,
so E[x0 | x] and E[ε | x] are the mixture's exact predictions at x/n on that level, and the exact
velocity is u = E[ε | x] − E[x0 | x]. The levels σ of the scheduler's visited timesteps become the
mixture's ᾱ table (one entry per visited timestep), and the model finds a timestep's entry by its
position in ``scheduler.timesteps``.
"""

from __future__ import annotations

import torch

from ddim_sched import DDIMScheduler, FlowMatchDDIMScheduler
from ddim_sched.toy import GaussianMixture

# A 2-mode mixture in 16 dimensions: a nonlinear exact denoiser (a single Gaussian's is affine).
DIM = 16


def mixture_parameters() -> tuple[torch.Tensor, torch.Tensor]:
    """(means [2, 16], stds [2]) of the test mixture."""
    means = torch.stack([torch.linspace(-1.0, 1.0, DIM), -torch.linspace(-1.0, 1.0, DIM) + 0.3])
    return means, torch.tensor([0.3, 0.5])


def data(n: int = 4, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    """n exact samples [n, 16] of the test mixture."""
    means, stds = mixture_parameters()
    return GaussianMixture(means, stds).sample(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def vp_model(scheduler: DDIMScheduler):
    """The exact ``model_fn(x, t)`` for the scheduler's prediction type (t an int tensor, [] or [B])."""
    means, stds = mixture_parameters()
    return GaussianMixture(means, stds, alpha_bar=scheduler).model(scheduler.ddim_config.prediction_type)


def flow_model(scheduler: FlowMatchDDIMScheduler, calls: list | None = None):
    """The exact velocity ``model_fn(x, t)`` on the scheduler's current schedule (t [] or [B], floating).

    Appends each call's t to ``calls`` when given."""
    means, stds = mixture_parameters()
    sigma = scheduler.noise_levels[:-1]  # float64 [S], one per visited timestep
    norm = ((1 - sigma) ** 2 + sigma**2).sqrt()
    mixture = GaussianMixture(means, stds, alpha_bar=((1 - sigma) / norm) ** 2)
    timesteps = scheduler.timesteps.to(torch.float64)

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(t)
        values = torch.as_tensor(t).reshape(-1).to(torch.float64)
        index = (timesteps.unsqueeze(0) - values.unsqueeze(1)).abs().argmin(dim=1)  # [1] or [B]
        scale = norm[index].to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))
        x_vp = x / scale
        step = index if index.numel() > 1 else index.reshape(())
        return mixture.eps(x_vp, step) - mixture.x0(x_vp, step)

    return model_fn
