"""Demo section (c): encode → decode round trips with :func:`ddim_sched.invert` and :func:`ddim_sched.sample`.

Data samples of the 2-D mixture are encoded to x_T with ``k`` fixed-point iterations per step and
decoded with the scheduler's own η = 0 loop; the entry is the mean squared error per dimension on
the [0, 1] scale (data/2 + 1/2, as the paper's pixels), beside the paper's Table 2.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .common import DemoSettings, Divergence, demo_scheduler, ring_mixture, round_trip_calls, round_trips
from .paper import PAPER_TABLE2_MSE
from .progress import Progress


@dataclass(frozen=True)
class RoundTripResult:
    """Section (c): round-trip MSE per (fixed-point iterations k, S).

    Attributes:
        table: MSE per dimension on the [0, 1] scale, per (k, S).
        steps: The S measured.
        iterations: The k measured.
        n: Data samples encoded.
        wall_time: Seconds the section took.
        divergences: The inversions whose fixed-point iteration diverged for some samples at some steps.
    """

    table: dict[tuple[int, int], float]
    steps: tuple[int, ...]
    iterations: tuple[int, ...]
    n: int
    wall_time: float
    name: str = "roundtrip"
    divergences: tuple[Divergence, ...] = ()

    def falls_with_steps(self, k: int) -> bool:
        """Whether the error falls with S for ``k`` iterations."""
        values = [self.table[(k, S)] for S in self.steps]
        return all(a > b for a, b in zip(values, values[1:], strict=False))

    def format(self) -> str:
        """The section's text: one row per k, then the paper's Table 2."""
        lines = [
            f"(c) Encode -> decode round trip (ddim_sched.invert, then the eta=0 loop) on {self.n} samples of the "
            "2-D mixture.",
            "    MSE per dimension on the [0, 1] scale (data/2 + 1/2); the paper's Table 2 (CIFAR10) in the last row.",
            "    " + "".ljust(18) + "".join(f"S={S}".rjust(10) for S in self.steps),
        ]
        for k in self.iterations:
            cells = "".join(f"{self.table[(k, S)]:>10.2e}" for S in self.steps)
            lines.append("    " + f"fixed-point it. {k}".ljust(18) + cells)
        paper = "".join(f"{PAPER_TABLE2_MSE[S]:>10.2e}" if S in PAPER_TABLE2_MSE else " " * 10 for S in self.steps)
        lines.append("    " + "paper Table 2".ljust(18) + paper)
        lines.append(f"    wall time: {self.wall_time:.1f} s")
        return "\n".join(lines)


def roundtrip_table(steps: Sequence[int], iterations: Sequence[int], n: int, settings: DemoSettings) -> RoundTripResult:
    """Encode n data samples with k fixed-point iterations, decode, and measure, for every (k, S)."""
    start = time.perf_counter()
    scheduler = demo_scheduler()
    mixture = ring_mixture(scheduler)
    model_fn = mixture.model("epsilon")
    generator = torch.Generator().manual_seed(settings.seed + 4)
    x0 = mixture.sample(n, generator=generator, device=settings.device, dtype=settings.dtype)
    bar = Progress("(c) round trips    ", round_trip_calls(steps, iterations), settings.progress)
    divergences: list[Divergence] = []
    decoded = round_trips(model_fn, x0, scheduler, steps, iterations, bar.update, divergences, "(c) round trips")
    # Data in [-1, 1] map to pixels in [0, 1] by x/2 + 1/2: the MSE scales by 1/4.
    table = {cell: float(((out - x0).to(torch.float64) ** 2).mean() / 4) for cell, out in decoded.items()}
    bar.close()
    seconds = time.perf_counter() - start
    return RoundTripResult(table, tuple(steps), tuple(iterations), n, seconds, divergences=tuple(divergences))


def run(settings: DemoSettings) -> RoundTripResult:
    """Section (c): 256 samples, k = 0 and 2, S from 10 to 1000 (quick: 64 samples, k = 0 and 1, S = 10 and 50)."""
    if settings.quick:
        return roundtrip_table((10, 50), (0, 1), 64, settings)
    return roundtrip_table((10, 20, 50, 100, 200, 500, 1000), (0, 2), 256, settings)
