"""Demo section (b): DDIM on a 2-D mixture of 8 Gaussians, measured by a Monte-Carlo sliced W2.

Every (S, η) cell starts from the same x_T draws and samples with the mixture's exact
posterior-mean denoiser through :func:`ddim_sched.sample`; its entry is the sliced W2 to fresh
data samples. The noise floor is the same distance between two independent data sets of that size:
a cell within the floor's range is indistinguishable from data at this sample size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..sampling.loops import sample
from ..toy import sliced_wasserstein
from .common import DemoSettings, demo_scheduler, ring_mixture
from .paper import PAPER_ETAS, PAPER_STEPS
from .progress import Progress

PROJECTIONS = 512
FLOOR_REPEATS = 10


@dataclass(frozen=True)
class MixtureResult:
    """Section (b): sliced W2 of DDIM samples to fresh data, per (η, S), and the data-vs-data floor.

    Attributes:
        table: Sliced W2 per (η, S).
        floor: The same distance between independent data sets of n samples, one per repeat.
        samples: The DDIM samples per (η, S), [n, 2] float64 CPU.
        reference: The data samples every cell is measured against, [n, 2] float64 CPU.
        steps, etas: The S and η sampled.
        n: Samples per cell.
        sampling_time, wall_time: Seconds spent sampling, and in the whole section.
    """

    table: dict[tuple[float, int], float]
    floor: tuple[float, ...]
    samples: dict[tuple[float, int], torch.Tensor]
    reference: torch.Tensor
    steps: tuple[int, ...]
    etas: tuple[float, ...]
    n: int
    sampling_time: float
    wall_time: float
    name: str = "mixture"

    @property
    def floor_max(self) -> float:
        """The top of the floor's range: cells at or below it are within the noise floor."""
        return max(self.floor)

    @property
    def floor_mean(self) -> float:
        """The floor's mean."""
        return sum(self.floor) / len(self.floor)

    @property
    def floor_sd(self) -> float:
        """The floor's sample standard deviation."""
        mean = self.floor_mean
        return math.sqrt(sum((f - mean) ** 2 for f in self.floor) / max(len(self.floor) - 1, 1))

    def within_floor(self, eta: float, steps: int) -> bool:
        """Whether the (η, S) cell is within the Monte-Carlo noise floor's range."""
        return self.table[(eta, steps)] <= self.floor_max

    def format(self) -> str:
        """The section's text: the table with '~' on cells within the floor, and what it resolves."""
        n = self.n
        lines = [
            f"(b) 2-D mixture of 8 Gaussians (std 0.1) on the unit circle, exact posterior-mean denoiser, {n} samples.",
            f"    Sliced W2 ({PROJECTIONS} directions) of DDIM samples to {n} fresh data samples. Noise floor "
            f"(data vs data, {len(self.floor)} draws):",
            f"    {self.floor_mean:.4f} +- {self.floor_sd:.4f} (range {min(self.floor):.4f}..{self.floor_max:.4f}); "
            "'~' marks cells within that range.",
            "    " + "eta".ljust(6) + "".join(f"S={S}".rjust(11) for S in self.steps),
        ]
        for eta in self.etas:
            cells = "".join(
                f"{self.table[(eta, S)]:>10.4f}" + ("~" if self.within_floor(eta, S) else " ") for S in self.steps
            )
            lines.append("    " + f"{eta:<6g}" + cells.rstrip())
        above = [S for S in self.steps if not any(self.within_floor(e, S) for e in self.etas)]
        within = [S for S in self.steps if all(self.within_floor(e, S) for e in self.etas)]
        lines.append(
            f"    Above the floor's range at every eta: S in {above or 'none'}; within it at every eta: S in "
            f"{within or 'none'}."
        )
        lines.append(
            f"    Differences between etas smaller than the floor's spread (+-{self.floor_sd:.4f}) are not resolved "
            f"at {n} samples."
        )
        lines.append(f"    wall time: {self.wall_time:.1f} s (sampling {self.sampling_time:.1f} s)")
        return "\n".join(lines)


def mixture_table(
    steps: Sequence[int], etas: Sequence[float], n: int, settings: DemoSettings, floor_repeats: int = FLOOR_REPEATS
) -> MixtureResult:
    """Sample every (η, S) cell, measure it and the noise floor."""
    start = time.perf_counter()
    seed = settings.seed
    scheduler = demo_scheduler()
    mixture = ring_mixture(scheduler)
    model_fn = mixture.model("epsilon")
    data_gen = torch.Generator().manual_seed(seed)
    reference = mixture.sample(n, generator=data_gen, dtype=torch.float64)

    def distance(x: torch.Tensor) -> float:
        # One projection set for every distance, so the floor and the table are measured alike.
        projections = torch.Generator().manual_seed(seed + 1)
        return sliced_wasserstein(x, reference, projections=PROJECTIONS, generator=projections)

    floor = tuple(distance(mixture.sample(n, generator=data_gen, dtype=torch.float64)) for _ in range(floor_repeats))
    bar = Progress("(b) 2-D mixture    ", len(etas) * sum(steps), settings.progress)
    table, samples = {}, {}
    for S in steps:
        scheduler.set_timesteps(S)
        for eta in etas:
            x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed + 2), dtype=settings.dtype)
            noise = torch.Generator().manual_seed(seed + 3)
            x0 = sample(
                model_fn, x_T.to(settings.device), scheduler, eta=eta, generator=noise, callback=lambda *_: bar.update()
            )
            samples[(eta, S)] = x0.to("cpu", torch.float64)
            table[(eta, S)] = distance(samples[(eta, S)])
    sampling_time = bar.close()
    return MixtureResult(
        table, floor, samples, reference, tuple(steps), tuple(etas), n, sampling_time, time.perf_counter() - start
    )


def run(settings: DemoSettings) -> MixtureResult:
    """Section (b): 2000 samples at the paper's S (quick: 400 samples, S = 10 and 100)."""
    if settings.quick:
        return mixture_table((10, 100), PAPER_ETAS, 400, settings)
    return mixture_table(PAPER_STEPS, PAPER_ETAS, 2000, settings)
