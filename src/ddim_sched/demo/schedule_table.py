"""What a scheduler configuration visits: one row per step with ᾱ, SNR and σ, as a table, CSV or JSON.

The rows behind ``ddim-sched schedule``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..ddim.scheduler import DDIMScheduler


def step_sigma(alpha_bar_t: float, alpha_bar_prev: float, eta: float) -> float:
    """DDIM's σ of a step (eq. 16): η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev); 0 where ᾱ_t >= ᾱ_prev."""
    if alpha_bar_t >= alpha_bar_prev:
        return 0.0
    return eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev))


def schedule_rows(scheduler: DDIMScheduler, eta: float) -> list[dict[str, Any]]:
    """One row per visited timestep: t, where the step lands, the next visited timestep, ᾱ, SNR, σ.

    Args:
        scheduler: A DDIMScheduler after ``set_timesteps``.
        eta: η for the ``sigma_step`` column.

    Returns:
        Rows with keys step, t, t_prev, next_visited, alpha_bar, alpha_bar_prev, snr, sigma_noise
        (k-diffusion's σ = √((1−ᾱ)/ᾱ), inf at ᾱ = 0) and sigma_step (eq. 16); −1 means past the end.
    """
    alpha_bar = scheduler.alpha_bar
    final = 1.0 if scheduler.ddim_config.set_alpha_to_one else float(alpha_bar[0])
    timesteps = scheduler.timesteps.tolist()
    rows = []
    for i, t in enumerate(timesteps):
        prev = int(scheduler.previous_timestep(t))
        a_t = float(alpha_bar[t])
        a_prev = final if prev < 0 else float(alpha_bar[prev])
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
                "sigma_step": step_sigma(a_t, a_prev, eta),
            }
        )
    return rows


def format_json(scheduler: DDIMScheduler, rows: list[dict[str, Any]], eta: float) -> str:
    """The config, η and rows as JSON (σ_noise = inf, at zero terminal SNR, written as null)."""
    finite = [{k: (None if v == math.inf else v) for k, v in row.items()} for row in rows]
    return json.dumps({"config": scheduler.ddim_config.to_dict(), "eta": eta, "steps": finite}, indent=2)


def format_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV with a header (floats written with repr, so they round-trip)."""
    keys = list(rows[0])
    lines = [",".join(keys)]
    lines += [",".join(repr(row[k]) if isinstance(row[k], float) else str(row[k]) for k in keys) for row in rows]
    return "\n".join(lines)


def format_table(scheduler: DDIMScheduler, rows: list[dict[str, Any]], eta: float) -> str:
    """A readable table with a summary of the configuration and a legend; ``*`` marks steps landing off the schedule."""
    config = scheduler.ddim_config
    alpha_bar = scheduler.alpha_bar
    terminal = float(alpha_bar[-1])
    lines = [
        f"{config.beta_schedule} betas, T={config.num_train_timesteps}, {config.timestep_spacing} spacing, "
        f"steps_offset={config.steps_offset}, rescale_betas_zero_snr={config.rescale_betas_zero_snr}, "
        f"prediction_type={config.prediction_type}, prev_timestep_rule={config.prev_timestep_rule}",
        f"alpha_bar[0]={float(alpha_bar[0]):.6g}, alpha_bar[T-1]={terminal:.6g} "
        f"(sqrt {math.sqrt(terminal):.6g}, SNR {terminal / (1 - terminal):.6g}), "
        f"alpha_bar after the last step={rows[-1]['alpha_bar_prev']:.6g}",
        f"S={len(rows)} steps, eta={eta:g}",
        f"{'step':>5} {'t':>5} {'t_prev':>7} {'next':>5}  {'alpha_bar':>11} {'alpha_bar_prev':>14} "
        f"{'SNR':>11} {'sigma_noise':>11} {'sigma_step':>11}",
    ]
    off_schedule = 0
    for row in rows:
        flag = " *" if row["t_prev"] != row["next_visited"] else ""
        off_schedule += bool(flag)
        lines.append(
            f"{row['step']:>5} {row['t']:>5} {row['t_prev']:>7} {row['next_visited']:>5}  {row['alpha_bar']:>11.5g} "
            f"{row['alpha_bar_prev']:>14.5g} {row['snr']:>11.4g} {row['sigma_noise']:>11.4g} "
            f"{row['sigma_step']:>11.4g}{flag}"
        )
    lines += [
        "t: the timestep a step starts from; t_prev: the timestep it lands on, where alpha_bar_prev is read "
        "(-1: past the end);",
        "next: the timestep the loop visits next (-1: none); SNR = alpha_bar/(1-alpha_bar); "
        "sigma_noise = sqrt((1-alpha_bar)/alpha_bar) (k-diffusion's sigma);",
        f"sigma_step: the noise the step adds, DDIM's eq. 16 sigma at eta={eta:g}"
        + (" (0: deterministic DDIM; --eta 1 gives DDPM's)." if eta == 0 else "."),
    ]
    if off_schedule:
        lines.append(
            f"* {off_schedule} step(s) land on a timestep other than the next one visited (diffusers' stride rule "
            "t - T//S); --prev-timestep-rule schedule lands on the next visited timestep instead."
        )
    return "\n".join(lines)
