r"""Demo section (a): the exact Wasserstein-2 distance of DDIM's output law on Gaussian data.

For data N(μ, diag(c²)) the exact ε-predictor is affine in x_t, and a DDIM step (clipping off) is
linear in (x_t, model output m, noise z), so each step maps a Gaussian law to a Gaussian law:
x_prev = A·x_t + B + σ·z with A = P_x + P_m·g, B = P_m·h, where ε̂ = g·x_t + h and P_x, P_m, σ are
read off ``DDIMScheduler.step`` by stepping unit inputs. Mean and variance are propagated exactly
per dimension, and W2² = Σ_i (m_i − μ_i)² + (√v_i − c_i)² between two diagonal Gaussians.

The section also measures the flow-matching path on the same data (:mod:`ddim_sched.demo.flow`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..ddim.scheduler import DDIMScheduler
from .common import DemoSettings, demo_scheduler, gaussian_w2, loglog_slope, step_coefficients
from .flow import FLOW_ETAS, FLOW_STEPS, FlowGaussianTable, flow_table
from .paper import PAPER_ETAS, PAPER_STEPS, PAPER_TABLE1_FID
from .progress import Progress

DIM = 3072  # a CIFAR10 image


def gaussian_output_law(
    scheduler: DDIMScheduler,
    mean: torch.Tensor,
    std: torch.Tensor,
    eta: float,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float64,
    on_step: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-dimension mean and variance of DDIM's output for data N(mean, diag(std²)).

    x_T ~ N(0, I) at ``scheduler.timesteps[0]``; the model is the exact ε-predictor
    ε̂ = g·x_t + h with g = b/s², h = −a·b·μ/s², s² = a²c² + b², a = √ᾱ_t, b = √(1−ᾱ_t).

    Args:
        scheduler: An epsilon-prediction DDIMScheduler after ``set_timesteps``, without clipping or
            thresholding.
        mean, std: μ and c, [d].
        eta: η of every step.
        device, dtype: Where (default CPU) and in which dtype ``scheduler.step`` is run for the step
            coefficients.
        on_step: Called after each step (progress).

    Returns:
        (mean, variance) of the output law, [d] float64 CPU each.

    Raises:
        ValueError: The scheduler predicts something else than epsilon, or clips or thresholds.
    """
    config = scheduler.ddim_config
    if config.clip_sample or config.thresholding or config.prediction_type != "epsilon":
        raise ValueError("gaussian_output_law needs prediction_type='epsilon', clip_sample=False, thresholding=False")
    device = torch.device("cpu") if device is None else device
    mu = mean.to(torch.float64)
    c2 = std.to(torch.float64) ** 2
    alpha_bar = scheduler.alpha_bar
    m, v = torch.zeros_like(mu), torch.ones_like(mu)
    for t in scheduler.timesteps.tolist():
        p_x, p_m, sigma = step_coefficients(scheduler, t, eta, device, dtype)
        a2 = alpha_bar[t]
        a, b = a2.sqrt(), (1 - a2).sqrt()
        s2 = a2 * c2 + b * b
        g, h = b / s2, -a * b * mu / s2
        A, B = p_x + p_m * g, p_m * h
        m, v = A * m + B, A * A * v + sigma * sigma
        if on_step is not None:
            on_step()
    return m, v


def gaussian_data(dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The demo's Gaussian: means uniform in [−0.8, 0.8] (seeded), stds log-spaced from 0.01 to 0.5; float64 [d]."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.rand(dim, generator=generator, dtype=torch.float64) * 1.6 - 0.8
    std = torch.logspace(math.log10(0.01), math.log10(0.5), dim, dtype=torch.float64)
    return mean, std


def gaussian_table(
    steps: Sequence[int],
    etas: Sequence[float],
    dim: int,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = False,
) -> dict[tuple[float, int], float]:
    """Exact W2 of DDIM's output to the data for every (η, S), on the demo's scheduler."""
    mean, std = gaussian_data(dim, seed)
    bar = Progress("(a) exact Gaussian ", len(etas) * sum(steps), progress)
    table = {}
    for S in steps:
        scheduler = demo_scheduler()
        scheduler.set_timesteps(S)
        for eta in etas:
            m, v = gaussian_output_law(scheduler, mean, std, eta, device, dtype, on_step=bar.update)
            table[(eta, S)] = gaussian_w2(m, v, mean, std**2)
    bar.close()
    return table


@dataclass(frozen=True)
class GaussianResult:
    """Section (a): exact W2 of DDIM's output law to the data, per (η, S).

    Attributes:
        table: W2 per (η, S).
        steps, etas: The S and η measured.
        dim: The data's dimension.
        wall_time: Seconds the section took.
    """

    table: dict[tuple[float, int], float]
    steps: tuple[int, ...]
    etas: tuple[float, ...]
    dim: int
    wall_time: float
    name: str = "gaussian"
    flow: FlowGaussianTable | None = None

    @property
    def falls_with_steps(self) -> bool:
        """W2 falls with S at every η (the paper's Table 1 trend)."""
        pairs = list(zip(self.steps, self.steps[1:], strict=False))
        return all(self.table[(eta, a)] > self.table[(eta, b)] for eta in self.etas for a, b in pairs)

    @property
    def ordered_by_eta(self) -> bool:
        """W2 grows with η at every S (the paper's Table 1 trend)."""
        pairs = list(zip(self.etas, self.etas[1:], strict=False))
        return all(self.table[(a, S)] < self.table[(b, S)] for S in self.steps for a, b in pairs)

    def slopes(self) -> dict[float, float]:
        """Per η, the log-log slope of W2 against S over the S up to 100."""
        small = [S for S in self.steps if S <= 100]
        return {eta: loglog_slope(small, [self.table[(eta, S)] for S in small]) for eta in self.etas}

    def format(self) -> str:
        """The section's text: the table beside the paper's Table 1, the trends and the wall time."""
        lines = [
            f"(a) Gaussian data N(mu, diag(c^2)) in d={self.dim} dims (c log-spaced 0.01..0.5), exact eps-predictor, "
            "x_T ~ N(0, I).",
            "    Exact W2 distance of DDIM's output law to the data (no sampling; steps read from DDIMScheduler.step).",
            "    In brackets: the paper's Table 1 FID on CIFAR10 (a different metric and model: compare trends only).",
            "    " + "eta".ljust(6) + "".join(f"S={S}".rjust(19) for S in self.steps),
        ]
        for eta in self.etas:
            fids = dict(zip(PAPER_STEPS, PAPER_TABLE1_FID.get(eta, ()), strict=False))
            cells = "".join(
                f"{self.table[(eta, S)]:>9.4f} " + (f"[{fids[S]:>6.2f}] " if S in fids else " " * 9) for S in self.steps
            )
            lines.append("    " + f"{eta:<6g}" + cells.rstrip())
        slopes = ", ".join(f"eta={eta:g}: {slope:.2f}" for eta, slope in self.slopes().items())
        lines.append(f"    log-log slope of W2 against S over S<=100 (-1 would be W2 proportional to 1/S): {slopes}")
        eta_order = " < ".join(f"{eta:g}" for eta in self.etas)
        lines.append(
            f"    W2 falls with S at every eta: {'yes' if self.falls_with_steps else 'NO'}; "
            f"eta={eta_order} at every S: {'yes' if self.ordered_by_eta else 'NO'}"
        )
        if self.flow is not None:
            lines += self.flow.format_lines()
        lines.append(f"    wall time: {self.wall_time:.1f} s")
        return "\n".join(lines)


def run(settings: DemoSettings) -> GaussianResult:
    """Section (a) at full size, DDIM and the flow path (it takes about a second either way)."""
    start = time.perf_counter()
    table = gaussian_table(
        PAPER_STEPS, PAPER_ETAS, DIM, settings.seed, settings.device, settings.dtype, settings.progress
    )
    mean, std = gaussian_data(DIM, settings.seed)
    flow = flow_table(FLOW_STEPS, FLOW_ETAS, mean, std, settings.device, settings.dtype, settings.progress)
    flow_result = FlowGaussianTable(flow, FLOW_STEPS, FLOW_ETAS)
    return GaussianResult(table, PAPER_STEPS, PAPER_ETAS, DIM, time.perf_counter() - start, flow=flow_result)
