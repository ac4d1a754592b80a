r"""The ``ddim-sched`` command (also ``python -m ddim_sched``): ``demo``, ``schedule`` and ``compare``.

``demo`` measures the trends of the DDIM paper's Tables 1 and 2 (Song, Meng & Ermon 2020) on
data whose optimal denoiser is known exactly (:mod:`ddim_sched.toy`), through this library's own
:class:`~ddim_sched.DDIMScheduler`:

(a) Gaussian data N(μ, diag(c²)). The exact ε-predictor is affine in x_t, and a DDIM step is linear
    in (x_t, model output, noise z), so each step maps a Gaussian law to a Gaussian law:
    x_prev = A·x_t + B + σ·z with A = P_x + P_m·g, B = P_m·h, where ε̂ = g·x_t + h and P_x, P_m, σ are
    read off ``DDIMScheduler.step`` by stepping unit inputs. Mean and variance are propagated exactly
    per dimension; the Wasserstein-2 distance between two diagonal Gaussians is
    W2² = Σ_i (m_i − μ_i)² + (√v_i − c_i)².
(b) A 2-D mixture of 8 Gaussians on a circle with its exact posterior-mean denoiser: samples per
    (S, η), a Monte-Carlo sliced W2 to fresh data samples, and that distance's noise floor (data
    against data), plus a PNG figure when matplotlib (the ``demo`` extra) is installed.
(c) Encode → decode round trips with ``ddim_sched.invert`` when the library provides it.

Exit status: 0 success, 1 a ``compare`` mismatch, 2 a usage error (bad flag value, missing file).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from . import __version__, kernel
from .config import DIFFUSERS_FIELDS, PREDICTION_TYPES, PREV_TIMESTEP_RULES, DDIMConfig
from .config_io import read_config
from .sampling import invert, sample
from .scheduler import DDIMScheduler
from .schedules import BETA_SCHEDULES
from .spacing import SPACINGS
from .toy import GaussianMixture, sliced_wasserstein

PROG = "ddim-sched"
DEMO_EXTRA_HINT = 'pip install "ddim_sched[demo]"  (or: pip install matplotlib)'

# DDIM paper (Song, Meng & Ermon 2020), Table 1: CIFAR10 FID for S steps × η (REFERENCE.md §6).
PAPER_STEPS = (10, 20, 50, 100, 1000)
PAPER_ETAS = (0.0, 0.2, 0.5, 1.0)
PAPER_TABLE1_FID = {
    0.0: (13.36, 6.84, 4.67, 4.16, 4.04),
    0.2: (14.04, 7.11, 4.77, 4.25, 4.09),
    0.5: (16.66, 8.35, 5.25, 4.46, 4.29),
    1.0: (41.07, 18.36, 8.01, 5.78, 4.73),
}
# Table 2: CIFAR10 encode(S) + decode(S) reconstruction MSE per dimension, [0, 1] pixel scale.
PAPER_TABLE2_MSE = {10: 0.014, 20: 0.0065, 50: 0.0023, 100: 0.0009, 200: 0.0004, 500: 0.0001, 1000: 0.0001}

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Default pass bound of `compare`: relative L2 error per step, per sample dtype. diffusers keeps its
# tables in float32 (and does half arithmetic in half); these are the bounds the test suite uses.
COMPARE_RTOL = {torch.float64: 1e-4, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}


class UsageError(Exception):
    """A bad flag value or a missing file: reported as ``ddim-sched <cmd>: error: ...``, exit code 2."""


# ---------------------------------------------------------------------- progress bar


class Progress:
    """A minimal progress bar on stderr: ``label [#####-----] 12/40 1.3s``, redrawn at most 10×/s."""

    def __init__(self, label: str, total: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.label, self.total, self.enabled = label, max(int(total), 1), enabled
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self.start = self._last = time.perf_counter()
        # Redraw in place on a terminal; elsewhere (logs, pipes) write only the finished bar.
        self._live = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        if self._live:
            self._draw()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units of work."""
        self.count += n
        if not self._live:
            return
        now = time.perf_counter()
        if now - self._last >= 0.1 or self.count >= self.total:
            self._last = now
            self._draw()

    def close(self) -> float:
        """Finish the bar and return the elapsed wall time in seconds."""
        elapsed = time.perf_counter() - self.start
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
        return elapsed

    def _draw(self) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * min(self.count, self.total) / self.total)
        elapsed = time.perf_counter() - self.start
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'-' * (width - filled)}] {self.count}/{self.total} {elapsed:.1f}s"
        )
        self.stream.flush()


# ---------------------------------------------------------------------- flag parsing helpers


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"--device: {text!r} is not a torch device ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {text}: CUDA is not available on this machine")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError(f"--device {text}: MPS is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device: use cpu, cuda[:N] or mps; got {text!r}")
    return device


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return value


def _eta(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0; got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0; got {text!r}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected dimensions like 4,8,8; got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive dimensions like 4,8,8; got {text!r}")
    return dims


def _figure_path(out: str | None, default_name: str) -> Path:
    """--out as a .png file, or a directory to write ``default_name`` into; parents are created."""
    path = Path(out) if out else Path(default_name)
    if path.suffix.lower() != ".png":
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out: {str(path)!r} is an existing file that is not a .png; pass a directory or a .png path")
        path = path / default_name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out: cannot create directory {str(path.parent)!r}: {err.strerror}") from None
    return path


def _writable_file(option: str, out: str) -> Path:
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"{option}: {out!r} is a directory; pass a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{option}: cannot create directory {str(path.parent)!r}: {err.strerror}") from None
    return path


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op CPU threads, restoring the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _pyplot_free_figure() -> Any:
    """matplotlib's Figure class (no pyplot, no global backend), or None when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


# ---------------------------------------------------------------------- scheduler config flags

_CHOICES: dict[str, Iterable[str]] = {
    "beta_schedule": BETA_SCHEDULES,
    "prediction_type": PREDICTION_TYPES,
    "timestep_spacing": SPACINGS,
    "prev_timestep_rule": PREV_TIMESTEP_RULES,
}


def _flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """--config PATH plus one flag per DDIMConfig field (trained_betas only through --config)."""
    group = parser.add_argument_group(
        "scheduler configuration",
        "A scheduler_config.json (or the directory holding it) and/or single fields; flags override "
        "the file. Unset fields take diffusers' DDIMScheduler defaults.",
    )
    group.add_argument("--config", metavar="PATH", help="scheduler_config.json, or a directory containing one")
    defaults = DDIMConfig()
    for f in dataclasses.fields(DDIMConfig):
        if f.name == "trained_betas":
            continue
        default = getattr(defaults, f.name)
        flag = _flag_name(f.name)
        help_text = f"default {default!r}"
        if isinstance(default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name in _CHOICES:
            group.add_argument(flag, dest=f.name, choices=list(_CHOICES[f.name]), default=None, help=help_text)
        elif isinstance(default, int):
            group.add_argument(flag, dest=f.name, type=int, default=None, metavar="N", help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=float, default=None, metavar="X", help=help_text)


def _config_from_args(args: argparse.Namespace) -> tuple[DDIMConfig, dict[str, Any], dict[str, Any]]:
    """(validated config, the file's raw mapping, the flag overrides) from --config and field flags."""
    data: dict[str, Any] = {}
    if args.config is not None:
        try:
            data = read_config(args.config)
        except FileNotFoundError as err:
            raise UsageError(f"--config: {err}") from None
        except (ValueError, OSError) as err:
            raise UsageError(f"--config: {err}") from None
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(DDIMConfig)
        if f.name != "trained_betas" and getattr(args, f.name, None) is not None
    }
    try:
        config = DDIMConfig.from_mapping(data, **overrides)
    except (TypeError, ValueError) as err:
        message = str(err)
        match = re.match(r"(\w+) ", message)
        field = match.group(1) if match else None
        if field in overrides:
            where = f"{_flag_name(field)} {overrides[field]!r}: "
        elif field in data:
            where = f"--config {args.config}: field {field!r}: "
        else:
            where = "invalid scheduler configuration: "
        raise UsageError(where + message) from None
    return config, data, overrides


def _set_timesteps(scheduler: DDIMScheduler, steps: int, device: torch.device | None = None) -> None:
    try:
        scheduler.set_timesteps(steps, device=device)
    except ValueError as err:
        message = str(err)
        config = scheduler.ddim_config
        if message.startswith("num_inference_steps"):
            where = f"--steps {steps}"
        elif message.startswith("steps_offset"):
            where = f"--steps-offset {config.steps_offset} with --steps {steps}"
        elif "alpha_bar is 0" in message:
            where = f"--prediction-type {config.prediction_type} with --timestep-spacing {config.timestep_spacing}"
        else:
            where = "invalid schedule"
        raise UsageError(f"{where}: {message}") from None


# ---------------------------------------------------------------------- demo (a): exact Gaussian W2


def step_coefficients(
    scheduler: DDIMScheduler, t: int, eta: float, device: torch.device, dtype: torch.dtype
) -> tuple[float, float, float]:
    """(P_x, P_m, σ) with x_prev = P_x·x_t + P_m·m + σ·z, read from ``scheduler.step`` by stepping unit inputs.

    The scheduler must have clipping and thresholding off (the step is then linear); the three
    unit vectors (x_t, m, z) = e_1, e_2, e_3 are stepped as one batch of three in ``dtype``.
    """
    eye = torch.eye(3, dtype=dtype, device=device)
    sample, model_output, noise = eye[:, 0:1], eye[:, 1:2], eye[:, 2:3]
    prev, _ = scheduler.step(model_output, t, sample, eta=eta, variance_noise=noise, return_dict=False)
    p_x, p_m, sigma = prev.reshape(3).to("cpu", torch.float64).tolist()
    return p_x, p_m, sigma


def gaussian_output_law(
    scheduler: DDIMScheduler,
    mean: torch.Tensor,
    std: torch.Tensor,
    eta: float,
    device: torch.device = torch.device("cpu"),
    dtype: torch.dtype = torch.float64,
    on_step: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-dimension mean and variance of DDIM's output for data N(mean, diag(std²)).

    x_T ~ N(0, I) at ``scheduler.timesteps[0]``; the model is the exact ε-predictor
    ε̂ = g·x_t + h with g = b/s², h = −a·b·μ/s², s² = a²c² + b², a = √ᾱ_t, b = √(1−ᾱ_t).
    The scheduler must be an epsilon-prediction DDIMScheduler after ``set_timesteps``, without
    clipping or thresholding. Mean/variance propagation runs in float64 on the CPU; the step
    coefficients come from ``scheduler.step`` run in ``dtype`` on ``device``.
    """
    config = scheduler.ddim_config
    if config.clip_sample or config.thresholding or config.prediction_type != "epsilon":
        raise ValueError("gaussian_output_law needs prediction_type='epsilon', clip_sample=False, thresholding=False")
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


def gaussian_w2(mean_a: torch.Tensor, var_a: torch.Tensor, mean_b: torch.Tensor, var_b: torch.Tensor) -> float:
    """Exact W2 between N(mean_a, diag(var_a)) and N(mean_b, diag(var_b))."""
    w2_sq = ((mean_a - mean_b) ** 2).sum() + ((var_a.sqrt() - var_b.sqrt()) ** 2).sum()
    return float(w2_sq.sqrt())


def demo_gaussian_data(dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The demo's Gaussian: means uniform in [−0.8, 0.8] (seeded), stds log-spaced from 0.01 to 0.5."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.rand(dim, generator=generator, dtype=torch.float64) * 1.6 - 0.8
    std = torch.logspace(math.log10(0.01), math.log10(0.5), dim, dtype=torch.float64)
    return mean, std


def demo_config() -> DDIMConfig:
    """diffusers' DDIMScheduler defaults (DDPM's CIFAR10 betas, leading spacing) without clipping."""
    return DDIMConfig(clip_sample=False)


def gaussian_table(
    steps: Sequence[int],
    etas: Sequence[float],
    dim: int,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = True,
) -> dict[tuple[float, int], float]:
    """Exact W2 of DDIM's output to the data for every (η, S)."""
    mean, std = demo_gaussian_data(dim, seed)
    bar = Progress("(a) exact Gaussian ", len(etas) * sum(steps), progress)
    table = {}
    for S in steps:
        scheduler = DDIMScheduler.from_config(demo_config())
        scheduler.set_timesteps(S)
        for eta in etas:
            m, v = gaussian_output_law(scheduler, mean, std, eta, device, dtype, on_step=bar.update)
            table[(eta, S)] = gaussian_w2(m, v, mean, std**2)
    bar.close()
    return table


# ---------------------------------------------------------------------- demo (b): 2-D mixture


def demo_mixture(scheduler: DDIMScheduler) -> GaussianMixture:
    """8 isotropic Gaussians (std 0.1) evenly spaced on the unit circle."""
    return GaussianMixture.ring(8, radius=1.0, std=0.1, alpha_bar=scheduler)


def mixture_table(
    steps: Sequence[int],
    etas: Sequence[float],
    n: int,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    floor_repeats: int = 10,
    progress: bool = True,
) -> tuple[dict[tuple[float, int], float], list[float], dict[tuple[float, int], torch.Tensor], torch.Tensor]:
    """Sliced W2 of DDIM samples to fresh data samples per (η, S), the data-vs-data floor, samples, data."""
    scheduler = DDIMScheduler.from_config(demo_config())
    mixture = demo_mixture(scheduler)
    model_fn = mixture.model("epsilon")
    data_gen = torch.Generator().manual_seed(seed)
    reference = mixture.sample(n, generator=data_gen, dtype=torch.float64)
    # One projection set for every distance, so the floor and the table are measured alike.
    proj_seed = seed + 1

    def distance(x: torch.Tensor) -> float:
        return sliced_wasserstein(x, reference, projections=512, generator=torch.Generator().manual_seed(proj_seed))

    floor = [distance(mixture.sample(n, generator=data_gen, dtype=torch.float64)) for _ in range(floor_repeats)]
    bar = Progress("(b) 2-D mixture    ", len(etas) * sum(steps), progress)
    table, samples = {}, {}
    for S in steps:
        scheduler.set_timesteps(S)
        for eta in etas:
            x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed + 2), dtype=dtype).to(device)
            noise_gen = torch.Generator().manual_seed(seed + 3)
            x0 = sample(model_fn, x_T, scheduler, eta=eta, generator=noise_gen, callback=lambda *_: bar.update())
            samples[(eta, S)] = x0.to("cpu", torch.float64)
            table[(eta, S)] = distance(samples[(eta, S)])
    bar.close()
    return table, floor, samples, reference


def draw_mixture_figure(
    path: Path,
    samples: Mapping[tuple[float, int], torch.Tensor],
    table: Mapping[tuple[float, int], float],
    reference: torch.Tensor,
    steps: Sequence[int],
    etas: Sequence[float],
) -> bool:
    """Scatter each (η, S) sample set over the true log-density; False when matplotlib is missing."""
    Figure = _pyplot_free_figure()
    if Figure is None:
        return False
    mixture = demo_mixture(DDIMScheduler.from_config(demo_config()))
    lim = 1.6
    grid = torch.linspace(-lim, lim, 150, dtype=torch.float64)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    log_density = mixture.log_prob(torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)).reshape(gx.shape)
    top = float(log_density.max())
    levels = [top - 9.0, top - 4.5, top - 2.0, top - 0.5, top + 1e-9]  # flat fills keep the PNG small
    rows, cols = len(etas), len(steps) + 1
    fig = Figure(figsize=(2.0 * cols, 2.0 * rows + 0.5), dpi=72)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, eta in enumerate(etas):
        panels = [("data", reference)] + [(f"S={S}", samples[(eta, S)]) for S in steps]
        for j, (title, points) in enumerate(panels):
            ax = axes[i][j]
            ax.contourf(gx.numpy(), gy.numpy(), log_density.numpy(), levels=levels, cmap="Greys", alpha=0.5)
            shown = points[:1000].numpy()
            ax.scatter(shown[:, 0], shown[:, 1], s=1.5, c="tab:red" if j else "tab:blue", linewidths=0)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if j:
                ax.set_title(f"{title}  SW2={table[(eta, steps[j - 1])]:.3f}", fontsize=8)
            else:
                ax.set_title("data" if i == 0 else "", fontsize=8)
                ax.set_ylabel(f"η = {eta:g}", fontsize=10)
    fig.suptitle("DDIM with the exact denoiser of an 8-mode Gaussian mixture (ddim-sched demo)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True


# ---------------------------------------------------------------------- demo (c): round trips


def roundtrip_table(
    steps: Sequence[int],
    iterations: Sequence[int],
    n: int,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool = True,
) -> dict[tuple[int, int], float]:
    """encode(S) → decode(S) MSE per dimension on the [0, 1] scale, per (fixed-point iterations, S).

    """
    scheduler = DDIMScheduler.from_config(demo_config())
    mixture = demo_mixture(scheduler)
    model_fn = mixture.model("epsilon")
    x0 = mixture.sample(n, generator=torch.Generator().manual_seed(seed + 4), device=device, dtype=dtype)
    bar = Progress("(c) round trips    ", sum((k + 2) * S for k in iterations for S in steps), progress)
    table = {}
    for S in steps:
        scheduler.set_timesteps(S)
        for k in iterations:
            latent = invert(model_fn, x0, scheduler, fixed_point_iterations=k)
            bar.update((k + 1) * S)
            decoded = sample(model_fn, latent, scheduler, callback=lambda *_: bar.update())
            # Data in [-1, 1] map to pixels in [0, 1] by x/2 + 1/2: MSE scales by 1/4.
            table[(k, S)] = float(((decoded - x0).to(torch.float64) ** 2).mean() / 4)
    bar.close()
    return table


# ---------------------------------------------------------------------- commands


def _loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def cmd_demo(args: argparse.Namespace) -> int:
    # The demo's tensors are small (at most a few thousand values per step): one CPU thread avoids
    # the per-op thread hand-off, which dominated (several times slower) on a 2-core machine.
    with _threads(1):
        return _run_demo(args)


def _run_demo(args: argparse.Namespace) -> int:
    device, dtype = _device(args.device), DTYPES[args.dtype]
    figure = None if args.no_figure else _figure_path(args.out, "ddim-sched-demo.png")
    progress = not args.no_progress
    quick = args.quick
    out = sys.stdout
    total_start = time.perf_counter()
    print(f"ddim-sched demo {__version__}: DDIM (Song, Meng & Ermon 2020) on models with exact answers", file=out)
    config = demo_config()
    print(
        f"scheduler: ddim_sched.DDIMScheduler, {config.beta_schedule} betas {config.beta_start:g}..{config.beta_end:g}, "
        f"T={config.num_train_timesteps}, {config.timestep_spacing} spacing, clip_sample=False; "
        f"device={device}, dtype={args.dtype}, seed={args.seed}",
        file=out,
    )

    # (a)
    dim = 3072
    start = time.perf_counter()
    table_a = gaussian_table(PAPER_STEPS, PAPER_ETAS, dim, args.seed, device, dtype, progress)
    elapsed_a = time.perf_counter() - start
    print(file=out)
    print(
        f"(a) Gaussian data N(mu, diag(c^2)) in d={dim} dims (c log-spaced 0.01..0.5), exact eps-predictor, "
        "x_T ~ N(0, I).\n"
        "    Exact W2 distance of DDIM's output law to the data (no sampling; steps read from DDIMScheduler.step).\n"
        "    In brackets: the paper's Table 1 FID on CIFAR10 (a different metric and model: compare trends only).",
        file=out,
    )
    header = "    " + "eta".ljust(6) + "".join(f"S={S}".rjust(19) for S in PAPER_STEPS)
    print(header, file=out)
    for eta, fids in PAPER_TABLE1_FID.items():
        cells = "".join(f"{table_a[(eta, S)]:>9.4f} [{fid:>6.2f}] " for S, fid in zip(PAPER_STEPS, fids))
        print("    " + f"{eta:<6g}" + cells.rstrip(), file=out)
    slopes = ", ".join(
        f"eta={eta:g}: {_loglog_slope(PAPER_STEPS[:4], [table_a[(eta, S)] for S in PAPER_STEPS[:4]]):.2f}"
        for eta in PAPER_ETAS
    )
    print(f"    log-log slope of W2 against S over S=10..100 (-1 would be W2 proportional to 1/S): {slopes}", file=out)
    ordered = all(
        table_a[(e1, S)] < table_a[(e2, S)] for S in PAPER_STEPS for e1, e2 in zip(PAPER_ETAS, PAPER_ETAS[1:])
    )
    falling = all(
        table_a[(eta, S1)] > table_a[(eta, S2)] for eta in PAPER_ETAS for S1, S2 in zip(PAPER_STEPS, PAPER_STEPS[1:])
    )
    print(
        f"    W2 falls with S at every eta: {'yes' if falling else 'NO'}; "
        f"eta=0 < 0.2 < 0.5 < 1 at every S: {'yes' if ordered else 'NO'}",
        file=out,
    )
    print(f"    wall time: {elapsed_a:.1f} s", file=out)

    # (b)
    n = 400 if quick else 2000
    steps_b = (10, 100) if quick else PAPER_STEPS
    start = time.perf_counter()
    table_b, floor, samples, reference = mixture_table(steps_b, PAPER_ETAS, n, args.seed, device, dtype, progress=progress)
    elapsed_b = time.perf_counter() - start
    floor_mean = sum(floor) / len(floor)
    floor_sd = math.sqrt(sum((f - floor_mean) ** 2 for f in floor) / max(len(floor) - 1, 1))
    print(file=out)
    print(
        f"(b) 2-D mixture of 8 Gaussians (std 0.1) on the unit circle, exact posterior-mean denoiser, {n} samples.\n"
        f"    Sliced W2 (512 directions) of DDIM samples to {n} fresh data samples. Noise floor (data vs data, "
        f"{len(floor)} draws):\n"
        f"    {floor_mean:.4f} +- {floor_sd:.4f} (range {min(floor):.4f}..{max(floor):.4f}); "
        "'~' marks cells within that range.",
        file=out,
    )
    print("    " + "eta".ljust(6) + "".join(f"S={S}".rjust(11) for S in steps_b), file=out)
    for eta in PAPER_ETAS:
        cells = ""
        for S in steps_b:
            value = table_b[(eta, S)]
            cells += f"{value:>10.4f}" + ("~" if value <= max(floor) else " ")
        print("    " + f"{eta:<6g}" + cells.rstrip(), file=out)
    above = [S for S in steps_b if min(table_b[(e, S)] for e in PAPER_ETAS) > max(floor)]
    within = [S for S in steps_b if max(table_b[(e, S)] for e in PAPER_ETAS) <= max(floor)]
    print(
        f"    Above the floor's range at every eta: S in {above or 'none'}; within it at every eta: S in "
        f"{within or 'none'}.\n"
        f"    Differences between etas smaller than the floor's spread (+-{floor_sd:.4f}) are not resolved at "
        f"{n} samples.",
        file=out,
    )
    if figure is not None:
        if draw_mixture_figure(figure, samples, table_b, reference, steps_b, PAPER_ETAS):
            print(f"    figure: {figure}", file=out)
        else:
            print(f"    figure skipped: matplotlib is not installed. To draw it: {DEMO_EXTRA_HINT}", file=out)
    print(f"    wall time: {time.perf_counter() - start:.1f} s (sampling {elapsed_b:.1f} s)", file=out)

    # (c)
    steps_c = (10, 50) if quick else (10, 20, 50, 100, 200, 500, 1000)
    iterations = (0, 1) if quick else (0, 2)
    n_c = 64 if quick else 256
    start = time.perf_counter()
    table_c = roundtrip_table(steps_c, iterations, n_c, args.seed, device, dtype, progress)
    print(file=out)
    print(
        f"(c) Encode -> decode round trip (ddim_sched.invert, then the eta=0 loop) on {n_c} samples of the 2-D mixture.\n"
        "    MSE per dimension on the [0, 1] scale (data/2 + 1/2); the paper's Table 2 (CIFAR10) in the last row.",
        file=out,
    )
    print("    " + "".ljust(18) + "".join(f"S={S}".rjust(10) for S in steps_c), file=out)
    for k in iterations:
        label = f"fixed-point it. {k}"
        print("    " + label.ljust(18) + "".join(f"{table_c[(k, S)]:>10.2e}" for S in steps_c), file=out)
    print("    " + "paper Table 2".ljust(18) + "".join(f"{PAPER_TABLE2_MSE[S]:>10.2e}" for S in steps_c), file=out)
    print(f"    wall time: {time.perf_counter() - start:.1f} s", file=out)
    print(file=out)
    print(f"total wall time: {time.perf_counter() - total_start:.1f} s", file=out)
    return 0


def _schedule_rows(scheduler: DDIMScheduler, eta: float) -> list[dict[str, Any]]:
    """One row per visited timestep: t, where the step lands, the next visited timestep, ᾱ, SNR, σ."""
    alpha_bar = scheduler.alpha_bar
    final = 1.0 if scheduler.ddim_config.set_alpha_to_one else float(alpha_bar[0])
    timesteps = scheduler.timesteps.tolist()
    rows = []
    for i, t in enumerate(timesteps):
        prev = int(scheduler.previous_timestep(t))
        a_t = float(alpha_bar[t])
        a_prev = final if prev < 0 else float(alpha_bar[prev])
        coefficients = kernel.ddim_coefficients(
            torch.tensor(a_t, dtype=torch.float64), torch.tensor(a_prev, dtype=torch.float64), eta,
            scheduler.ddim_config.prediction_type,
        )
        rows.append(
            {
                "step": i,
                "t": t,
                "t_prev": prev,
                "next_visited": timesteps[i + 1] if i + 1 < len(timesteps) else -1,
                "alpha_bar": a_t,
                "alpha_bar_prev": a_prev,
                "snr": a_t / (1 - a_t),
                "sigma_noise": math.sqrt((1 - a_t) / a_t) if a_t > 0 else math.inf,
                "sigma_step": float(coefficients[kernel.COLUMN["sigma"]]),
            }
        )
    return rows


def cmd_schedule(args: argparse.Namespace) -> int:
    config, _, _ = _config_from_args(args)
    plot = None
    if args.plot is not None:
        plot = _writable_file("--plot", args.plot)
        if _pyplot_free_figure() is None:
            raise UsageError(f"--plot needs matplotlib, which is not installed: {DEMO_EXTRA_HINT}")
    scheduler = DDIMScheduler.from_config(config)
    _set_timesteps(scheduler, args.steps)
    rows = _schedule_rows(scheduler, args.eta)
    out = sys.stdout
    if args.format == "json":
        # JSON has no infinity: sigma_noise at zero terminal SNR is written as null.
        finite_rows = [{k: (None if v == math.inf else v) for k, v in row.items()} for row in rows]
        json.dump({"config": config.to_dict(), "eta": args.eta, "steps": finite_rows}, out, indent=2)
        out.write("\n")
    elif args.format == "csv":
        keys = list(rows[0])
        print(",".join(keys), file=out)
        for row in rows:
            print(",".join(repr(row[k]) if isinstance(row[k], float) else str(row[k]) for k in keys), file=out)
    else:
        alpha_bar = scheduler.alpha_bar
        T = config.num_train_timesteps
        print(
            f"{config.beta_schedule} betas, T={T}, {config.timestep_spacing} spacing, steps_offset={config.steps_offset}, "
            f"rescale_betas_zero_snr={config.rescale_betas_zero_snr}, prediction_type={config.prediction_type}, "
            f"prev_timestep_rule={config.prev_timestep_rule}",
            file=out,
        )
        terminal = float(alpha_bar[-1])
        print(
            f"alpha_bar[0]={float(alpha_bar[0]):.6g}, alpha_bar[T-1]={terminal:.6g} "
            f"(sqrt {math.sqrt(terminal):.6g}, SNR {terminal / (1 - terminal):.6g}), "
            f"alpha_bar after the last step={rows[-1]['alpha_bar_prev']:.6g}",
            file=out,
        )
        print(
            f"S={len(rows)} steps; sigma_noise = sqrt((1-alpha_bar)/alpha_bar) (k-diffusion's sigma); "
            f"sigma_step = DDIM's eq. 16 sigma at eta={args.eta:g}",
            file=out,
        )
        print(
            f"{'step':>5} {'t':>5} {'t_prev':>7} {'next':>5}  {'alpha_bar':>11} {'alpha_bar_prev':>14} "
            f"{'SNR':>11} {'sigma_noise':>11} {'sigma_step':>11}",
            file=out,
        )
        mismatched = 0
        for row in rows:
            flag = " *" if row["t_prev"] != row["next_visited"] else ""
            mismatched += bool(flag)
            print(
                f"{row['step']:>5} {row['t']:>5} {row['t_prev']:>7} {row['next_visited']:>5}  {row['alpha_bar']:>11.5g} "
                f"{row['alpha_bar_prev']:>14.5g} {row['snr']:>11.4g} {row['sigma_noise']:>11.4g} "
                f"{row['sigma_step']:>11.4g}{flag}",
                file=out,
            )
        if mismatched:
            print(
                f"* {mismatched} step(s) land on a timestep other than the next one visited (diffusers' stride rule "
                "t - T//S); --prev-timestep-rule schedule lands on the next visited timestep instead.",
                file=out,
            )
    if plot is not None:
        _plot_schedule(plot, scheduler, rows, args.eta)
        print(f"plot: {plot}", file=sys.stderr if args.format != "table" else out)
    return 0


def _plot_schedule(path: Path, scheduler: DDIMScheduler, rows: list[dict[str, Any]], eta: float) -> None:
    Figure = _pyplot_free_figure()
    alpha_bar = scheduler.alpha_bar
    t_all = torch.arange(alpha_bar.shape[0])
    visited = [row["t"] for row in rows]
    fig = Figure(figsize=(12, 3.4), dpi=90)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.plot(t_all.numpy(), alpha_bar.numpy(), lw=1)
    ax1.plot(visited, [row["alpha_bar"] for row in rows], "o", ms=3)
    ax1.set_xlabel("timestep t")
    ax1.set_title("alpha_bar (dots: visited)")
    snr = (alpha_bar / (1 - alpha_bar)).clamp(min=1e-30)
    ax2.semilogy(t_all.numpy(), snr.numpy(), lw=1)
    ax2.semilogy(visited, [max(row["snr"], 1e-30) for row in rows], "o", ms=3)
    ax2.set_xlabel("timestep t")
    ax2.set_title("SNR = alpha_bar / (1 - alpha_bar)")
    ax3.plot([row["step"] for row in rows], [row["sigma_step"] for row in rows], "o-", ms=3)
    ax3.set_xlabel("step")
    ax3.set_title(f"DDIM sigma per step (eta={eta:g})")
    config = scheduler.ddim_config
    fig.suptitle(
        f"{config.beta_schedule}, {config.timestep_spacing}, S={len(rows)}, zero SNR={config.rescale_betas_zero_snr}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, format="png")


def compare_with_diffusers(
    config: DDIMConfig,
    reference_mapping: Mapping[str, Any],
    steps: int,
    eta: float,
    shape: tuple[int, ...],
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """Run ddim_sched and diffusers' DDIMScheduler side by side; per-step max errors.

    Both loops start from the same seeded x_T, use the same deterministic model (the exact
    denoiser of a seeded Gaussian mixture, see :mod:`ddim_sched.toy`) on their own trajectories, and
    draw η-noise from identically seeded CPU generators.
    """
    import diffusers

    ours = DDIMScheduler.from_config(config)
    reference = diffusers.DDIMScheduler.from_config(dict(reference_mapping))
    _set_timesteps(ours, steps, device)
    result: dict[str, Any] = {"timesteps": ours.timesteps.tolist(), "reference_timesteps": None, "steps": []}
    try:
        reference.set_timesteps(steps, device=device)
    except (ValueError, RuntimeError) as err:
        result["reference_error"] = f"diffusers' set_timesteps raised {type(err).__name__}: {err}"
        return result
    result["reference_timesteps"] = reference.timesteps.tolist()
    if result["timesteps"] != result["reference_timesteps"]:
        return result
    dim = math.prod(shape[1:])
    generator = torch.Generator().manual_seed(seed)
    means = 0.5 * torch.randn(4, dim, generator=generator, dtype=torch.float64)
    mixture = GaussianMixture(means, 0.5, alpha_bar=ours)
    compute = torch.float64 if dtype == torch.float64 else torch.float32

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return mixture.predict(x.to(compute), t, config.prediction_type).to(dtype)

    x_T = torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
    ours_gen = torch.Generator().manual_seed(seed + 1)
    ref_gen = torch.Generator().manual_seed(seed + 1)
    x_ours = x_ref = x_T
    for i, t in enumerate(ours.timesteps):
        out_ours = ours.step(model_fn(x_ours, t), t, x_ours, eta=eta, generator=ours_gen)
        out_ref = reference.step(model_fn(x_ref, t), t, x_ref, eta=eta, generator=ref_gen)
        x_ours, x_ref = out_ours.prev_sample, out_ref.prev_sample
        diff = (x_ours.to(torch.float64) - x_ref.to(torch.float64))
        ref64 = x_ref.to(torch.float64)
        x0_diff = out_ours.pred_original_sample.to(torch.float64) - out_ref.pred_original_sample.to(torch.float64)
        result["steps"].append(
            {
                "step": i,
                "t": int(t),
                "max_abs_prev_sample": float(diff.abs().max()),
                "rel_l2_prev_sample": float(diff.norm() / ref64.norm().clamp(min=1e-30)),
                "max_abs_pred_original_sample": float(x0_diff.abs().max()),
                "finite": bool(torch.isfinite(x_ours).all() and torch.isfinite(x_ref).all()),
            }
        )
    return result


def cmd_compare(args: argparse.Namespace) -> int:
    config, data, overrides = _config_from_args(args)
    device, dtype = _device(args.device), DTYPES[args.dtype]
    out_path = _writable_file("--out", args.out) if args.out else None
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise UsageError(
            "compare needs diffusers, which is not installed: pip install diffusers (ddim_sched matches 0.42.1)"
        ) from None
    # diffusers reads the file's own keys plus the flags it knows; ddim_sched extensions it lacks.
    reference_mapping = {**data, **{k: v for k, v in overrides.items() if k in DIFFUSERS_FIELDS}}
    extensions = [
        f"{_flag_name(k)} {getattr(config, k)!r}"
        for k in ("prev_timestep_rule", "snr_shift_scale")
        if getattr(config, k) != getattr(DDIMConfig(), k)
    ]
    result = compare_with_diffusers(config, reference_mapping, args.steps, args.eta, args.shape, args.seed, device, dtype)
    tolerance = args.rtol if args.rtol is not None else COMPARE_RTOL[dtype]
    out = sys.stdout
    print(
        f"ddim_sched {__version__} vs diffusers {__import__('diffusers').__version__}: S={args.steps}, eta={args.eta:g}, "
        f"sample {tuple(args.shape)} {args.dtype} on {device}, seed {args.seed}",
        file=out,
    )
    if extensions:
        print(f"note: {', '.join(extensions)}: ddim_sched extension(s) diffusers lacks; differences are expected", file=out)
    if "reference_error" in result:
        print(result["reference_error"], file=out)
        verdict = False
    elif result["timesteps"] != result["reference_timesteps"]:
        print("timesteps DIFFER:", file=out)
        print(f"  ddim_sched: {result['timesteps']}", file=out)
        print(f"  diffusers:  {result['reference_timesteps']}", file=out)
        verdict = False
    else:
        print(f"timesteps identical: {result['timesteps']}", file=out)
        print(f"{'step':>5} {'t':>5} {'max|dx_prev|':>13} {'relL2 x_prev':>13} {'max|dx0_pred|':>14}", file=out)
        for row in result["steps"]:
            print(
                f"{row['step']:>5} {row['t']:>5} {row['max_abs_prev_sample']:>13.3e} {row['rel_l2_prev_sample']:>13.3e} "
                f"{row['max_abs_pred_original_sample']:>14.3e}",
                file=out,
            )
        worst = max(row["rel_l2_prev_sample"] for row in result["steps"])
        worst_abs = max(row["max_abs_prev_sample"] for row in result["steps"])
        finite = all(row["finite"] for row in result["steps"])
        verdict = finite and worst <= tolerance
        print(
            f"max over steps: max|dx_prev| = {worst_abs:.3e}, relative L2 = {worst:.3e} (tolerance {tolerance:.1e})"
            + ("" if finite else "; non-finite values appeared"),
            file=out,
        )
    print("MATCH" if verdict else "DIFFER", file=out)
    if out_path is not None:
        result.update({"match": verdict, "rtol": tolerance, "config": config.to_dict(), "eta": args.eta})
        out_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"report: {out_path}", file=out)
    return 0 if verdict else 1


# ---------------------------------------------------------------------- parser and entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="DDIM scheduler tools: a demo on exact models, a schedule inspector, and a diffusers parity check.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,schedule,compare}")
    sub.required = True

    demo = sub.add_parser(
        "demo",
        help="the DDIM paper's Tables 1-2 trends on models with exact denoisers (and a figure)",
        description="Reproduce the trends of the DDIM paper's Tables 1 and 2 on data with exact denoisers: "
        "(a) exact W2 on Gaussian data, (b) a 2-D mixture with a figure, (c) encode/decode round trips.",
    )
    demo.add_argument("--device", default="cpu", help="torch device (default cpu)")
    demo.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="sample dtype (default float32)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--out", metavar="PATH", help="figure path (.png) or directory (default ./ddim-sched-demo.png)")
    demo.add_argument("--quick", action="store_true", help="small sizes (seconds; used by the tests)")
    demo.add_argument("--no-figure", action="store_true", help="print the tables only")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    demo.set_defaults(handler=cmd_demo)

    schedule = sub.add_parser(
        "schedule",
        help="print (and plot) timesteps, alpha_bar, SNR and sigma for a config",
        description="Print the timesteps a DDIMScheduler visits with alpha_bar, SNR and sigma per step, for a "
        "config given as flags or a scheduler_config.json.",
    )
    _add_config_flags(schedule)
    schedule.add_argument("--steps", type=_positive_int, default=10, help="inference steps S (default 10)")
    schedule.add_argument("--eta", type=_eta, default=1.0, help="eta for the sigma_step column (default 1: DDPM)")
    schedule.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    schedule.add_argument("--plot", metavar="PATH", help="also write a PNG plot there (needs matplotlib)")
    schedule.set_defaults(handler=cmd_schedule)

    compare = sub.add_parser(
        "compare",
        help="step ddim_sched and diffusers side by side on a config; max error per step",
        description="Run ddim_sched and diffusers' DDIMScheduler on the same config, start and model over a "
        "deterministic loop and report the max error per step. Exit 0 when they match within the tolerance, "
        "1 otherwise, 2 on a usage error.",
    )
    _add_config_flags(compare)
    compare.add_argument("--steps", type=_positive_int, default=50, help="inference steps S (default 50)")
    compare.add_argument("--eta", type=_eta, default=0.0, help="eta (default 0)")
    compare.add_argument("--shape", type=_shape, default=(2, 4, 8, 8), help="sample shape B,C,H,W (default 2,4,8,8)")
    compare.add_argument("--device", default="cpu", help="torch device (default cpu)")
    compare.add_argument("--dtype", choices=list(DTYPES), default="float32", help="sample dtype (default float32)")
    compare.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    compare.add_argument("--rtol", type=float, default=None, help="pass bound on the relative L2 error per step")
    compare.add_argument("--out", metavar="PATH", help="also write a JSON report there")
    compare.set_defaults(handler=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 compare mismatch, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        return int(args.handler(args))
    except UsageError as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
