"""``DDIMScheduler``: DDIM sampling (Song, Meng & Ermon 2020), a drop-in for diffusers' ``DDIMScheduler``."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, overload

import torch

from ..common.arguments import check_pair, eta_values, step_noise
from ..compat.output import DDIMSchedulerOutput
from ..compat.scheduler_mixin import (
    DiffusersDDIMScheduler,
    SchedulerMixin,  # noqa: F401  (diffusers' pipeline loader looks for it beside the class)
)
from ..core.noise import Generator
from ..core.step import apply_step, check_out
from ..core.update import StepCoefficients, snr_ratio
from .base import DDIMSchedulerBase, SigmasArg, TimestepsArg

StepResult = DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]


class DDIMScheduler(DDIMSchedulerBase, DiffusersDDIMScheduler):
    """Denoising diffusion implicit models (Song, Meng & Ermon 2020), a drop-in for diffusers' DDIMScheduler.

    Construct it with the same keyword arguments as diffusers' class (see :class:`DDIMConfig`) or with
    :meth:`from_config` / :meth:`from_pretrained`; call :meth:`set_timesteps`, then :meth:`step` once per
    timestep in :attr:`timesteps`.

    Dtype rule: the noise tables (β, ᾱ) and every step coefficient are computed in float64 and cast once
    to the compute dtype: float64 for float64 samples, float32 otherwise. Half-precision samples are
    therefore stepped in float32 and returned in their own dtype. The public ``betas``, ``alphas``,
    ``alphas_cumprod`` and ``final_alpha_cumprod`` are float32 CPU tensors, as in diffusers (assigning one
    makes it the scheduler's table and derives the others); ``alpha_bar`` is the float64 table.

    Devices: ``step`` never copies from the device to the host. A tensor timestep that is an element of
    :attr:`timesteps` (as a pipeline's loop yields) is recognised without reading it; other device
    tensors have their coefficients gathered on the device. So a loop runs under
    ``torch.cuda.set_sync_debug_mode("error")``, in CUDA graphs and under ``torch.compile(fullgraph=True)``.

    Threads: any number of threads may step one scheduler; a ``set_timesteps`` in another thread affects
    only the steps that start after it (each step uses the schedule current when it began).
    """

    _output_class: ClassVar[type[DDIMSchedulerOutput]] = DDIMSchedulerOutput

    # ------------------------------------------------------------------ schedule

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: TimestepsArg | None = None,
        sigmas: SigmasArg | None = None,
    ) -> None:
        """Choose the timesteps to visit; call before sampling. Work and memory are O(S).

        Pass exactly one of ``num_inference_steps``, ``timesteps`` and ``sigmas`` (diffusers' pipelines pass
        ``timesteps=`` or ``sigmas=`` alone through ``retrieve_timesteps``).

        Args:
            num_inference_steps: S, the number of steps, 1 <= S <= num_train_timesteps; the config's
                ``timestep_spacing`` picks which timesteps.
            device: Where to put :attr:`timesteps` (the step's tables follow the sample's device).
            timesteps: A custom strictly decreasing sequence of timesteps in [0, T) instead of S. Each
                step then lands on the next timestep of this sequence.
            sigmas: A k-diffusion schedule instead (diffusers' ``sigmas=``, e.g. Align Your Steps'
                ``ddim_sched.ays.ays_sigmas("sd15", 10)``): S + 1 strictly decreasing noise levels
                σ = √((1 − ᾱ)/ᾱ), the S to visit and then 0 (or σ of ``final_alpha_cumprod``), where the
                last step lands. Each visited σ becomes the training timestep nearest in log σ (a timestep
                indexes ᾱ and is what the model is called with, so it is an integer; :attr:`sigmas` then
                reads the levels actually visited), and each step lands on the next of them, as with
                custom timesteps. A list, numpy array or tensor; σ = ∞ is the ᾱ = 0 timestep of a
                zero-terminal-SNR table.

        Raises:
            ValueError: Not exactly one of num_inference_steps, timesteps and sigmas (the message names
                those given); S out of range; a leading schedule pushed past T by steps_offset; a bad custom
                sequence; sigmas that are not decreasing, that lie outside the table's noise levels, end
                elsewhere than the final level, or put two levels on one timestep; or a schedule that visits
                a timestep with ᾱ = 0 (zero terminal SNR with trailing/linspace spacing) while
                prediction_type is "epsilon", where x̂0 = (x − √(1−ᾱ)ε)/√ᾱ is undefined.
            TypeError: num_inference_steps is not an int, timesteps are not integers, or sigmas are not
                real numbers.
        """
        schedule = self._plan(num_inference_steps, timesteps, device, sigmas)
        self._levels.check_defined(int(schedule.timesteps.max()), self._config.prediction_type)
        request = {
            "num_inference_steps": num_inference_steps,
            "device": device,
            "timesteps": timesteps,
            "sigmas": sigmas,
        }
        self._install(schedule, request)

    # ------------------------------------------------------------------ the step

    @overload
    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        eta: float | torch.Tensor = ...,
        use_clipped_model_output: bool = ...,
        generator: Generator = ...,
        variance_noise: torch.Tensor | None = ...,
        return_dict: Literal[True] = ...,
        prev_timestep: Any = ...,
        out: torch.Tensor | None = ...,
    ) -> DDIMSchedulerOutput: ...

    @overload
    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        eta: float | torch.Tensor = ...,
        use_clipped_model_output: bool = ...,
        generator: Generator = ...,
        variance_noise: torch.Tensor | None = ...,
        *,
        return_dict: Literal[False],
        prev_timestep: Any = ...,
        out: torch.Tensor | None = ...,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        eta: float | torch.Tensor = 0.0,
        use_clipped_model_output: bool = False,
        generator: Generator = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
        prev_timestep: Any = None,
        out: torch.Tensor | None = None,
    ) -> StepResult:
        """Step from ``timestep`` to the previous (less noisy) timestep: DDIM eq. 12.

        Every batch element is stepped exactly as if it were stepped alone, so one call can advance
        requests that are at different timesteps with different η (continuous batching). Differentiable
        with respect to the tensors (autograd takes the plain path, :func:`ddim_sched.core.update.ddim_update`).

        Args:
            model_output: The model's output m at x_t, [B, ...]: ε, x0 or v (``prediction_type``).
            timestep: t: a Python or numpy int, a 0-d numpy array, or an integer tensor of shape [] / [1]
                / [B] (one timestep per batch element) of any integer dtype on any device. Host values are
                range-checked; device tensors are not read (that would sync).
            sample: x_t, [B, ...], same shape as model_output; any memory layout.
            eta: η >= 0 (0 = DDIM, 1 = DDPM's σ), a float or a [B] tensor.
            use_clipped_model_output: Re-derive ε̂ from the clipped/thresholded x̂0.
            generator: A torch.Generator, or a list of one per batch element, for the η > 0 noise; draws
                exactly what diffusers' randn_tensor draws.
            variance_noise: The noise z itself, [B, ...] (e.g. CycleDiffusion); not with generator.
            return_dict: Return a :class:`DDIMSchedulerOutput` (True) or a tuple.
            prev_timestep: The timestep to land on, overriding the config's ``prev_timestep_rule``: an int
                or a [B] tensor; negative means past the last step (ᾱ = final_alpha_cumprod).
            out: A tensor of the sample's shape and dtype to write x_prev into (``out=sample`` steps in
                place). The default None returns a new tensor.

        Returns:
            (x_prev, x̂0) of the sample's dtype and layout, as DDIMSchedulerOutput or tuple; x_prev is
            ``out`` when given.

        Raises:
            ValueError: set_timesteps not called; shapes differ; timestep or prev_timestep out of range;
                eta < 0; both generator and variance_noise; a timestep with ᾱ = 0 under epsilon prediction
                (for host timesteps: device tensors are not read); ``out`` of another shape or dtype.
            TypeError: Non-tensor or non-floating inputs, non-integer timesteps.
        """
        schedule = self._require_schedule()
        check_pair("model_output", model_output, "sample", sample)
        if out is not None:
            check_out(out, sample)
        if not (type(eta) is float and 0.0 <= eta < math.inf):  # else already normalised: the common case
            eta = eta_values(eta, tuple(sample.shape), sample.device)
        coefficients = schedule.coefficients(timestep, eta, sample, model_output, prev_timestep)
        stochastic = type(eta) is not float or eta > 0.0
        noise = None
        if stochastic or variance_noise is not None:
            noise = step_noise(stochastic, sample, generator, variance_noise)
        prev_sample, pred_original_sample = apply_step(
            model_output, sample, coefficients, schedule.prediction_type, self._clip, use_clipped_model_output,
            noise, out,
        )  # fmt: skip
        self._count_step(timestep)
        if not return_dict:
            return prev_sample, pred_original_sample  # type: ignore[return-value]
        return self._output_class(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    # ------------------------------------------------------------------ views of the schedule

    def coefficients(self, timestep: int, eta: float = 0.0) -> StepCoefficients:
        """The float64 coefficients of the step from ``timestep`` (to where the config's rule lands) with η,
        as host floats: the step's levels (a_t, b_t) → (a_s, b_s), σ, and its linear-combination weights
        (:class:`ddim_sched.core.update.StepCoefficients`).

        Raises:
            ValueError: set_timesteps not called, or the timestep or η out of range.
        """
        schedule = self._require_schedule()
        t = self._timestep_arg(timestep, torch.empty(1), "timestep")
        rate = eta_values(eta, (1,), torch.device("cpu"))
        if not isinstance(t, int) or not isinstance(rate, float):
            raise TypeError("coefficients takes one timestep and a float eta")
        self._levels.check_defined(t, self._config.prediction_type)
        return schedule.row(schedule.sampling_key(t), rate)

    def _get_variance(
        self, timestep: int | torch.Tensor, prev_timestep: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """DDPM's posterior variance σ²(η = 1) of a step from ``timestep`` to ``prev_timestep`` (negative:
        past the end), as diffusers' private method returns it (a float32 tensor; computed in float64).
        Without ``prev_timestep``, where the step from ``timestep`` lands (:meth:`previous_timestep`: diffusers'
        t − T // S under the default rule, as its DDIMParallelScheduler defaults it; needs set_timesteps)."""
        if prev_timestep is None:
            prev_timestep = self.previous_timestep(int(timestep))
        t, prev = int(timestep), int(prev_timestep)
        (a_t, b_t), (a_s, b_s) = self._levels.level(t), self._levels.level(max(prev, -1))
        return torch.tensor(b_s * b_s * (1 - snr_ratio(a_t, b_t, a_s, b_s)), dtype=torch.float32)

    @property
    def sigmas(self) -> torch.Tensor:
        """The schedule as k-diffusion noise levels: σ_t = √((1−ᾱ_t)/ᾱ_t) for each of :attr:`timesteps`, then
        the final σ: 0 with ``set_alpha_to_one`` (ᾱ = 1), else σ of ᾱ_0.

        float64 CPU tensor of length len(timesteps) + 1 (+∞ where ᾱ_t = 0, zero terminal SNR); before
        set_timesteps, of every timestep. DDIM with
        η = 0 is Euler's method on these sigmas in x/√ᾱ coordinates (docs/concepts.md), step for step
        wherever each step lands on the next visited timestep: always with ``prev_timestep_rule="schedule"``
        or custom timesteps, and for ``leading`` under the "stride" rule too.
        """
        visited = self._schedule.timesteps.tolist() if self._schedule is not None else self.timesteps.tolist()
        levels = [self._levels.alpha_bar_at(int(t)) for t in visited] + [self._levels.final_alpha_bar]
        alpha_bar = torch.tensor(levels, dtype=torch.float64)
        return ((1 - alpha_bar) / alpha_bar).sqrt()
