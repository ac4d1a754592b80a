"""References for the differential tests: diffusers' DDIMScheduler as shipped, and the same code
run with float64 noise tables ("exact"), to tell diffusers' float32 rounding from our errors.

Only tests import this module (diffusers is a test dependency, never imported by ddim_sched).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import diffusers
import torch
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr
from diffusers.utils.torch_utils import randn_tensor

from ddim_sched.config import DIFFUSERS_FIELDS

# diffusers logs through its own logger; keep the test output readable.
logging.getLogger("diffusers").setLevel(logging.ERROR)

__all__ = ["diffusers_scheduler", "exact_scheduler", "float64_betas", "dummy_model", "randn_tensor"]


def diffusers_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``config`` that diffusers' DDIMScheduler accepts."""
    return {k: v for k, v in config.items() if k in DIFFUSERS_FIELDS}


def float64_betas(config: dict[str, Any]) -> torch.Tensor:
    """β_1..β_T in float64 from the formulas of REFERENCE.md §2, written independently of ddim_sched."""
    T = config.get("num_train_timesteps", 1000)
    start, end = config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
    schedule = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        betas = torch.tensor(list(config["trained_betas"]), dtype=torch.float64)
    elif schedule == "linear":
        betas = torch.linspace(start, end, T, dtype=torch.float64)
    elif schedule == "scaled_linear":
        betas = torch.linspace(math.sqrt(start), math.sqrt(end), T, dtype=torch.float64) ** 2
    else:
        assert schedule == "squaredcos_cap_v2", schedule

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)], dtype=torch.float64
        )
    if config.get("rescale_betas_zero_snr", False):
        betas = rescale_zero_terminal_snr(betas)  # diffusers' own function; dtype-preserving
    return betas


def diffusers_scheduler(config: dict[str, Any]) -> diffusers.DDIMScheduler:
    """diffusers' DDIMScheduler as shipped (float32 tables)."""
    return diffusers.DDIMScheduler(**diffusers_fields(config))


def exact_scheduler(config: dict[str, Any]) -> diffusers.DDIMScheduler:
    """diffusers' DDIMScheduler with its noise tables replaced by float64 ones.

    Its step/add_noise/get_velocity code is unchanged; fed float64 inputs, it evaluates diffusers'
    formulas in float64 throughout, which is the accuracy ddim_sched claims.
    """
    scheduler = diffusers_scheduler(config)
    betas = float64_betas(config)
    scheduler.betas = betas
    scheduler.alphas = 1.0 - betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    scheduler.final_alpha_cumprod = (
        torch.tensor(1.0, dtype=torch.float64) if scheduler.config.set_alpha_to_one else scheduler.alphas_cumprod[0]
    )
    return scheduler


def dummy_model(sample: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
    """diffusers' scheduler-test model m(x, t) = x · t / (t + 1) (REFERENCE.md §5)."""
    return sample * t / (t + 1)
