"""What every demo section shares: its settings, the scheduler configuration and the 2-D mixture."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..compat.output import DDIMSchedulerOutput
from ..ddim.config import DDIMConfig
from ..ddim.scheduler import DDIMScheduler
from ..flow.scheduler import FlowMatchDDIMScheduler
from ..sampling.loops import invert, sample
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


def step_coefficients(
    scheduler: DDIMScheduler | FlowMatchDDIMScheduler,
    t: int | torch.Tensor,
    eta: float | None,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[float, float, float]:
    """(P_x, P_m, σ) with x_prev = P_x·x_t + P_m·m + σ·z, read from ``scheduler.step`` by stepping unit inputs
    (a DDIMScheduler, or a FlowMatchDDIMScheduler with a float timestep; ``eta=None``: the scheduler's own η).

    The scheduler must have clipping and thresholding off (the step is then linear); the three
    unit vectors (x_t, m, z) = e_1, e_2, e_3 are stepped as one batch of three in ``dtype``.
    """
    eye = torch.eye(3, dtype=dtype, device=device)
    sample, model_output, noise = eye[:, 0:1], eye[:, 1:2], eye[:, 2:3]
    if eta is None:
        result = scheduler.step(model_output, t, sample, variance_noise=noise)
    else:
        result = scheduler.step(model_output, t, sample, eta=eta, variance_noise=noise)
    prev = prev_sample(result)
    p_x, p_m, sigma = prev.reshape(3).to("cpu", torch.float64).tolist()
    return p_x, p_m, sigma


def gaussian_w2(mean_a: torch.Tensor, var_a: torch.Tensor, mean_b: torch.Tensor, var_b: torch.Tensor) -> float:
    """Exact W2 between N(mean_a, diag(var_a)) and N(mean_b, diag(var_b))."""
    w2_sq = ((mean_a - mean_b) ** 2).sum() + ((var_a.sqrt() - var_b.sqrt()) ** 2).sum()
    return float(w2_sq.sqrt())


def invert_calls(k: int, steps: int) -> int:
    """Model calls of ``invert`` over S steps with k fixed-point iterations (no tol, no report): one per
    step for k = 0, k + 2 for k >= 1 (every iterate's residual is measured)."""
    return steps * (1 if k == 0 else k + 2)


def round_trip_calls(steps: Sequence[int], iterations: Sequence[int]) -> int:
    """Model calls of :func:`round_trips`."""
    return sum(invert_calls(k, S) + S for k in iterations for S in steps)


def round_trips(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    scheduler: DDIMScheduler,
    steps: Sequence[int],
    iterations: Sequence[int],
    advance: Callable[[int], None],
) -> dict[tuple[int, int], torch.Tensor]:
    """(k, S) → the η = 0 decoding of ``invert(x0)`` with k fixed-point iterations, S steps each way, on
    ``scheduler``; ``advance(n)`` is called after every n model calls (progress)."""
    decoded = {}
    for S in steps:
        scheduler.set_timesteps(S)
        for k in iterations:
            latent = invert(model_fn, x0, scheduler, fixed_point_iterations=k)
            advance(invert_calls(k, S))
            decoded[(k, S)] = sample(model_fn, latent, scheduler, callback=lambda *_: advance(1))
    return decoded
