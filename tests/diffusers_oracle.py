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

from ddim_sched.ddim.config import DIFFUSERS_FIELDS
from tests.oracle import dummy_model  # re-exported: the tests' one dummy model

# diffusers logs through its own logger; keep the test output readable.
logging.getLogger("diffusers").setLevel(logging.ERROR)


__all__ = [
    "closed_form_step",
    "diffusers_scheduler",
    "dummy_model",
    "exact_scheduler",
    "exact_step",
    "float64_betas",
    "randn_tensor",
]


def diffusers_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``config`` that diffusers' DDIMScheduler accepts."""
    return {k: v for k, v in config.items() if k in DIFFUSERS_FIELDS}


def float64_betas(config: dict[str, Any]) -> torch.Tensor:
    """β_1..β_T in float64 from the formulas of docs/concepts.md (beta schedules), written independently of
    ddim_sched."""
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


def closed_form_step(
    scheduler: diffusers.DDIMScheduler,
    model_output: torch.Tensor,
    timestep: int,
    sample: torch.Tensor,
    eta: float = 0.0,
    use_clipped_model_output: bool = False,
    variance_noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM eq. 12 written from docs/reference.md (k-diffusion's view) on ``scheduler``'s tables (diffusers' stride
    rule for ᾱ_prev).

    The direction coefficient √(1 − ᾱ_prev − σ²) is evaluated without cancellation, as
    √((1 − ᾱ_prev)/(1 − ᾱ_t) · ((1 − η²)(1 − ᾱ_t/ᾱ_prev) + ᾱ_t/ᾱ_prev · (1 − ᾱ_prev))): diffusers subtracts,
    and near ᾱ_t = 0 at η = 1 takes the square root of a rounding error (NaN when it is negative).
    """
    config = scheduler.config
    prev = timestep - config.num_train_timesteps // scheduler.num_inference_steps
    a_t = scheduler.alphas_cumprod[timestep].item()
    a_prev = (scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod).item()
    x, m = sample, model_output
    if config.prediction_type == "epsilon":
        x0, eps = (x - math.sqrt(1 - a_t) * m) / math.sqrt(a_t), m
    elif config.prediction_type == "sample":
        x0, eps = m, (x - math.sqrt(a_t) * m) / math.sqrt(1 - a_t)
    else:
        x0, eps = math.sqrt(a_t) * x - math.sqrt(1 - a_t) * m, math.sqrt(a_t) * m + math.sqrt(1 - a_t) * x
    if config.thresholding:
        x0 = scheduler._threshold_sample(x0)
    elif config.clip_sample:
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    if use_clipped_model_output:
        eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    ratio = a_t / a_prev
    direction = math.sqrt((1 - a_prev) / (1 - a_t) * ((1 - eta**2) * (1 - ratio) + ratio * (1 - a_prev)))
    prev_sample = math.sqrt(a_prev) * x0 + direction * eps
    if eta > 0 and variance_noise is not None:
        prev_sample = prev_sample + sigma * variance_noise
    return prev_sample, x0


def exact_step(scheduler: diffusers.DDIMScheduler, model_output, timestep, sample, **kwargs):
    """The float64 reference step on an :func:`exact_scheduler`, for float64 inputs.

    Returns ((prev_sample, x̂0) from :func:`closed_form_step`, diffusers_failed). The closed form is
    checked against diffusers' own step on the same float64 tables (to 1e-6, which allows for
    diffusers' cancellation); diffusers_failed says that diffusers' step returned non-finite values.
    """
    truth = closed_form_step(scheduler, model_output, int(timestep), sample, **kwargs)
    out = scheduler.step(model_output, timestep, sample, **kwargs)
    if not (torch.isfinite(out.prev_sample).all() and torch.isfinite(out.pred_original_sample).all()):
        return truth, True
    for got, expected in zip((out.prev_sample, out.pred_original_sample), truth, strict=True):
        error = float((got - expected).norm() / expected.norm().clamp(min=1e-30))
        assert error <= 1e-6, f"closed form and diffusers' float64 step differ by {error:.2e}"
    return truth, False
