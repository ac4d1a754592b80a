"""Options of diffusers' other schedulers that a DDIM config may carry, and the DDIM spacing each stands for.

diffusers' ``EulerDiscreteScheduler``, ``DPMSolverMultistepScheduler`` and their kin respace their noise
levels when a config sets ``use_karras_sigmas``, ``use_exponential_sigmas``, ``use_beta_sigmas`` or
``use_lu_lambdas``. diffusers' ``DDIMScheduler`` loads such a config and ignores the flag without a word;
ddim_sched does the same (so a config means what it means in diffusers) but says so once, naming the
``timestep_spacing`` that places the timesteps on the same grid. Passing that spacing is the opt-in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger("ddim_sched")

# diffusers' flag -> the ddim_sched timestep_spacing with the same noise-level grid (tables/spacing.py): each
# is the grid between the table's σ_min = σ_0 and σ_max, at the nearest timesteps in log σ. DPM-Solver's
# "Lu" λ schedule is uniform in λ = −log σ, which is the exponential grid.
SIGMA_FLAG_SPACINGS: dict[str, str] = {
    "use_karras_sigmas": "karras",
    "use_exponential_sigmas": "exponential",
    "use_beta_sigmas": "beta",
    "use_lu_lambdas": "exponential",
}


def carried_sigma_flags(mapping: Mapping[str, Any], timestep_spacing: str) -> dict[str, str]:
    """The flags of :data:`SIGMA_FLAG_SPACINGS` that ``mapping`` sets to True while ``timestep_spacing`` is
    not their spacing (the flags a DDIM scheduler is ignoring), each with its spacing."""
    return {
        flag: spacing
        for flag, spacing in SIGMA_FLAG_SPACINGS.items()
        if mapping.get(flag) is True and spacing != timestep_spacing
    }


def warn_carried_sigma_flags(mapping: Mapping[str, Any], timestep_spacing: str, owner: str) -> None:
    """Log one warning on the ``ddim_sched`` logger if ``mapping`` sets a flag of :data:`SIGMA_FLAG_SPACINGS`
    that the config's ``timestep_spacing`` does not follow: which flags, what is used instead, and the opt-in."""
    ignored = carried_sigma_flags(mapping, timestep_spacing)
    if not ignored:
        return
    flags = ", ".join(f"{flag}=True" for flag in ignored)
    spacings = sorted(set(ignored.values()))
    equivalent = " or ".join(f"timestep_spacing={name!r}" for name in spacings)
    logger.warning(
        "%s: the config sets %s, an option of diffusers' other schedulers, which a DDIM scheduler ignores (as "
        "diffusers' DDIMScheduler does): it keeps timestep_spacing=%r. The same noise-level grid (over the whole "
        "alpha_bar table, at the nearest timesteps) is %s; to take it, pass it: %s.from_config(config, "
        "timestep_spacing=%r).",
        owner,
        flags,
        timestep_spacing,
        equivalent,
        owner,
        spacings[0],
    )
