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


def _legend_handles(result: MixtureResult) -> list[Any]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    def dot(colour: str, label: str) -> Any:
        return Line2D([], [], color=colour, marker="o", linestyle="", markersize=5, label=label)

    return [
        Patch(facecolor="0.55", alpha=0.5, label="true density (grey)"),
        dot("tab:blue", "data samples (blue)"),
        dot("tab:red", f"DDIM samples, first {min(SAMPLES_SHOWN, result.n)} (red)"),
        Patch(
            facecolor="none",
            edgecolor=FLOOR_COLOUR,
            linewidth=2,
            label=f"~ within the noise floor: SW2 <= {result.floor_max:.3f} (data vs data)",
        ),
    ]


def mixture_figure(result: MixtureResult) -> Any:
    """One panel per (η, S) of DDIM samples over the true density, plus the data; a legend for the colours.

    Cells within the Monte-Carlo noise floor (:meth:`MixtureResult.within_floor`) get a green frame and
    a ``~`` after their SW2, as in the text table.

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
    rows, cols = len(result.etas), len(result.steps) + 1
    figure = Figure(figsize=(2.0 * cols, 2.0 * rows + 1.0), dpi=72)
    axes = figure.subplots(rows, cols, squeeze=False)
    for i, eta in enumerate(result.etas):
        for j, S in enumerate((None, *result.steps)):
            ax = axes[i][j]
            ax.contourf(gx.numpy(), gy.numpy(), log_density.numpy(), levels=levels, cmap="Greys", alpha=0.5)
            points = (result.reference if S is None else result.samples[(eta, S)])[:SAMPLES_SHOWN].numpy()
            ax.scatter(points[:, 0], points[:, 1], s=1.5, c="tab:blue" if S is None else "tab:red", linewidths=0)
            ax.set_xlim(-limit, limit)
            ax.set_ylim(-limit, limit)
            ax.set_xticks([])
            ax.set_yticks([])
            if S is None:
                ax.set_title("data" if i == 0 else "", fontsize=8)
                ax.set_ylabel(f"η = {eta:g}", fontsize=10)
                continue
            within = result.within_floor(eta, S)
            ax.set_title(f"S={S}  SW2={result.table[(eta, S)]:.3f}{' ~' if within else ''}", fontsize=8)
            if within:
                for spine in ax.spines.values():
                    spine.set_edgecolor(FLOOR_COLOUR)
                    spine.set_linewidth(2.0)
    figure.suptitle("DDIM with the exact denoiser of an 8-mode Gaussian mixture (ddim-sched demo)", fontsize=10)
    figure.legend(handles=_legend_handles(result), loc="lower center", ncol=2, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    return figure


def schedule_figure(scheduler: DDIMScheduler, rows: list[dict[str, Any]], eta: float) -> Any:
    """ᾱ, SNR and σ per step of a schedule (the rows of :func:`ddim_sched.demo.schedule_table.schedule_rows`).

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.figure import Figure

    alpha_bar = scheduler.alpha_bar
    t_all = torch.arange(alpha_bar.shape[0]).numpy()
    visited = [row["t"] for row in rows]
    figure = Figure(figsize=(12, 3.4), dpi=90)
    ax1, ax2, ax3 = figure.subplots(1, 3)
    ax1.plot(t_all, alpha_bar.numpy(), lw=1, label="alpha_bar")
    ax1.plot(visited, [row["alpha_bar"] for row in rows], "o", ms=3, label="visited")
    ax1.set_xlabel("timestep t")
    ax1.set_title("alpha_bar")
    ax1.legend(fontsize=8)
    snr = (alpha_bar / (1 - alpha_bar)).clamp(min=1e-30)
    ax2.semilogy(t_all, snr.numpy(), lw=1, label="SNR")
    ax2.semilogy(visited, [max(row["snr"], 1e-30) for row in rows], "o", ms=3, label="visited")
    ax2.set_xlabel("timestep t")
    ax2.set_title("SNR = alpha_bar / (1 - alpha_bar)")
    ax2.legend(fontsize=8)
    ax3.plot([row["step"] for row in rows], [row["sigma_step"] for row in rows], "o-", ms=3)
    ax3.set_xlabel("step")
    ax3.set_title(f"DDIM sigma per step (eta={eta:g})")
    config = scheduler.ddim_config
    figure.suptitle(
        f"{config.beta_schedule}, {config.timestep_spacing}, S={len(rows)}, zero SNR={config.rescale_betas_zero_snr}",
        fontsize=10,
    )
    figure.tight_layout()
    return figure
