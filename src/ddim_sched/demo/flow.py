r"""The flow-matching rows of demo section (a): exact W2 of :class:`~ddim_sched.FlowMatchDDIMScheduler`'s
output law on section (a)'s Gaussian data.

On the rectified-flow path x_σ = (1 − σ)·x0 + σ·ε the exact velocity predictor u = E[ε − x0 | x_σ] is affine
per dimension for data N(μ, c²): u = g·x + h with g = (b − a·c²)/s², h = −a·μ·g − μ, where a = 1 − σ,
b = σ, s² = a²c² + b². A step x_s = P_x·x + P_m·u + σ_z·z (read off ``FlowMatchDDIMScheduler.step`` by
stepping unit inputs, as section (a) does for DDIM) maps a Gaussian law to a Gaussian law, so the output
law is propagated exactly from x at σ = 1, which is N(0, I) exactly. η = ∞ stands for the re-noise end
(``stochastic_sampling=True``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..flow.scheduler import FlowMatchDDIMScheduler
from .common import gaussian_w2, loglog_slope, step_coefficients
from .progress import Progress

# SD3's scheduler config (FlowMatchEulerDiscreteScheduler with shift 3).
FLOW_SHIFT = 3.0
# η of the rows: DDIM's four and the re-noise end (η = ∞, stochastic_sampling).
FLOW_ETAS: tuple[float, ...] = (0.0, 0.2, 0.5, 1.0, math.inf)
FLOW_STEPS: tuple[int, ...] = (10, 20, 50, 100)


def flow_scheduler(steps: int, eta: float) -> FlowMatchDDIMScheduler:
    """SD3's flow scheduler with η (η = ∞: ``stochastic_sampling=True``) after ``set_timesteps(steps)``."""
    renoise = math.isinf(eta)
    scheduler = FlowMatchDDIMScheduler(shift=FLOW_SHIFT, stochastic_sampling=renoise, eta=0.0 if renoise else eta)
    scheduler.set_timesteps(steps)
    return scheduler


def flow_output_law(
    scheduler: FlowMatchDDIMScheduler,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float64,
    on_step: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-dimension mean and variance of the scheduler's output (its configured η) for data
    N(mean, diag(std²)), from x ~ N(0, I) at σ = 1, with the exact velocity predictor.

    Returns:
        (mean, variance), [d] float64 CPU each.
    """

    device = torch.device("cpu") if device is None else device
    mu, c2 = mean.to(torch.float64), std.to(torch.float64) ** 2
    m, v = torch.zeros_like(mu), torch.ones_like(mu)
    levels = scheduler.noise_levels
    for i, t in enumerate(scheduler.timesteps):
        p_x, p_m, sigma = step_coefficients(scheduler, t, None, device, dtype)
        a, b = 1 - levels[i], levels[i]
        g = (b - a * c2) / (a * a * c2 + b * b)
        h = -a * mu * g - mu
        A, B = p_x + p_m * g, p_m * h
        m, v = A * m + B, A * A * v + sigma * sigma
        if on_step is not None:
            on_step()
    return m, v


def flow_table(
    steps: Sequence[int], etas: Sequence[float], mean: torch.Tensor, std: torch.Tensor, device: torch.device,
    dtype: torch.dtype, progress: bool = False,
) -> dict[tuple[float, int], float]:  # fmt: skip
    """Exact W2 of the flow scheduler's output to the data N(mean, diag(std²)) for every (η, S)."""

    bar = Progress("(a) exact Gaussian, flow path ", len(etas) * sum(steps), progress)
    table = {}
    for S in steps:
        for eta in etas:
            m, v = flow_output_law(flow_scheduler(S, eta), mean, std, device, dtype, on_step=bar.update)
            table[(eta, S)] = gaussian_w2(m, v, mean, std**2)
    bar.close()
    return table


def _label(eta: float) -> str:
    return "renoise" if math.isinf(eta) else f"{eta:g}"


@dataclass(frozen=True)
class FlowGaussianTable:
    """W2 of the flow scheduler's output law per (η, S) (η = ∞: the re-noise end), and what it shows."""

    table: dict[tuple[float, int], float]
    steps: tuple[int, ...]
    etas: tuple[float, ...]

    @property
    def falls_with_steps(self) -> bool:
        """W2 falls with S at every η."""
        pairs = list(zip(self.steps, self.steps[1:], strict=False))
        return all(self.table[(eta, a)] > self.table[(eta, b)] for eta in self.etas for a, b in pairs)

    def order(self, S: int) -> list[float]:
        """The η sorted by W2 at S steps, best first."""
        return sorted(self.etas, key=lambda eta: self.table[(eta, S)])

    @property
    def ordered_by_eta(self) -> bool:
        """W2 grows with η (re-noise last) at every S."""
        return all(self.order(S) == sorted(self.etas) for S in self.steps)

    def format_lines(self) -> list[str]:
        """The table and its trends, as lines of section (a)'s text."""
        lines = [
            f"    Flow matching (rectified flow x = (1-s)*x0 + s*eps, SD3's shift={FLOW_SHIFT:g}): the same data, "
            "exact velocity predictor, x ~ N(0, I) at s = 1;",
            "    steps read from FlowMatchDDIMScheduler.step (eta=0 is diffusers' FlowMatchEuler step, 'renoise' its "
            "stochastic_sampling).",
            "    " + "eta".ljust(8) + "".join(f"S={S}".rjust(10) for S in self.steps),
        ]
        for eta in self.etas:
            lines.append("    " + _label(eta).ljust(8) + "".join(f"{self.table[(eta, S)]:>10.4f}" for S in self.steps))
        small = [S for S in self.steps if S <= 100]
        slopes = ", ".join(
            f"{_label(eta)}: {loglog_slope(small, [self.table[(eta, S)] for S in small]):.2f}" for eta in self.etas
        )
        lines.append(f"    log-log slope of W2 against S: {slopes}")
        eta_order = " < ".join(_label(eta) for eta in sorted(self.etas))
        lines.append(
            f"    W2 falls with S at every eta: {'yes' if self.falls_with_steps else 'NO'}; "
            f"{eta_order} at every S: {'yes' if self.ordered_by_eta else 'NO'}"
        )
        if not self.ordered_by_eta:
            for S in self.steps:
                lines.append(f"    W2 order at S={S} (best first): " + " < ".join(_label(eta) for eta in self.order(S)))
        return lines
