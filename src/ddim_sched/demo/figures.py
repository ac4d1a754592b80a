"""The demo's figures, drawn with matplotlib's object API (no pyplot, no global backend).

matplotlib is optional (the ``demo`` extra): :func:`matplotlib_available` says whether it is
installed, and the drawing functions import it only when called.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from ..ddim.scheduler import DDIMScheduler
from .common import DEMO_EXTRA, ring_mixture
from .mixture import MixtureResult

DEMO_EXTRA_HINT = f"{DEMO_EXTRA}  (or: pip install matplotlib)"
FLOOR_COLOUR = "tab:green"
SAMPLES_SHOWN = 1000


def matplotlib_available() -> bool:
    """Whether matplotlib (the ``demo`` extra) can be imported."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


def png_bytes(figure: Any) -> bytes:
    """A matplotlib Figure rendered as PNG bytes (write them where you like)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _density_grid(limit: float, points: int = 150) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x grid, y grid, log density of the ring mixture on it), float64."""
    grid = torch.linspace(-limit, limit, points, dtype=torch.float64)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    log_density = ring_mixture().log_prob(torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)).reshape(gx.shape)
    return gx, gy, log_density


# Font sizes (points) for figures 10 inches wide at 100 dpi: at a README's width (about 880 pixels) the
# smallest text is still about 12 pixels high.
TITLE_PT, LABEL_PT, TEXT_PT = 14, 13, 11.5
FIGURE_WIDTH, FIGURE_DPI = 10.0, 100


def _legend_handles(result: MixtureResult) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    def dot(colour: str, label: str) -> Any:
        return Line2D([], [], color=colour, marker="o", linestyle="", markersize=7, label=label)

    return [
        Patch(facecolor="0.55", alpha=0.5, label="true density"),
        dot("tab:blue", f"data samples (first {min(SAMPLES_SHOWN, result.n)})"),
        dot("tab:red", f"DDIM samples (first {min(SAMPLES_SHOWN, result.n)} of {result.n})"),
        Patch(
            facecolor="none",
            edgecolor=FLOOR_COLOUR,
            linewidth=2,
            label=f"~ within the noise floor: SW2 <= {result.floor_max:.3f} "
            f"(data vs data: {result.floor_mean:.3f} ± {result.floor_sd:.3f})",
        ),
    ]


def centred_cell(column: Any, rows: int) -> Any:
    """A SubplotSpec about one cell high, centred in ``column`` (a SubplotSpec spanning ``rows`` rows): where a
    figure shows its reference panel once, beside the grid it belongs to."""
    if rows == 1:
        return column
    side = (rows - 1) / 2
    return column.subgridspec(3, 1, height_ratios=[side, 1.35, side])[1]


def _bare(ax: Any, limit: float) -> None:
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def mixture_figure(result: MixtureResult) -> Any:
    """DDIM samples over the true density, one panel per (η, S), beside one panel of the data.

    The data panel (the reference every cell is measured against) is drawn once, left of the grid.
    Each panel is titled with its sliced W2 (the table (b) entry); cells within the Monte-Carlo noise
    floor (:meth:`MixtureResult.within_floor`) get a green frame and a ``~``, as in the text table, and
    the legend gives the floor (mean ± sd). Sized for a README: 10 inches wide at 100 dpi.

    Args:
        result: Section (b)'s result.

    Returns:
        A ``matplotlib.figure.Figure`` (render it with :func:`png_bytes`).

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.figure import Figure

    limit = 1.6
    gx, gy, log_density = _density_grid(limit)
    top = float(log_density.max())
    levels = [top - 9.0, top - 4.5, top - 2.0, top - 0.5, top + 1e-9]  # flat fills keep the PNG small
    rows, cols = len(result.etas), len(result.steps)
    figure = Figure(figsize=(FIGURE_WIDTH, 1.62 * rows + 2.1), dpi=FIGURE_DPI, layout="constrained")
    # The last row holds the legend (an axis of its own: constrained layout then makes room for it).
    grid = figure.add_gridspec(
        rows + 1, cols + 1, width_ratios=[1.15] + [1.0] * cols, height_ratios=[1.0] * rows + [0.4]
    )

    def density(ax: Any) -> None:
        ax.contourf(gx.numpy(), gy.numpy(), log_density.numpy(), levels=levels, cmap="Greys", alpha=0.5)

    data_ax = figure.add_subplot(centred_cell(grid[:rows, 0], rows))
    density(data_ax)
    points = result.reference[:SAMPLES_SHOWN].numpy()
    data_ax.scatter(points[:, 0], points[:, 1], s=2.0, c="tab:blue", linewidths=0)
    _bare(data_ax, limit)
    data_ax.set_title("data\n(the reference)", fontsize=LABEL_PT)
    for i, eta in enumerate(result.etas):
        for j, S in enumerate(result.steps):
            ax = figure.add_subplot(grid[i, j + 1])
            density(ax)
            points = result.samples[(eta, S)][:SAMPLES_SHOWN].numpy()
            ax.scatter(points[:, 0], points[:, 1], s=1.5, c="tab:red", linewidths=0)
            _bare(ax, limit)
            within = result.within_floor(eta, S)
            title = f"SW2 {result.table[(eta, S)]:.3f}{' ~' if within else ''}"
            ax.set_title(f"S = {S}\n{title}" if i == 0 else title, fontsize=TEXT_PT)
            if j == 0:
                ax.set_ylabel(f"η = {eta:g}", fontsize=LABEL_PT)
            if within:
                for spine in ax.spines.values():
                    spine.set_edgecolor(FLOOR_COLOUR)
                    spine.set_linewidth(2.0)
    figure.suptitle(
        "DDIM with the exact denoiser of an 8-mode Gaussian mixture, per η (rows) and S (columns)",
        fontsize=TITLE_PT,
    )
    legend = figure.add_subplot(grid[rows, :])
    legend.set_axis_off()
    legend.legend(handles=_legend_handles(result), loc="center", ncol=2, fontsize=TEXT_PT)
    return figure


def schedule_figure(scheduler: DDIMScheduler, rows: list[dict[str, Any]], eta: float) -> Any:
    """ᾱ, SNR and σ per step of a schedule (the rows of :func:`ddim_sched.demo.schedule_table.schedule_rows`).

    SNR is drawn on a log axis; timesteps where it is exactly 0 (zero terminal SNR) cannot be, so they
    are marked at the axis' lower edge with a labelled marker instead.

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    alpha_bar = scheduler.alpha_bar.to(torch.float64)
    t_all = torch.arange(alpha_bar.shape[0])
    visited = [row["t"] for row in rows]
    figure = Figure(figsize=(FIGURE_WIDTH * 1.2, 3.8), dpi=FIGURE_DPI, layout="constrained")
    ax1, ax2, ax3 = figure.subplots(1, 3)
    ax1.plot(t_all.numpy(), alpha_bar.numpy(), lw=1.2, label="alpha_bar")
    ax1.plot(visited, [row["alpha_bar"] for row in rows], "o", ms=4, label="visited")
    ax1.set_xlabel("timestep t", fontsize=TEXT_PT)
    ax1.set_title("alpha_bar", fontsize=LABEL_PT)
    ax1.legend(fontsize=TEXT_PT - 1)
    snr = alpha_bar / (1 - alpha_bar)
    positive = snr > 0
    ax2.semilogy(t_all[positive].numpy(), snr[positive].numpy(), lw=1.2, label="SNR")
    shown = [(row["t"], row["snr"]) for row in rows if row["snr"] > 0]
    ax2.semilogy([t for t, _ in shown], [v for _, v in shown], "o", ms=4, color="tab:orange", label="visited")
    zero = t_all[~positive].tolist()
    if zero:  # log(0) = -inf: mark SNR = 0 at the bottom edge of the axis, not at an arbitrary tiny value
        edge = blended_transform_factory(ax2.transData, ax2.transAxes)
        where = ", ".join(map(str, zero[:3])) + ("..." if len(zero) > 3 else "")
        ax2.plot(
            zero,
            [0.0] * len(zero),
            "v",
            ms=7,
            color="tab:red",
            transform=edge,
            clip_on=False,
            label=f"SNR = 0 at t = {where}\n(-inf: marked at the edge)",
        )
    ax2.set_xlabel("timestep t", fontsize=TEXT_PT)
    ax2.set_title("SNR = alpha_bar / (1 - alpha_bar)", fontsize=LABEL_PT)
    ax2.legend(fontsize=TEXT_PT - 1, loc="lower left")
    ax3.plot([row["step"] for row in rows], [row["sigma_step"] for row in rows], "o-", ms=4)
    ax3.set_xlabel("step", fontsize=TEXT_PT)
    ax3.set_title(f"DDIM sigma per step (eta={eta:g})", fontsize=LABEL_PT)
    if all(row["sigma_step"] == 0 for row in rows):
        ax3.text(
            0.5,
            0.6,
            "sigma = 0 at every step:\neta = 0 is deterministic\n(--eta 1 shows DDPM's)",
            transform=ax3.transAxes,
            ha="center",
            fontsize=TEXT_PT,
        )
    config = scheduler.ddim_config
    figure.suptitle(
        f"{config.beta_schedule} betas, {config.timestep_spacing} spacing, S={len(rows)}, "
        f"rescale_betas_zero_snr={config.rescale_betas_zero_snr}",
        fontsize=LABEL_PT,
    )
    return figure
