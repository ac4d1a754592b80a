"""Shared pieces of the benchmarks: the cases, machine description, and robust CPU timing.

diffusers is imported here and in the scripts beside this file only (never by ddim_sched).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# Stable Diffusion's scheduler settings, with clipping and thresholding switched per case.
SD_CONFIG = dict(
    beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False, steps_offset=1
)
CLIP_MODES = {
    "off": dict(clip_sample=False, thresholding=False),
    "clip": dict(clip_sample=True, thresholding=False),
    # DeepFloyd IF's thresholding settings.
    "threshold": dict(clip_sample=False, thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5),
}
SMALL = (1, 4, 64, 64)
LARGE = (16, 4, 128, 128)


def schedulers(clip: str, steps: int = 50, device: str | torch.device = "cpu"):
    """(diffusers DDIMScheduler, ddim_sched DDIMScheduler) with the same config and schedule."""
    import diffusers

    import ddim_sched

    config = {**SD_CONFIG, **CLIP_MODES[clip]}
    theirs, ours = diffusers.DDIMScheduler(**config), ddim_sched.DDIMScheduler(**config)
    theirs.set_timesteps(steps, device=device)
    ours.set_timesteps(steps, device=device)
    return theirs, ours


def inputs(shape, dtype, device="cpu", seed=0):
    """(sample, model_output, noise), the sample and noise scaled like latents mid-sampling."""
    g = torch.Generator().manual_seed(seed)
    x, m, z = torch.randn((3,) + tuple(shape), generator=g).unbind(0)
    return tuple(t.to(device=device, dtype=dtype).contiguous() for t in (2 * x, m, z))


def machine() -> str:
    """One line: CPU model, cores, torch version and threads."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return (
        f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} torch threads"
    )


@dataclass
class Timer:
    """Times several callables call by call, in interleaved rounds, and keeps every call's time.

    On a shared machine other processes steal cores for milliseconds at a time, and a stalled
    OpenMP thread stalls the whole op. Interleaving puts every contender through the same
    conditions; the fastest calls (``best``: the 10th percentile) estimate the undisturbed time,
    and the median is kept for transparency.
    """

    rounds: int = 7
    target_seconds: float = 0.05  # per contender per round
    samples: dict[str, list[float]] = field(default_factory=dict)

    def run(self, contenders: dict[str, Callable[[], object]]) -> None:
        calls = {}
        for name, fn in contenders.items():
            fn()  # warm-up: caches, allocator, lazy tables
            start = time.perf_counter()
            fn()
            once = time.perf_counter() - start
            calls[name] = max(1, min(500, int(self.target_seconds / max(once, 1e-7))))
        for _ in range(self.rounds):
            for name, fn in contenders.items():
                times = self.samples.setdefault(name, [])
                for _ in range(calls[name]):
                    start = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - start)

    def best(self, name: str) -> float:
        times = sorted(self.samples[name])
        return times[len(times) // 10]

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])


def fmt_us(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:,.0f}" if us >= 100 else f"{us:.1f}"
