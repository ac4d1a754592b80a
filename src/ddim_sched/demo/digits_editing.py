"""Section (d2)'s editing table: every way the library encodes and decodes, side by side on the digits model.

Per S, the encode → decode error (MSE per pixel on the [0, 1] scale, as the round-trip table) and the
model calls per step, encode + decode, counted, of classic DDIM inversion (k = 0) and fixed-point
``invert`` (k = 1, 2, 5) decoded by the η = 0 loop, BDIA-DDIM (γ = 1), EDICT (p = 0.93) and edit-friendly
noise maps (η = 1), all through the library's public functions (docs/editing.md explains each). The
fixed-point cells the round-trip table already measured are reused, not recomputed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import (
    DDIMScheduler,
    bdia_invert,
    bdia_sample,
    edict_invert,
    edict_sample,
    edit_friendly_noise,
    noise_space_trajectory,
    replay_noise_maps,
)
from .common import CallCounter, Divergence, demo_scheduler, invert_calls, round_trips
from .digits_experiments import to_unit_mse
from .digits_train import Progress, _report

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``model(x, t)`` → ε̂."""

Encoder = Callable[[ModelFn, torch.Tensor, DDIMScheduler], Any]
"""``encode(model, x0, scheduler)`` → whatever its decoder starts from."""

Decoder = Callable[[ModelFn, Any, DDIMScheduler], torch.Tensor]
"""``decode(model, latent, scheduler)`` → x0."""

ITERATIONS = (0, 1, 2, 5)
"""k of the fixed-point rows (0: classic DDIM inversion)."""

BDIA_GAMMA = 1.0
"""BDIA's γ: the one whose inversion stays exact at many steps (docs/editing.md)."""

EDICT_MIXING = 0.93
"""EDICT's mixing weight p, the paper's."""

NOISE_MAPS_ETA = 1.0
"""η of the edit-friendly noise maps (the DDPM posterior, the paper's choice)."""

EXACT_MSE = 1e-6
"""An exact method's float32 round trip stays below this MSE per pixel (classic inversion's is 1.8e-5 even
at S = 1000 in table (d2)): what the section calls "float rounding"."""

BDIA = f"BDIA, gamma={BDIA_GAMMA:g}"
EDICT = f"EDICT, p={EDICT_MIXING:g}"
NOISE_MAPS = f"edit-friendly maps, eta={NOISE_MAPS_ETA:g}"
EXACT_METHODS = (BDIA, EDICT, NOISE_MAPS)
"""The labels of the exactly invertible rows, in the table's order."""


def fixed_point_label(k: int) -> str:
    """The row label of ``invert`` with k fixed-point iterations."""
    return "DDIM inversion (k=0)" if k == 0 else f"fixed-point invert, k={k}"


@dataclass(frozen=True)
class EditingCell:
    """One method at one S.

    Attributes:
        mse: Encode → decode MSE per pixel on the [0, 1] scale.
        encode_calls, decode_calls: Model calls counted for the whole encoding and decoding.
        steps: S.
        reused: Whether the cell was read from the round-trip table rather than measured here.
    """

    mse: float
    encode_calls: int
    decode_calls: int
    steps: int
    reused: bool = False

    @property
    def calls_per_step(self) -> tuple[float, float]:
        """(encode, decode) model calls per step."""
        return self.encode_calls / self.steps, self.decode_calls / self.steps


@dataclass(frozen=True)
class EditingTable:
    """The editing methods side by side.

    Attributes:
        steps: The S columns.
        rows: Label → S → :class:`EditingCell`, in the printed order (fixed-point rows, then
            :data:`EXACT_METHODS`).
        images: Digits encoded and decoded.
        seconds: Wall time of what was measured here (reused cells cost nothing).
    """

    steps: tuple[int, ...]
    rows: dict[str, dict[int, EditingCell]]
    images: int
    seconds: float


def _noise_maps_encoder(seed: int) -> Encoder:
    """Edit-friendly noise maps of the DDPM-noise-space trajectory of x0 (its noise seeded by ``seed``)."""

    def encode(model: ModelFn, x0: torch.Tensor, scheduler: DDIMScheduler) -> Any:
        trajectory = noise_space_trajectory(x0, scheduler, generator=torch.Generator().manual_seed(seed))
        return edit_friendly_noise(trajectory, scheduler, model_fn=model, eta=NOISE_MAPS_ETA)

    return encode


def exact_methods(seed: int) -> dict[str, tuple[Encoder, Decoder]]:
    """Label → (encode, decode) of the exactly invertible methods, through the library's public functions."""
    return {
        BDIA: (
            lambda m, x, s: bdia_invert(m, x, s, gamma=BDIA_GAMMA),
            lambda m, z, s: bdia_sample(m, z, s, gamma=BDIA_GAMMA),
        ),
        EDICT: (
            lambda m, x, s: edict_invert(m, x, s, mixing=EDICT_MIXING),
            lambda m, z, s: edict_sample(m, z, s, mixing=EDICT_MIXING),
        ),
        NOISE_MAPS: (_noise_maps_encoder(seed), lambda m, z, s: replay_noise_maps(m, z, s)),
    }


def expected_calls(label: str, steps: int) -> tuple[int, int]:
    """(encode, decode) model calls of a row over S steps, as docs/editing.md states them: k = 0 one each
    way, fixed-point k >= 1 k + 2 to encode (every iterate's residual is measured), BDIA one to encode and
    S − 1 to decode (its pair holds step 0), EDICT two each way, noise maps one each way."""
    for k in ITERATIONS:
        if label == fixed_point_label(k):
            return invert_calls(k, steps), steps
    per_step = {BDIA: (steps, steps - 1), EDICT: (2 * steps, 2 * steps), NOISE_MAPS: (steps, steps)}
    return per_step[label]


def editing_calls(steps: Sequence[int], reused: Collection[tuple[int, int]] = ()) -> int:
    """Model calls :func:`editing_table` makes over ``steps`` when the fixed-point cells (k, S) in ``reused`` are
    read from the round-trip table."""
    labels = [fixed_point_label(k) for k in ITERATIONS] + list(EXACT_METHODS)
    measured = [(label, S) for label in labels for S in steps]
    reused_labels = {(fixed_point_label(k), S) for k, S in reused}
    return sum(sum(expected_calls(label, S)) for label, S in measured if (label, S) not in reused_labels)


def editing_table(
    model: ModelFn,
    images: torch.Tensor,
    steps: Sequence[int],
    seed: int,
    roundtrip: Mapping[tuple[int, int], float] | None = None,
    roundtrip_calls: Mapping[tuple[int, int], tuple[int, int]] | None = None,
    progress: Progress | None = None,
    divergences: list[Divergence] | None = None,
) -> EditingTable:
    """Encode and decode ``images`` with every editing method at every S, counting the model calls.

    Args:
        model: ``model(x, t)`` → ε̂ (the demo's trained digits model).
        images: Real digits [N, 64] in [−1, 1] (float32 in the demo).
        steps: The S columns; encoding and decoding both use S steps of the demo's scheduler.
        seed: Seeds the noise of the noise maps' trajectory.
        roundtrip, roundtrip_calls: The round-trip table's (k, S) → MSE and (k, S) → (encode, decode) calls
            (from :func:`~ddim_sched.demo.digits_experiments.roundtrip_table` on the same ``images``): the
            fixed-point cells found in both are reused, the others measured.
        progress: Optional ``progress(done, total)``, one unit per model call.
        divergences: As for :func:`~ddim_sched.demo.digits_experiments.roundtrip_table` (the fixed-point
            inversions measured here, labelled ``"(d2) editing table"``).

    Returns:
        An :class:`EditingTable`.
    """
    start = time.perf_counter()
    calls = roundtrip_calls or {}
    known = {cell: (mse, calls[cell]) for cell, mse in (roundtrip or {}).items() if cell in calls}
    total, done = editing_calls(steps, known), 0

    def tick() -> None:
        nonlocal done
        done += 1
        _report(progress, done, total)

    rows: dict[str, dict[int, EditingCell]] = {}
    scheduler = demo_scheduler()
    for k in ITERATIONS:
        cells = rows.setdefault(fixed_point_label(k), {})
        for S in steps:
            if (k, S) in known:
                mse, (encoded, decoded) = known[(k, S)]
                cells[S] = EditingCell(mse, encoded, decoded, S, reused=True)
            else:
                cells[S] = _fixed_point_cell(CallCounter(model, tick), images, scheduler, k, S, divergences)
    for label, (encode, decode) in exact_methods(seed).items():
        cells = rows.setdefault(label, {})
        for S in steps:
            scheduler.set_timesteps(S)
            cells[S] = _exact_cell(CallCounter(model, tick), images, scheduler, encode, decode)
    return EditingTable(tuple(steps), rows, len(images), time.perf_counter() - start)


def _fixed_point_cell(
    model: CallCounter,
    images: torch.Tensor,
    scheduler: DDIMScheduler,
    k: int,
    S: int,
    divergences: list[Divergence] | None,
) -> EditingCell:
    """``invert`` with k fixed-point iterations, then the η = 0 loop, S steps each way (the round-trip table's
    measurement, for one cell)."""
    counts: dict[tuple[int, int], tuple[int, int]] = {}
    out = round_trips(model, images, scheduler, [S], [k], lambda _: None, divergences, "(d2) editing table", counts)
    return EditingCell(to_unit_mse(out[(k, S)], images), *counts[(k, S)], S)


def _exact_cell(
    model: CallCounter, images: torch.Tensor, scheduler: DDIMScheduler, encode: Encoder, decode: Decoder
) -> EditingCell:
    """Encode and decode with one exactly invertible method on ``scheduler``'s schedule, counting calls."""
    latent = encode(model, images, scheduler)
    encoded = model.calls
    out = decode(model, latent, scheduler)
    return EditingCell(to_unit_mse(out, images), encoded, model.calls - encoded, len(scheduler.timesteps))
