"""``DDIMParallelScheduler``: diffusers' DDIM scheduler for parallel sampling (ParaDiGMS), on ddim_sched's
per-sample step.

It is :class:`~ddim_sched.DDIMScheduler` plus ``batch_step_no_noise``: a step of many samples at many
timesteps at once that adds no noise (a parallel sampler draws its noise ahead and adds it itself).
Where diffusers' ``batch_step_no_noise`` differs, this one follows ``step``: it lands where ``step`` lands
(the config's ``prev_timestep_rule``; diffusers always uses t − T // S), it honours ``set_alpha_to_one``
after the last step (diffusers always takes ᾱ = 1 there, unlike its own ``step``), and it accepts η > 0
(diffusers asserts η = 0): the ε̂ term is then √(1 − ᾱ_prev − σ²), the noise term left to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..common.arguments import check_pair, eta_values
from ..compat.output import DDIMSchedulerOutput
from ..compat.scheduler_mixin import (
    DiffusersDDIMParallelScheduler,
    SchedulerMixin,  # noqa: F401  (diffusers' pipeline loader looks for it beside the class)
)
from ..core.step import apply_step
from ..core.update import snr_ratio
from .scheduler import DDIMScheduler


@dataclass
class DDIMParallelSchedulerOutput(DDIMSchedulerOutput):
    """Output of :meth:`DDIMParallelScheduler.step` (the fields of :class:`DDIMSchedulerOutput`)."""


class DDIMParallelScheduler(DDIMScheduler, DiffusersDDIMParallelScheduler):
    """A drop-in for diffusers' ``DDIMParallelScheduler``: :class:`DDIMScheduler` plus ``batch_step_no_noise``."""

    _is_ode_scheduler: ClassVar[bool] = True
    _output_class: ClassVar[type[DDIMSchedulerOutput]] = DDIMParallelSchedulerOutput

    def batch_step_no_noise(
        self,
        model_output: torch.Tensor,
        timesteps: torch.Tensor,
        sample: torch.Tensor,
        eta: float | torch.Tensor = 0.0,
        use_clipped_model_output: bool = False,
    ) -> torch.Tensor:
        """Step every batch element from its own timestep, adding no noise.

        Args:
            model_output: m, [B, ...].
            timesteps: [B] integer tensor (or one timestep for all), any device.
            sample: x_t, [B, ...].
            eta: η >= 0, a float or a [B] tensor: the ε̂ term is √(1 − ᾱ_prev − σ(η)²); no σ·z is added.
            use_clipped_model_output: Re-derive ε̂ from the clipped/thresholded x̂0.

        Returns:
            x_prev, [B, ...], the sample's dtype (as diffusers: the tensor, not an output object).

        Raises:
            ValueError, TypeError: As :meth:`DDIMScheduler.step`.
        """
        schedule = self._require_schedule()
        check_pair("model_output", model_output, "sample", sample)
        eta = eta_values(eta, tuple(sample.shape), sample.device)
        coefficients = schedule.coefficients(timesteps, eta, sample, model_output)
        prev_sample, _ = apply_step(
            model_output, sample, coefficients, schedule.prediction_type, self._clip, use_clipped_model_output,
            with_x0=False,
        )  # fmt: skip
        return prev_sample

    def _batch_get_variance(self, t: torch.Tensor, prev_t: torch.Tensor) -> torch.Tensor:
        """DDPM's posterior variance σ²(η = 1) per element, for integer tensors of timesteps (prev_t < 0:
        after the last step, ᾱ = final_alpha_cumprod), float32 of the broadcast shape."""
        t, prev_t = torch.broadcast_tensors(torch.as_tensor(t), torch.as_tensor(prev_t))
        a_t, b_t = self._levels.levels_of(t.to(torch.int64))
        a_s, b_s = self._levels.levels_of(prev_t.to(torch.int64).clamp(min=-1))
        return (b_s * b_s * (1 - snr_ratio(a_t, b_t, a_s, b_s))).to(torch.float32).reshape(t.shape)
