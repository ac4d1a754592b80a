"""PNG figures of the digits demo: a labelled sample grid per (S, η) and the interpolation strips.

matplotlib is optional (the ``demo`` extra): without it the drawing functions return False and draw
nothing. They use matplotlib's ``Figure`` directly (no pyplot, no global backend state).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .digits_experiments import Interpolation, QualityTable
from .digits_train import SIDE

INK = "gray_r"  # background −1 white, ink +1 black, as the digits are usually shown


def _figure_class() -> Any:
    """matplotlib's Figure class, or None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def mosaic(images: torch.Tensor, columns: int, gap: int = 1) -> np.ndarray:
    """Tile images [N, 64] into one array, ``columns`` per row, separated by ``gap`` background pixels.

    Args:
        images: Digits [N, 64] in [−1, 1] (values are clamped to that range).
        columns: Images per row; the last row is padded with background.
        gap: Background pixels between images.

    Returns:
        float64 [rows·(8+gap)−gap, columns·(8+gap)−gap], background −1.
    """
    rows = -(-len(images) // columns)
    cell = SIDE + gap
    canvas = np.full((rows * cell - gap, columns * cell - gap), -1.0)
    tiles = images.clamp(-1.0, 1.0).reshape(-1, SIDE, SIDE).to(torch.float64).numpy()
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        canvas[r * cell : r * cell + SIDE, c * cell : c * cell + SIDE] = tile
    return canvas


def _show(ax: Any, image: np.ndarray, title: str = "") -> None:
    ax.imshow(image, cmap=INK, vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def draw_sample_grid(
    path: Path,
    table: QualityTable,
    reference: torch.Tensor,
    per_cell: int = 16,
    worse: dict[str, torch.Tensor] | None = None,
    worse_fid: dict[str, float] | None = None,
) -> bool:
    """One PNG: for each η (rows) and S (columns) the first ``per_cell`` samples, titled with their FID.

    The first column shows held-out digits; an optional last row shows the ``worse`` reference samplers.

    Args:
        path: The PNG to write.
        table: The quality table (its samples and FIDs).
        reference: Real digits [N, 64] for the first column.
        per_cell: Samples per panel (a square number tiles best).
        worse, worse_fid: Optional label → images and label → FID for an extra row.

    Returns:
        True when written, False when matplotlib is missing.
    """
    Figure = _figure_class()
    if Figure is None:
        return False
    columns = max(1, int(round(per_cell**0.5)))
    extra = list(worse or {})
    cols = max(len(table.steps), len(extra)) + 1
    rows = len(table.etas) + (1 if extra else 0)
    fig = Figure(figsize=(1.7 * cols, 1.8 * rows + 0.4), dpi=80)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, eta in enumerate(table.etas):
        axes[i][0].set_axis_on()
        _show(axes[i][0], mosaic(reference[:per_cell], columns), "held-out digits" if i == 0 else "")
        axes[i][0].set_ylabel(f"η = {eta:g}", fontsize=10)
        for j, S in enumerate(table.steps, start=1):
            axes[i][j].set_axis_on()
            title = f"S={S}  FID {table.fid[(eta, S)]:.1f}"
            _show(axes[i][j], mosaic(table.samples[(eta, S)][:per_cell], columns), title)
    if worse:
        for j, label in enumerate(extra, start=1):
            ax = axes[-1][j]
            ax.set_axis_on()
            score = f"\nFID {worse_fid[label]:.0f}" if worse_fid else ""
            _show(ax, mosaic(worse[label][:per_cell], columns), _wrap(label) + score)
        axes[-1][0].set_title("should score worse:", fontsize=8, loc="left")
    fig.suptitle("DDIM samples of a small MLP trained on 8×8 digits, per η (rows) and S (columns)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True


def _wrap(label: str, width: int = 26) -> str:
    """Break a label onto lines of about ``width`` characters at spaces."""
    lines: list[str] = []
    for word in label.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "\n".join(lines)


def draw_interpolation(path: Path, result: Interpolation, labels: Sequence[Sequence[int]] | None = None) -> bool:
    """One PNG: per path, the decoded slerp of the two encoded digits above the pixel crossfade.

    Args:
        path: The PNG to write.
        result: The :func:`~ddim_sched.demo.digits_experiments.interpolation` result.
        labels: Optional classifier label per decoded image [P][K], printed under each.

    Returns:
        True when written, False when matplotlib is missing.
    """
    Figure = _figure_class()
    if Figure is None:
        return False
    pairs, points = result.decoded.shape[:2]
    fig = Figure(figsize=(0.9 * (points + 2), 1.05 * 2 * pairs + 0.6), dpi=80)
    axes = fig.subplots(2 * pairs, points + 2, squeeze=False)
    for p in range(pairs):
        for row, (name, images) in enumerate((("slerp", result.decoded[p]), ("crossfade", result.crossfade[p]))):
            line = axes[2 * p + row]
            _show(line[0], mosaic(result.start[p : p + 1], 1), "start" if p == 0 and row == 0 else "")
            _show(line[-1], mosaic(result.end[p : p + 1], 1), "end" if p == 0 and row == 0 else "")
            line[0].set_ylabel(name, fontsize=8)
            for k in range(points):
                title = f"α={float(result.alphas[k]):.2g}" if p == 0 and row == 0 else ""
                _show(line[k + 1], mosaic(images[k : k + 1], 1), title)
                if labels is not None and row == 0:
                    line[k + 1].set_xlabel(str(labels[p][k]), fontsize=7, labelpad=1)
    fig.suptitle(
        f"Slerp between encoded held-out digits (invert S={result.steps}, k={result.fixed_point_iterations}; "
        "decode η=0) above the pixel crossfade",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True
