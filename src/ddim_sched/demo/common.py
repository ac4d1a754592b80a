"""What every demo section shares: its settings, the scheduler configuration and the 2-D mixture."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
        figure_dir: Where sections that draw their own figures (the digits) write them; None: no figures.
    """

    quick: bool = False
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    progress: bool = False
    figure_dir: Path | None = None


DEMO_EXTRA = 'pip install "ddim_sched[demo]"'
"""How to install what the demo's optional parts need (matplotlib, scikit-learn)."""


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op CPU threads, restoring the previous setting."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"threads must be an int; got {count!r}")
    if count < 1:
        raise ValueError(f"threads must be >= 1; got {count}")
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
