"""What every demo section shares: its settings, the scheduler configuration and the 2-D mixture."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..config import DDIMConfig
from ..output import DDIMSchedulerOutput
from ..scheduler import DDIMScheduler
from ..toy import GaussianMixture


@dataclass(frozen=True)
class DemoSettings:
    """How the demo runs.

    Attributes:
        quick: Small sizes (seconds; what the tests run).
        seed: Seeds every random draw.
        device: Where the samplers run.
        dtype: The samples' dtype (float32 or float64).
        progress: Draw progress bars on stderr.
    """

    quick: bool = False
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    progress: bool = False


def demo_config() -> DDIMConfig:
    """diffusers' DDIMScheduler defaults (DDPM's CIFAR10 betas, leading spacing) without clipping."""
    return DDIMConfig(clip_sample=False)


def demo_scheduler() -> DDIMScheduler:
    """A :class:`DDIMScheduler` with :func:`demo_config`."""
    return DDIMScheduler.from_config(demo_config())


def ring_mixture(scheduler: DDIMScheduler | None = None) -> GaussianMixture:
    """8 isotropic Gaussians (std 0.1) evenly spaced on the unit circle, on ``scheduler``'s ᾱ (default: the demo's)."""
    return GaussianMixture.ring(8, radius=1.0, std=0.1, alpha_bar=scheduler or demo_scheduler())


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


def prev_sample(result: DDIMSchedulerOutput | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """x_prev from what ``DDIMScheduler.step`` returns (an output object, or a tuple with ``return_dict=False``)."""
    return result.prev_sample if isinstance(result, DDIMSchedulerOutput) else result[0]
