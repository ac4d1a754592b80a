"""DDIM's headline results on a learned model: a small network trained, inside the demo, on
scikit-learn's bundled 8×8 handwritten digits (no download; needs ``pip install "ddim_sched[demo]"``).

One entry point, :func:`run_digits`, trains the ε-model and the feature classifier (seeded,
deterministic on one machine), then measures the DDIM paper's three experiments through the library's
public API and returns a :class:`DigitsResult`; :func:`format_digits` turns it into the text
``ddim-sched demo`` prints. The pieces are importable on their own::

    data = load_digits_data(seed=0)
    model = train_eps_model(data, steps=2500, seed=0)            # model(x, t) -> eps-hat
    metric = FeatureFID(train_classifier(data, seed=1), data.held_out)
    table = quality_table(model, metric, steps=[10, 100], etas=[0.0, 1.0], n=300, seed=3)

Modules: :mod:`.digits_train` (data, networks, training), :mod:`.digits_metric` (the FID),
:mod:`.digits_experiments` (the experiments), :mod:`.digits_editing` (the editing methods side by side),
:mod:`.digits_figures` (PNGs), :mod:`.digits_report` (the text).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .common import (
    DEMO_EXTRA,
    DemoSettings,
    Divergence,
    cpu_threads,
    demo_scheduler,
    invert_calls,
    round_trip_calls,
)
from .digits_editing import EditingCell, EditingTable, editing_calls, editing_table
from .digits_experiments import (
    WORSE_SAMPLER_STEPS,
    Interpolation,
    QualityTable,
    consistency,
    interpolation,
    pick_pairs,
    predicted_labels,
    quality_table,
    roundtrip_table,
    to_unit_mse,
    worse_samplers,
)
from .digits_figures import draw_interpolation, draw_sample_grid, interpolation_figure, mosaic, sample_grid_figure
from .digits_metric import FeatureFID, Spread, frechet_distance, gaussian_fit
from .digits_report import format_digits
from .digits_result import FULL, QUICK, DigitsResult, DigitsSizes
from .digits_train import (
    DigitClassifier,
    DigitsData,
    EpsMLP,
    Progress,
    TrainedModel,
    accuracy,
    load_digits_data,
    train_classifier,
    train_eps_model,
)
from .progress import Progress as ProgressBar

__all__ = [
    "FULL",
    "QUICK",
    "DigitClassifier",
    "DigitsData",
    "DigitsResult",
    "DigitsSection",
    "DigitsSizes",
    "EditingCell",
    "EditingTable",
    "EpsMLP",
    "FeatureFID",
    "Interpolation",
    "QualityTable",
    "SkippedDigits",
    "Spread",
    "TrainedModel",
    "accuracy",
    "consistency",
    "demo_scheduler",
    "draw_interpolation",
    "draw_sample_grid",
    "editing_calls",
    "editing_table",
    "format_digits",
    "frechet_distance",
    "gaussian_fit",
    "interpolation",
    "interpolation_figure",
    "load_digits_data",
    "mosaic",
    "pick_pairs",
    "predicted_labels",
    "quality_table",
    "roundtrip_table",
    "run",
    "run_digits",
    "sample_grid_figure",
    "train_classifier",
    "train_eps_model",
    "worse_samplers",
]

ProgressFactory = Callable[[str, int], Progress]
"""``factory(label, total)`` → a ``progress(done, total)`` callback for one phase of the run."""

FIGURE_PREFIX = "ddim-sched-digits"


@dataclass(frozen=True)
class DigitsSection:
    """The digits run as a section of ``ddim-sched demo`` (what the demo runner collects and prints)."""

    result: DigitsResult
    name: str = "digits"

    @property
    def wall_time(self) -> float:
        """Seconds for the whole run (training included)."""
        return self.result.seconds.get("total", 0.0)

    @property
    def divergences(self) -> tuple[Divergence, ...]:
        """The run's inversions that diverged for some samples (the demo summarises them once)."""
        return self.result.divergences

    @property
    def files(self) -> tuple[Path, ...]:
        """The PNGs the run wrote."""
        return tuple(self.result.figures.values())

    def format(self) -> str:
        """The text ``ddim-sched demo`` prints (:func:`format_digits`)."""
        return format_digits(self.result)


@dataclass(frozen=True)
class SkippedDigits:
    """The digits section when scikit-learn is missing: the demo prints why, and how to get it."""

    note: str
    name: str = "digits"
    wall_time: float = 0.0

    def format(self) -> str:
        """One line: the section was skipped and why."""
        return f"(d) A learned model: skipped. {self.note}"


class _Phases:
    """Makes one progress callback per phase from the runner's factory and times the phases."""

    def __init__(self, factory: ProgressFactory | None) -> None:
        self.factory = factory
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def progress(self, label: str, total: int) -> Progress | None:
        """A callback for the phase about to start (None without a factory)."""
        return self.factory(f"digits: {label}", max(total, 1)) if self.factory is not None else None

    def lap(self, name: str) -> None:
        """Record the time since the previous lap under ``name``."""
        now = time.perf_counter()
        self.seconds[name] = now - self._start
        self._start = now


def _train(
    sizes: DigitsSizes, seed: int, threads: int, phases: _Phases
) -> tuple[DigitsData, TrainedModel, DigitClassifier]:
    """Load the digits, train the ε-model (seed) and the feature classifier (seed + 1)."""
    data = load_digits_data(seed, sizes.held_out)
    progress = phases.progress("train eps-model", sizes.train_steps)
    model = train_eps_model(data, sizes.train_steps, seed, progress, width=sizes.width, threads=threads)
    phases.lap("train eps-model")
    progress = phases.progress("train classifier", sizes.classifier_steps)
    classifier = train_classifier(data, sizes.classifier_steps, seed + 1, progress, threads=threads)
    phases.lap("train classifier")
    return data, model, classifier


def _metric_checks(
    sizes: DigitsSizes, seed: int, data: DigitsData, model: TrainedModel, metric: FeatureFID, phases: _Phases
) -> tuple[QualityTable, dict[str, torch.Tensor], dict[str, float], Spread]:
    """The quality table, the samplers that should score worse, and the split-half spread of all their FIDs."""
    quality = quality_table(
        model,
        metric,
        sizes.steps,
        sizes.etas,
        sizes.samples,
        seed + 3,
        phases.progress("sampling S x eta", len(sizes.etas) * sum(sizes.steps)),
    )
    untrained = train_eps_model(data, 0, seed, width=sizes.width)
    progress = phases.progress("worse samplers", sum(WORSE_SAMPLER_STEPS))
    worse = worse_samplers(model, untrained, data, sizes.samples, seed + 3, progress)
    worse_features = {label: metric.features(images) for label, images in worse.items()}
    worse_fid = {label: metric.distance(features) for label, features in worse_features.items()}
    cells = list(quality.features)
    labels = tuple(cells) + tuple(worse_features)
    sets = [quality.features[c] for c in cells] + list(worse_features.values())
    spread = Spread(labels, metric.half_samples(sets, sizes.halves, seed + 5))
    return quality, worse, worse_fid, spread


def _interpolate(
    sizes: DigitsSizes,
    data: DigitsData,
    model: TrainedModel,
    classifier: DigitClassifier,
    phases: _Phases,
    divergences: list[Divergence],
) -> tuple[Interpolation, list[list[int]], float, float]:
    """The slerp paths, the classifier's label per point and its confidence on slerp vs crossfade interiors."""
    start, end = pick_pairs(data, sizes.pairs)
    k = sizes.interpolation_iterations
    result = interpolation(
        model,
        start,
        end,
        sizes.interpolation_steps,
        sizes.points,
        k,
        phases.progress("interpolation", invert_calls(k, sizes.interpolation_steps) + sizes.interpolation_steps),
        divergences,
    )
    labels, confidence = predicted_labels(classifier, result.decoded)
    _, fade_confidence = predicted_labels(classifier, result.crossfade)
    inner = slice(1, sizes.points - 1)
    return result, labels.tolist(), float(confidence[:, inner].mean()), float(fade_confidence[:, inner].mean())


def _draw(result: DigitsResult, out_dir: Path) -> None:
    """Write the two PNGs into ``out_dir`` (or note why not)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    samples_path = out_dir / f"{FIGURE_PREFIX}-samples.png"
    drawn = draw_sample_grid(
        samples_path,
        result.quality,
        result.data.held_out,
        result.sizes.per_cell,
        result.worse_samples,
        result.worse_fid,
        result.spread,
    )
    if not drawn:
        result.figure_note = f"figures skipped: matplotlib is not installed. To draw them: {DEMO_EXTRA}"
        return
    interpolation_path = out_dir / f"{FIGURE_PREFIX}-interpolation.png"
    draw_interpolation(interpolation_path, result.interpolation, result.path_labels)
    result.figures = {"samples": samples_path, "interpolation": interpolation_path}


def run_digits(
    quick: bool = False,
    seed: int = 0,
    out_dir: Path | None = None,
    progress_factory: ProgressFactory | None = None,
    *,
    sizes: DigitsSizes | None = None,
    threads: int = 1,
) -> DigitsResult:
    """Train the digits ε-model and the feature classifier, then run the DDIM paper's three experiments.

    Args:
        quick: Use :data:`QUICK` instead of :data:`FULL` (ignored when ``sizes`` is given).
        seed: Seeds the split, both trainings, all sampling and the split halves.
        out_dir: Directory for ``ddim-sched-digits-samples.png`` and ``ddim-sched-digits-interpolation.png``
            (created if needed); None draws no figures.
        progress_factory: Optional ``factory(label, total)`` → ``progress(done, total)``, called once per phase.
        sizes: Explicit sizes (tests use tiny ones).
        threads: CPU threads for the whole run (restored afterwards); training results depend on it.

    Returns:
        A :class:`DigitsResult`.

    Raises:
        ImportError: scikit-learn is missing (``pip install "ddim_sched[demo]"``).
    """
    sizes = sizes if sizes is not None else (QUICK if quick else FULL)
    phases = _Phases(progress_factory)
    total_start = time.perf_counter()
    with cpu_threads(threads):
        data, model, classifier = _train(sizes, seed, threads, phases)
        metric = FeatureFID(classifier, data.held_out)
        floor = metric.real_floor(data.train, sizes.samples, sizes.floor_draws, seed + 2)
        quality, worse, worse_fid, spread = _metric_checks(sizes, seed, data, model, metric, phases)
        phases.lap("sample quality")
        images = data.held_out[: sizes.roundtrip_images]
        calls = round_trip_calls(sizes.roundtrip_steps, sizes.roundtrip_iterations)
        divergences: list[Divergence] = []
        progress = phases.progress("round trips", calls)
        counted: dict[tuple[int, int], tuple[int, int]] = {}
        roundtrip = roundtrip_table(
            model, images, sizes.roundtrip_steps, sizes.roundtrip_iterations, progress, divergences, counted
        )
        phases.lap("round trips")
        editing = editing_table(
            model,
            images,
            sizes.editing_steps,
            seed,
            roundtrip,
            counted,
            phases.progress("editing methods", editing_calls(sizes.editing_steps, counted)),
            divergences,
        )
        phases.lap("editing methods")
        interpolated, path_labels, slerp_conf, fade_conf = _interpolate(
            sizes, data, model, classifier, phases, divergences
        )
        phases.lap("interpolation")
    result = DigitsResult(
        sizes,
        seed,
        threads,
        data,
        model,
        classifier,
        accuracy(classifier, data.held_out, data.held_out_labels),
        floor,
        quality,
        worse_fid,
        worse,
        spread,
        roundtrip,
        to_unit_mse(images, images.roll(1, dims=0)),
        editing,
        interpolated,
        path_labels,
        slerp_conf,
        fade_conf,
        tuple(divergences),
    )
    if out_dir is not None:
        _draw(result, Path(out_dir))
        phases.lap("figures")
    result.seconds = {**phases.seconds, "total": time.perf_counter() - total_start}
    return result


def _progress_bars(enabled: bool) -> ProgressFactory:
    """A :data:`ProgressFactory` drawing one of the demo's stderr bars per phase."""

    def factory(label: str, total: int) -> Progress:
        bar = ProgressBar(f"(d) {label}", total, enabled)

        def report(done: int, total: int) -> None:
            bar.update(done - bar.count)
            if done >= total:
                bar.close()

        return report

    return factory


def run(settings: DemoSettings) -> DigitsSection | SkippedDigits:
    """The demo runner's section (d): :func:`run_digits` with the run's quick, seed, progress and figure
    directory, on the CPU in float32 whatever the other sections' device and dtype. Without scikit-learn
    the section is skipped with a note rather than failing the demo."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return SkippedDigits(f"It needs scikit-learn (its bundled 8x8 digits): {DEMO_EXTRA}")
    return DigitsSection(
        run_digits(settings.quick, settings.seed, settings.figure_dir, _progress_bars(settings.progress))
    )
