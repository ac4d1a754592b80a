"""The DDIM paper's three experiments on the trained digits model, through the library's public API only
(``DDIMScheduler``, ``set_timesteps``, ``ddim_sched.sample``, ``ddim_sched.invert``, ``ddim_sched.slerp``).

(a) sample quality per S × η (Table 1), (b) encode → decode error per S and fixed-point iterations k
(Table 2), (c) slerp between two encoded digits (Figure 6); plus samplers that must score worse, to
show the metric can tell.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .. import DDIMScheduler, sample, slerp
from .common import Divergence, demo_scheduler, invert_and_report, invert_calls, round_trip_calls, round_trips
from .digits_metric import FeatureFID
from .digits_train import PIXELS, DigitClassifier, DigitsData, Progress, _report

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``model(x, t)`` → ε̂, as ``ddim_sched.sample`` calls it."""

Cell = tuple[float, int]
"""(η, S): one cell of the quality table."""

WORSE_SAMPLER_STEPS = (5, 5, 50, 50)
"""S of the four sampled rows of :func:`worse_samplers`, in order."""


class _Ticker:
    """Counts finished units of work and forwards them to ``progress(done, total)``."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, *_: object) -> None:
        self.add(1)

    def add(self, n: int) -> None:
        """Count ``n`` more units."""
        self.done += n
        _report(self.progress, self.done, self.total)


def _noise(n: int, seed: int) -> torch.Tensor:
    """x_T ~ N(0, I), [n, 64] float32, from ``seed``."""
    return torch.randn(n, PIXELS, generator=torch.Generator().manual_seed(seed))


def to_unit_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error per pixel on the [0, 1] scale (pixels x/2 + 1/2) of two [N, 64] image sets."""
    return float(((a.to(torch.float64) - b.to(torch.float64)) ** 2).mean() / 4)


# ---------------------------------------------------------------------- (a) sample quality


@dataclass
class QualityTable:
    """Samples and FIDs per (η, S) cell.

    Attributes:
        steps, etas: The table's columns and rows.
        fid: FID against the reference per (η, S).
        samples: The samples [n, 64] per (η, S) (not clamped).
        features: Their metric features [n, 64] per (η, S), for the split-half spread.
        seconds: Wall time of sampling and scoring.
    """

    steps: tuple[int, ...]
    etas: tuple[float, ...]
    fid: dict[Cell, float]
    samples: dict[Cell, torch.Tensor]
    features: dict[Cell, torch.Tensor]
    seconds: float


def quality_table(
    model: ModelFn,
    metric: FeatureFID,
    steps: Sequence[int],
    etas: Sequence[float],
    n: int,
    seed: int,
    progress: Progress | None = None,
) -> QualityTable:
    """Sample ``n`` digits per (η, S) with ``ddim_sched.sample`` and score each set with ``metric``.

    Every cell starts from the same x_T (seeded by ``seed``) and draws its η-noise from a generator
    seeded by ``seed + 1``, so cells differ only by S and η (common random numbers).

    Args:
        model: ``model(x, t)`` → ε̂, e.g. a :class:`~ddim_sched.demo.digits_train.TrainedModel`.
        metric: The FID to score with.
        steps, etas: S values (columns) and η values (rows).
        n: Samples per cell.
        seed: Seeds x_T and the η-noise.
        progress: Optional ``progress(done, total)``, one unit per sampling step.

    Returns:
        A :class:`QualityTable`.
    """
    start = time.perf_counter()
    scheduler = demo_scheduler()
    x_T = _noise(n, seed)
    tick = _Ticker(progress, len(etas) * sum(steps))
    fid, samples, features = {}, {}, {}
    for S in steps:
        scheduler.set_timesteps(S)
        for eta in etas:
            generator = torch.Generator().manual_seed(seed + 1)
            x0 = sample(model, x_T, scheduler, eta=eta, generator=generator, callback=tick)
            samples[(eta, S)] = x0
            features[(eta, S)] = metric.features(x0)
            fid[(eta, S)] = metric.distance(features[(eta, S)])
    return QualityTable(tuple(steps), tuple(etas), fid, samples, features, time.perf_counter() - start)


def consistency(table: QualityTable) -> dict[float, float]:
    """Per η, the MSE per pixel ([0, 1] scale, clamped) between the samples at the fewest and the most steps.

    Every cell starts from the same x_T, so a small value means x_T fixes the sample whatever S is: the
    DDIM paper's consistency property of η = 0 (Sec. 5.2), which η > 0 loses to its fresh noise.
    """
    first, last = table.steps[0], table.steps[-1]
    return {
        eta: to_unit_mse(table.samples[(eta, first)].clamp(-1, 1), table.samples[(eta, last)].clamp(-1, 1))
        for eta in table.etas
    }


def worse_samplers(
    model: ModelFn, untrained: ModelFn, data: DigitsData, n: int, seed: int, progress: Progress | None = None
) -> dict[str, torch.Tensor]:
    """Image sets a working metric must score worse than good DDIM samples, by label.

    Too few steps (S = 5), a broken step (an ε-model read as ``prediction_type="sample"``), the
    untrained network, a Gaussian fit to the training pixels, and uniform noise. The DDIM rows start
    from the same x_T as :func:`quality_table` with the same ``seed``.

    Returns:
        label → images [n, 64].
    """
    x_T = _noise(n, seed)
    broken = DDIMScheduler(clip_sample=False, prediction_type="sample")
    runs: list[tuple[str, ModelFn, DDIMScheduler, float]] = [
        ("DDIM S=5, eta=0", model, demo_scheduler(), 0.0),
        ("DDIM S=5, eta=1", model, demo_scheduler(), 1.0),
        ("broken step: eps read as x0 (S=50)", model, broken, 0.0),
        ("untrained network (S=50, eta=0)", untrained, demo_scheduler(), 0.0),
    ]
    tick = _Ticker(progress, sum(WORSE_SAMPLER_STEPS))
    out = {}
    for (label, fn, scheduler, eta), S in zip(runs, WORSE_SAMPLER_STEPS, strict=True):
        scheduler.set_timesteps(S)
        generator = torch.Generator().manual_seed(seed + 1)
        out[label] = sample(fn, x_T, scheduler, eta=eta, generator=generator, callback=tick)
    generator = torch.Generator().manual_seed(seed + 2)
    train = data.train.to(torch.float64)
    mean, cov = train.mean(dim=0), torch.cov(train.T)
    factor = torch.linalg.cholesky(cov + 1e-6 * torch.eye(PIXELS, dtype=torch.float64))
    gaussian = mean + torch.randn(n, PIXELS, generator=generator, dtype=torch.float64) @ factor.T
    out["Gaussian fit to the training pixels"] = gaussian.to(torch.float32)
    out["uniform noise in [-1, 1]"] = torch.rand(n, PIXELS, generator=generator) * 2 - 1
    return out


# ---------------------------------------------------------------------- (b) round trips


def roundtrip_table(
    model: ModelFn,
    images: torch.Tensor,
    steps: Sequence[int],
    iterations: Sequence[int],
    progress: Progress | None = None,
    divergences: list[Divergence] | None = None,
    calls: dict[tuple[int, int], tuple[int, int]] | None = None,
) -> dict[tuple[int, int], float]:
    """Encode ``images`` with ``ddim_sched.invert`` and decode with the η = 0 loop, per (k, S).

    Args:
        model: ``model(x, t)`` → ε̂.
        images: Real digits [N, 64] in [−1, 1].
        steps: S values; encoding and decoding both use S steps.
        iterations: Fixed-point iterations k (``fixed_point_iterations``; 0 is classic DDIM inversion).
        progress: Optional ``progress(done, total)``, one unit per model call.
        divergences: If given, the inversions that diverged are appended to it (as
            :class:`~ddim_sched.demo.common.Divergence`) instead of ``invert`` logging a warning per step.
        calls: If given, the model calls counted per (k, S) are stored in it as (encode, decode).

    Returns:
        (k, S) → mean squared error per pixel on the [0, 1] scale (as the paper's Table 2).
    """
    tick = _Ticker(progress, round_trip_calls(steps, iterations))
    decoded = round_trips(
        model, images, demo_scheduler(), steps, iterations, tick.add, divergences, "(d2) round trips", calls
    )
    return {cell: to_unit_mse(out, images) for cell, out in decoded.items()}


# ---------------------------------------------------------------------- (c) interpolation


@dataclass
class Interpolation:
    """Slerp paths between encoded digits, decoded.

    Attributes:
        start, end: The real digits [P, 64] at the two ends of each of P paths.
        alphas: The K interpolation weights, float32 [K], from 0 to 1.
        decoded: decode(slerp(encode(start), encode(end), α)), [P, K, 64].
        crossfade: The pixel-space blend (1 − α)·start + α·end, [P, K, 64], for comparison.
        endpoint_mse: MSE per pixel ([0, 1] scale) of the decoded α = 0 and α = 1 images to start and end.
        steps, fixed_point_iterations: S of encoding and decoding, and k of ``invert``.
    """

    start: torch.Tensor
    end: torch.Tensor
    alphas: torch.Tensor
    decoded: torch.Tensor
    crossfade: torch.Tensor
    endpoint_mse: float
    steps: int
    fixed_point_iterations: int


def pick_pairs(data: DigitsData, pairs: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first held-out digit of each class in ``pairs`` [(class_a, class_b), ...] as (start [P, 64], end [P, 64])."""
    first = {int(c): int(torch.nonzero(data.held_out_labels == c)[0]) for c in data.held_out_labels.unique()}
    start = torch.stack([data.held_out[first[a]] for a, _ in pairs])
    end = torch.stack([data.held_out[first[b]] for _, b in pairs])
    return start, end


def interpolation(
    model: ModelFn,
    start: torch.Tensor,
    end: torch.Tensor,
    steps: int = 50,
    points: int = 9,
    fixed_point_iterations: int = 2,
    progress: Progress | None = None,
    divergences: list[Divergence] | None = None,
) -> Interpolation:
    """Encode two digits per path with ``invert``, slerp the latents (``ddim_sched.slerp``), decode with η = 0.

    The DDIM paper's Figure 6 interpolates between x_T drawn at random; here the ends are real
    digits, so each path must start and end on them (up to the round-trip error).

    Args:
        model: ``model(x, t)`` → ε̂.
        start, end: Real digits [P, 64] in [−1, 1]: path p runs from start[p] to end[p].
        steps: S for encoding and decoding.
        points: K points per path, α = 0, 1/(K−1), ..., 1.
        fixed_point_iterations: k of ``invert``.
        progress: Optional ``progress(done, total)``, one unit per model call.
        divergences: As for :func:`roundtrip_table`.

    Returns:
        An :class:`Interpolation`.
    """
    scheduler = demo_scheduler()
    scheduler.set_timesteps(steps)
    tick = _Ticker(progress, invert_calls(fixed_point_iterations, steps) + steps)
    ends = torch.cat([start, end])
    latents = invert_and_report(model, ends, scheduler, fixed_point_iterations, "(d3) interpolation", divergences)
    tick.add(invert_calls(fixed_point_iterations, steps))
    z0, z1 = latents.chunk(2)
    alphas = torch.linspace(0.0, 1.0, points)
    path = torch.stack([slerp(z0[p : p + 1], z1[p : p + 1], alphas) for p in range(len(start))])
    decoded = sample(model, path.reshape(-1, PIXELS), scheduler, callback=tick).reshape(path.shape)
    crossfade = (1 - alphas)[None, :, None] * start[:, None] + alphas[None, :, None] * end[:, None]
    endpoint_mse = to_unit_mse(torch.cat([decoded[:, 0], decoded[:, -1]]), torch.cat([start, end]))
    return Interpolation(start, end, alphas, decoded, crossfade, endpoint_mse, steps, fixed_point_iterations)


def predicted_labels(classifier: DigitClassifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class, softmax confidence) the classifier gives each image [..., 64] (clamped to [−1, 1])."""
    with torch.no_grad():
        probabilities = torch.softmax(classifier(images.clamp(-1.0, 1.0).reshape(-1, PIXELS)), dim=1)
    confidence, label = probabilities.max(dim=1)
    return label.reshape(images.shape[:-1]), confidence.reshape(images.shape[:-1])
