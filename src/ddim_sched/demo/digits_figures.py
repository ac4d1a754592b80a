"""PNG figures of the digits demo: a labelled sample grid per (S, η) and the interpolation strips.

matplotlib is optional (the ``demo`` extra): without it the drawing functions return False and draw
nothing. They use matplotlib's ``Figure`` directly (no pyplot, no global backend state).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .digits_experiments import Interpolation, QualityTable
from .digits_metric import Spread
from .digits_train import SIDE
from .figures import FIGURE_DPI, FIGURE_WIDTH, LABEL_PT, TEXT_PT, TITLE_PT, centred_cell

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


def _show(ax: Any, image: np.ndarray, title: str = "", colour: str = "black") -> None:
    ax.imshow(image, cmap=INK, vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=TEXT_PT, color=colour)


def _fid(label: Hashable, fid: float, spread: Spread | None) -> str:
    """``FID 22.7 ± 2.7``: the value and, when known, its split-half sd (as the tables print them)."""
    return f"FID {fid:.1f}" + (f" ± {spread.sd(label):.1f}" if spread is not None else "")


def draw_sample_grid(
    path: Path,
    table: QualityTable,
    reference: torch.Tensor,
    per_cell: int = 16,
    worse: dict[str, torch.Tensor] | None = None,
    worse_fid: dict[str, float] | None = None,
    spread: Spread | None = None,
) -> bool:
    """Write :func:`sample_grid_figure` to the PNG ``path``: True when written, False when matplotlib is missing."""
    if _figure_class() is None:
        return False
    sample_grid_figure(table, reference, per_cell, worse, worse_fid, spread).savefig(path, format="png")
    return True


def sample_grid_figure(
    table: QualityTable,
    reference: torch.Tensor,
    per_cell: int = 16,
    worse: dict[str, torch.Tensor] | None = None,
    worse_fid: dict[str, float] | None = None,
    spread: Spread | None = None,
) -> Any:
    """For each η (rows) and S (columns) the first ``per_cell`` samples, titled with their FID.

    The real digits the FIDs are measured against are shown once, left of the grid; the ``worse``
    image sets, if given, in a block of their own below it. Sized for a README (10 inches at 100 dpi).

    Args:
        table: The quality table (its samples and FIDs).
        reference: Real held-out digits [N, 64] (the first ``per_cell`` are shown).
        per_cell: Samples per panel (a square number tiles best).
        worse, worse_fid: Optional label → images and label → FID for the block below.
        spread: Optional split-half spread of the FIDs (labels: the (η, S) cells and the worse labels),
            printed as ``± sd``.

    Returns:
        A ``matplotlib.figure.Figure``.

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.figure import Figure

    columns = max(1, int(round(per_cell**0.5)))
    rows, cols = len(table.etas), len(table.steps)
    extra = list(worse or {})
    heights = [1.85 * rows + 0.9] + ([2.7] if extra else [])
    fig = Figure(figsize=(FIGURE_WIDTH, sum(heights)), dpi=FIGURE_DPI, layout="constrained")
    blocks = fig.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    top = blocks[0]
    grid = top.add_gridspec(rows, cols + 1, width_ratios=[1.1] + [1.0] * cols)
    _show(
        top.add_subplot(centred_cell(grid[:, 0], rows)),
        mosaic(reference[:per_cell], columns),
        f"real digits:\n{min(per_cell, len(reference))} of the {len(reference)}\nheld out",
    )
    for i, eta in enumerate(table.etas):
        for j, S in enumerate(table.steps):
            ax = top.add_subplot(grid[i, j + 1])
            score = _fid((eta, S), table.fid[(eta, S)], spread)
            _show(ax, mosaic(table.samples[(eta, S)][:per_cell], columns), f"S = {S}\n{score}" if i == 0 else score)
            if j == 0:
                ax.set_ylabel(f"η = {eta:g}", fontsize=LABEL_PT)
    top.suptitle(
        "DDIM samples of the learned digits model, per η (rows) and S (columns)\n"
        f"FID{' ± split-half sd' if spread is not None else ''} against the real digits: lower is closer to the data",
        fontsize=TITLE_PT,
    )
    if extra and worse is not None:
        bottom = blocks[1]
        axes = bottom.subplots(1, len(extra), squeeze=False)[0]
        for ax, label in zip(axes, extra, strict=True):
            score = _fid(label, worse_fid[label], spread) if worse_fid else ""
            _show(ax, mosaic(worse[label][:per_cell], columns), _wrap(label, 18) + ("\n" + score if score else ""))
        bottom.suptitle("Image sets that must score worse than DDIM's (the metric's sanity check)", fontsize=TITLE_PT)
    return fig


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
    """Write :func:`interpolation_figure` to the PNG ``path``: True when written, False when matplotlib is missing."""
    if _figure_class() is None:
        return False
    interpolation_figure(result, labels).savefig(path, format="png")
    return True


def interpolation_figure(result: Interpolation, labels: Sequence[Sequence[int]] | None = None) -> Any:
    """Per path, the decoded slerp of the two encoded digits above the pixel crossfade.

    Columns are the interpolation weights α (headed once). At α = 0 and 1 the crossfade row shows the two
    real digits and the slerp row their encode → decode round trip; a note under the strips says so.

    Args:
        result: The :func:`~ddim_sched.demo.digits_experiments.interpolation` result.
        labels: Optional classifier label per decoded image [P][K], printed above each as ``reads d``.

    Returns:
        A ``matplotlib.figure.Figure``.

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.figure import Figure

    pairs, points = result.decoded.shape[:2]
    fig = Figure(figsize=(FIGURE_WIDTH, 2.55 * pairs + 1.5), dpi=FIGURE_DPI, layout="constrained")
    # A header row for α; per pair the slerp row, the crossfade row and (between pairs) a thin spacer; a note.
    heights = [0.22] + [h for p in range(pairs) for h in ((1.0, 1.0, 0.15) if p < pairs - 1 else (1.0, 1.0))] + [0.35]
    grid = fig.add_gridspec(len(heights), points, height_ratios=heights)
    for k in range(points):
        header = fig.add_subplot(grid[0, k])
        header.set_axis_off()
        header.text(0.5, 0.0, f"α = {float(result.alphas[k]):.2g}", ha="center", va="bottom", fontsize=LABEL_PT)
    rows = (("slerp\n(decoded)", result.decoded), ("pixel\ncrossfade", result.crossfade))
    for p in range(pairs):
        for row, (name, images) in enumerate(rows):
            for k in range(points):
                ax = fig.add_subplot(grid[1 + 3 * p + row, k])
                reads = f"reads {labels[p][k]}" if labels is not None and row == 0 else ""
                _show(ax, mosaic(images[p, k : k + 1], 1), reads, "tab:blue")
                if k == 0:
                    ax.set_ylabel(name, fontsize=TEXT_PT)
    note = fig.add_subplot(grid[-1, :])
    note.set_axis_off()
    note.text(
        0.5,
        0.5,
        "At α = 0 and 1 the crossfade row shows the two real digits and the slerp row their encode -> decode round "
        "trip."
        + ("\nreads d (blue): the digit the feature classifier assigns to the decoded image." if labels else ""),
        ha="center",
        va="center",
        fontsize=TEXT_PT,
    )
    fig.suptitle(
        f"Slerp between encoded held-out digits (invert S={result.steps}, k={result.fixed_point_iterations}; "
        "decode η = 0) above the pixel crossfade",
        fontsize=TITLE_PT,
    )
    return fig
