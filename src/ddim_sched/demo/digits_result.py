"""What the digits section measured, and how much work it does: :class:`DigitsSizes` (with :data:`FULL`
and :data:`QUICK`) and :class:`DigitsResult`, which :func:`~ddim_sched.demo.digits.run_digits` returns
and :func:`~ddim_sched.demo.digits_report.format_digits` prints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .common import Divergence
from .digits_editing import EditingTable
from .digits_experiments import Interpolation, QualityTable
from .digits_metric import Spread
from .digits_train import DigitClassifier, DigitsData, TrainedModel


@dataclass(frozen=True)
class DigitsSizes:
    """How much work :func:`run_digits` does (see :data:`FULL` and :data:`QUICK`).

    Attributes:
        held_out: Images held out of the 1797 (the FID reference and the round-trip/interpolation digits).
        train_steps, width: ε-model training steps and hidden width.
        classifier_steps: Feature-classifier training steps.
        samples: Samples per quality cell (also the floor's subset size).
        steps, etas: The quality table's S columns and η rows.
        floor_draws: Real-vs-real draws for the FID floor.
        halves: Random halves for the split-half spread of every FID.
        roundtrip_images: Held-out digits encoded and decoded.
        roundtrip_steps, roundtrip_iterations: S and k of the round-trip table.
        pairs: (class, class) of each interpolation path; points: α values per path.
        interpolation_steps, interpolation_iterations: S and k of the interpolation's encoding (and S of
            its decoding).
        per_cell: Samples drawn per panel of the sample grid.
        editing_steps: S of the editing table (d2): every editing method on the round-trip digits; the
            fixed-point cells whose S is also in ``roundtrip_steps`` are read from the round-trip table.
    """

    held_out: int
    train_steps: int
    width: int
    classifier_steps: int
    samples: int
    steps: tuple[int, ...]
    etas: tuple[float, ...]
    floor_draws: int
    halves: int
    roundtrip_images: int
    roundtrip_steps: tuple[int, ...]
    roundtrip_iterations: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]
    points: int
    interpolation_steps: int
    interpolation_iterations: int = 0
    per_cell: int = 16
    editing_steps: tuple[int, ...] = (10, 50)


FULL = DigitsSizes(
    held_out=500,
    train_steps=10000,
    width=256,
    classifier_steps=2000,
    samples=500,
    steps=(10, 20, 50, 100, 1000),
    etas=(0.0, 0.2, 0.5, 1.0),
    floor_draws=20,
    halves=100,
    roundtrip_images=100,
    roundtrip_steps=(10, 20, 50, 100, 200, 500, 1000),
    roundtrip_iterations=(0, 2),
    pairs=((0, 6), (1, 7), (3, 8), (4, 9)),
    points=9,
    interpolation_steps=100,
)
"""The full demo: about 90 s on a busy two-core CPU, 60 s of it training (docs/demo.md)."""

QUICK = DigitsSizes(
    held_out=500,
    train_steps=2500,
    width=256,
    classifier_steps=1000,
    samples=300,
    steps=(10, 100),
    etas=(0.0, 1.0),
    floor_draws=10,
    halves=50,
    roundtrip_images=50,
    roundtrip_steps=(10, 50),
    roundtrip_iterations=(0, 2),
    pairs=((0, 6), (3, 8)),
    points=7,
    interpolation_steps=20,
)
"""``--quick``: a shorter training and fewer cells, about 25 s on a busy two-core CPU."""


@dataclass
class DigitsResult:
    """Everything :func:`run_digits` measured; :func:`format_digits` prints it.

    Attributes:
        sizes, seed, threads: How it ran.
        data: The digits and their split.
        model: The trained ε-model (callable as ``model(x, t)``).
        classifier, classifier_accuracy: The feature classifier and its held-out accuracy.
        floor: FID of real training digits against the held-out reference, one per draw.
        quality: The (η, S) table with samples.
        worse_fid: FID of each image set that should score worse (label → FID).
        worse_samples: Those image sets.
        spread: Paired split-half FIDs of every set above (labels: (η, S) cells and worse labels).
        roundtrip: (k, S) → encode/decode MSE per pixel on the [0, 1] scale.
        roundtrip_scale: MSE between held-out digits paired at random, for scale.
        editing: The editing methods side by side on the round-trip digits (classic and fixed-point
            inversion, BDIA, EDICT, edit-friendly noise maps): MSE and model calls per step.
        interpolation: The slerp paths; path_labels: classifier label per decoded point [P][K].
        slerp_confidence, crossfade_confidence: The classifier's mean confidence on the interior
            points of the decoded slerp paths and of the pixel crossfades.
        divergences: The inversions (round trips, editing table, interpolation) whose fixed-point iteration diverged for
            some samples at some steps.
        figures: Name → path of each PNG written; figure_note: why figures were not drawn, if not.
        seconds: Wall time per phase and "total".
    """

    sizes: DigitsSizes
    seed: int
    threads: int
    data: DigitsData
    model: TrainedModel
    classifier: DigitClassifier
    classifier_accuracy: float
    floor: np.ndarray
    quality: QualityTable
    worse_fid: dict[str, float]
    worse_samples: dict[str, torch.Tensor]
    spread: Spread
    roundtrip: dict[tuple[int, int], float]
    roundtrip_scale: float
    editing: EditingTable
    interpolation: Interpolation
    path_labels: list[list[int]]
    slerp_confidence: float
    crossfade_confidence: float
    divergences: tuple[Divergence, ...] = ()
    figures: dict[str, Path] = dataclasses.field(default_factory=dict)
    figure_note: str | None = None
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
