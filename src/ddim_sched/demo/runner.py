"""Run the demo's sections in order and collect their results.

A section is a module with ``run(settings) -> result``, where the result has a ``name``, a
``wall_time`` and a ``format()`` method giving its text, and optionally ``divergences`` (the
inversions that diverged, summarised once at the end) and ``files`` (what it wrote). Adding a
section is one module and one entry in :data:`SECTIONS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .. import __version__
from . import digits, gaussian, mixture, roundtrip
from .common import DemoSettings, Divergence, cpu_threads, demo_config, format_divergences


class SectionResult(Protocol):
    """What a section returns: its name, the seconds it took, and its text."""

    name: str
    wall_time: float

    def format(self) -> str:
        """The section's text (a table and what it shows)."""
        ...


# name -> the section's run(settings); run() runs them in this order.
SECTIONS: dict[str, Callable[[DemoSettings], Any]] = {
    "gaussian": gaussian.run,
    "mixture": mixture.run,
    "roundtrip": roundtrip.run,
    "digits": digits.run,
}


@dataclass
class DemoResult:
    """Every section's result, by name, in the order run.

    Attributes:
        settings: How the demo ran.
        sections: Section name → its result (e.g. ``sections["mixture"]``).
        wall_time: Seconds for all sections.
    """

    settings: DemoSettings
    sections: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0

    @property
    def divergences(self) -> tuple[Divergence, ...]:
        """Every section's inversions that diverged for some samples, in the order run."""
        return tuple(d for result in self.sections.values() for d in getattr(result, "divergences", ()))

    @property
    def files(self) -> tuple[Path, ...]:
        """The files the sections wrote (the digits figures; the mixture figure is drawn by the caller)."""
        return tuple(path for result in self.sections.values() for path in getattr(result, "files", ()))

    def format(self) -> str:
        """The whole report: the header, each section's text, the divergence note, the total wall time."""
        parts = [format_header(self.settings)] + [result.format() for result in self.sections.values()]
        note = format_divergences(self.divergences)
        if note is not None:
            parts.append(note)
        return "\n\n".join(parts) + f"\n\ntotal wall time: {self.wall_time:.1f} s"


def format_header(settings: DemoSettings) -> str:
    """The report's first lines: what runs, on which scheduler, device and dtype."""
    config = demo_config()
    dtype = str(settings.dtype).removeprefix("torch.")
    return (
        f"ddim-sched demo {__version__}: DDIM (Song, Meng & Ermon 2020) on models with exact answers "
        "and on a learned digits model\n"
        f"scheduler: ddim_sched.DDIMScheduler, {config.beta_schedule} betas "
        f"{config.beta_start:g}..{config.beta_end:g}, "
        f"T={config.num_train_timesteps}, {config.timestep_spacing} spacing, clip_sample=False; "
        f"device={settings.device}, dtype={dtype}, seed={settings.seed}"
    )


def run(
    quick: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    sections: Sequence[str] | None = None,
    on_section: Callable[[Any], None] | None = None,
    figure_dir: str | Path | None = None,
) -> DemoResult:
    """Run the demo's sections and return their results (``print(result.format())`` for the report).

    Args:
        quick: Small sizes (seconds).
        seed: Seeds every random draw.
        device: Where the samplers run (a torch device or its name).
        dtype: torch.float32 or torch.float64.
        progress: Draw progress bars on stderr.
        sections: Names in :data:`SECTIONS` to run, in that order; None: all.
        on_section: Called with each section's result as soon as it is done.
        figure_dir: Where the digits section writes its PNGs (None: it draws none).

    Returns:
        A :class:`DemoResult`.

    Raises:
        ValueError: An unknown section name, or a dtype other than float32/float64.
    """
    names = list(SECTIONS) if sections is None else list(sections)
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise ValueError(f"sections must be names in {', '.join(map(repr, SECTIONS))}; got {unknown!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64; got {dtype!r}")
    settings = DemoSettings(
        quick, seed, torch.device(device), dtype, progress, None if figure_dir is None else Path(figure_dir)
    )
    result = DemoResult(settings)
    start = time.perf_counter()
    # The demo's tensors are small (at most a few thousand values per step): one CPU thread avoids the
    # per-op thread hand-off, which dominated (several times slower) on a 2-core machine.
    with cpu_threads(1):
        for name in names:
            section = SECTIONS[name](settings)
            result.sections[name] = section
            if on_section is not None:
                on_section(section)
    result.wall_time = time.perf_counter() - start
    return result
