"""What every demo section shares: its settings, the scheduler configuration and the 2-D mixture."""

from __future__ import annotations

import contextlib
import logging
import math
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..compat.output import DDIMSchedulerOutput
from ..ddim.config import DDIMConfig
from ..ddim.scheduler import DDIMScheduler
from ..flow.scheduler import FlowMatchDDIMScheduler
from ..sampling.loops import InversionReport, invert, sample
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

DIVERGENCE_DOCS = "docs/demo.md, section 'Why some fixed-point inversions diverge'"
"""Where the divergences the demo summarises are explained."""
NOTE_WIDTH = 110  # characters per line of the demo's closing note


@dataclass(frozen=True)
class Divergence:
    """The inverse steps of one ``invert`` call where the fixed-point iteration diverged for some samples.

    Attributes:
        where: Which measurement made the call (e.g. ``"(c) round trips"``).
        iterations: k, the fixed-point iterations per step.
        steps: S of the schedule inverted.
        timesteps: The timesteps of the steps that diverged.
        worst: The largest relative residual over those steps (at the iterate each sample kept).
        median: The largest per-step median residual over those steps.
    """

    where: str
    iterations: int
    steps: int
    timesteps: tuple[int, ...]
    worst: float
    median: float

    @classmethod
    def from_report(cls, where: str, iterations: int, report: InversionReport) -> Divergence | None:
        """The diverged steps of ``report`` (None when none diverged)."""
        diverged = [i for i, flag in enumerate(report.diverged) if flag]
        if not diverged:
            return None
        return cls(
            where,
            iterations,
            len(report.timesteps),
            tuple(int(report.timesteps[i]) for i in diverged),  # the demo's schedulers are DDIM's: integers
            max(report.residuals[i] for i in diverged),
            max(report.median_residuals[i] for i in diverged),
        )


class _HoldInvertWarnings(logging.Filter):
    """Drops the per-step warnings ``invert`` logs (the demo reports them once, from the report)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.funcName == "invert" and record.levelno == logging.WARNING)


@contextlib.contextmanager
def held_invert_warnings() -> Iterator[None]:
    """Hold back ``invert``'s per-step warnings on the ``ddim_sched`` logger inside the block."""
    logger, held = logging.getLogger("ddim_sched"), _HoldInvertWarnings()
    logger.addFilter(held)
    try:
        yield
    finally:
        logger.removeFilter(held)


def invert_and_report(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    scheduler: DDIMScheduler,
    iterations: int,
    where: str,
    divergences: list[Divergence] | None,
) -> torch.Tensor:
    """``invert(model_fn, x0, scheduler, fixed_point_iterations=iterations)``; with a ``divergences`` list, the
    steps that diverged (k >= 1 only; their residuals cost no extra model call) are appended to it as one
    :class:`Divergence` instead of being logged as a warning per step."""
    if divergences is None or iterations == 0:  # classic inversion (k = 0) does not iterate, so cannot diverge
        return invert(model_fn, x0, scheduler, fixed_point_iterations=iterations)
    with held_invert_warnings():
        latent, report = invert(model_fn, x0, scheduler, fixed_point_iterations=iterations, return_report=True)
    divergence = Divergence.from_report(where, iterations, report)
    if divergence is not None:
        divergences.append(divergence)
    return latent


def format_divergences(divergences: Sequence[Divergence]) -> str | None:
    """One note on every fixed-point divergence of a demo run: what diverged, why that is expected, where the
    docs explain it (None when nothing diverged)."""
    if not divergences:
        return None
    count = sum(len(d.timesteps) for d in divergences)
    head = (
        f"Note: invert's fixed-point iteration (k >= 1) diverged for some samples at {count} inverse step(s). "
        "invert logs a warning for each such step; the demo held them back to summarise them here, with the "
        "largest relative residual ||step(x) - x_next|| / ||x_next|| of those steps:"
    )
    labels = [f"{d.where}, k={d.iterations}, S={d.steps}:" for d in divergences]
    width = max(len(label) for label in labels) + 1
    rows = [
        f"  {label:<{width}}timestep(s) {', '.join(map(str, d.timesteps))}; "
        f"residual max {d.worst:.2g}, median {d.median:.2g}"
        for label, d in zip(labels, divergences, strict=True)
    ]
    tail = (
        "Expected: the fixed-point map x <- x + (x_next - step(x)) / a contracts only where the model's eps-hat "
        "changes slowly over one step, which holds neither everywhere on the 2-D mixture nor for the learned digits "
        "model at coarse steps. A sample the iteration moves away keeps its best iterate, so no step ends further "
        "from a solution than classic inversion (k=0)."
    )
    lines = [
        textwrap.fill(head, NOTE_WIDTH),
        *rows,
        textwrap.fill(tail, NOTE_WIDTH),
        f"Explained in {DIVERGENCE_DOCS}.",
    ]
    return "\n".join(lines)


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


class CallCounter:
    """Wraps a ``model_fn(x, t)`` and counts its calls (``calls``); ``on_call()`` runs after each one."""

    def __init__(
        self,
        model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        on_call: Callable[[], None] | None = None,
    ) -> None:
        self.model_fn, self.on_call, self.calls = model_fn, on_call, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.model_fn(x, t)
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        return out


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
    divergences: list[Divergence] | None = None,
    where: str = "round trips",
    calls: dict[tuple[int, int], tuple[int, int]] | None = None,
) -> dict[tuple[int, int], torch.Tensor]:
    """(k, S) → the η = 0 decoding of ``invert(x0)`` with k fixed-point iterations, S steps each way, on
    ``scheduler``; ``advance(n)`` is called after every n model calls (progress). Inversions that
    diverge are appended to ``divergences`` (labelled ``where``) instead of logging a warning per step.
    With a ``calls`` dict, the model calls counted per (k, S) are stored in it as (encode, decode)."""
    decoded = {}
    counter = CallCounter(model_fn)
    for S in steps:
        scheduler.set_timesteps(S)
        for k in iterations:
            start = counter.calls
            latent = invert_and_report(counter, x0, scheduler, k, where, divergences)
            encoded = counter.calls - start
            advance(invert_calls(k, S))
            decoded[(k, S)] = sample(counter, latent, scheduler, callback=lambda *_: advance(1))
            if calls is not None:
                calls[(k, S)] = (encoded, counter.calls - start - encoded)
    return decoded
