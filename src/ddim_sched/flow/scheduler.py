r"""``FlowMatchDDIMScheduler``: DDIM on the rectified-flow path x_σ = (1 − σ)·x0 + σ·ε, a drop-in for diffusers'
``FlowMatchEulerDiscreteScheduler`` (SD3, Flux, Mochi, ...) with η.

The model predicts the velocity u = ε − x0; each step reads x̂0 = x − σ_t·u and ε̂ = x + (1 − σ_t)·u (eq. 9)
and moves to σ_s with DDIM's eq. 12 (:func:`ddim_sched.flow.update.flow_step_coefficients`). η = 0 is
exactly diffusers' Euler step x_s = x + (σ_s − σ_t)·u; η = 1 adds the DDPM posterior's noise;
``stochastic_sampling=True`` re-noises x̂0 completely (diffusers' stochastic sampler, the η → ∞ end).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, overload

import numpy as np
import torch

from ..common.arguments import broadcast_pair, check_pair, eta_values, step_noise
from ..common.progress import StepProgress
from ..common.validation import check_real
from ..compat.config_surface import ConfigSurface
from ..compat.output import DDIMSchedulerOutput
from ..compat.scheduler_mixin import (
    DiffusersFlowMatchEulerDiscreteScheduler,
    SchedulerMixin,  # noqa: F401  (diffusers' pipeline loader looks for it beside the class)
)
from ..core.noise import Generator
from ..core.runtime import compute_dtype
from ..core.step import apply_step, check_out
from ..core.update import prediction_weights
from ..tables.flow_sigmas import shift_sigmas, stretch_to_terminal, time_shift
from ..tables.sigma_grids import beta_sigmas, exponential_sigmas, karras_sigmas
from .arguments import check_timestep_type
from .config import FlowMatchDDIMConfig
from .plan import FlowSchedule, plan_schedule
from .update import flow_level

StepResult = DDIMSchedulerOutput | tuple[torch.Tensor]
Values = Sequence[float] | np.ndarray | torch.Tensor


class _SetIndex(int):
    """A step index set through ``_step_index`` (diffusers' attribute), told apart from a recorded timestep."""


class FlowMatchDDIMScheduler(StepProgress, ConfigSurface, DiffusersFlowMatchEulerDiscreteScheduler):
    """DDIM (Song, Meng & Ermon 2020) for flow-matching models, a drop-in for diffusers'
    FlowMatchEulerDiscreteScheduler: same constructor, config, ``set_timesteps`` (``sigmas``, ``timesteps``,
    ``mu``), ``scale_noise``, ``set_begin_index``/``step_index`` and float timesteps, plus η.

    Construct it with the keyword arguments of :class:`FlowMatchDDIMConfig` or with :meth:`from_config`
    (e.g. ``FlowMatchDDIMScheduler.from_config(pipe.scheduler.config, eta=0.5)``); call :meth:`set_timesteps`,
    then :meth:`step` once per element of :attr:`timesteps`.

    Dtype rule: noise levels and every step coefficient are computed in float64 and cast once to the
    compute dtype: float64 for float64 samples, float32 otherwise (half precision is stepped in float32 and
    returned in its own dtype). The public ``timesteps`` and ``sigmas`` are float32, as in diffusers.

    Devices: ``step`` never copies from the device to the host; a tensor timestep is looked up on its
    device (an element of :attr:`timesteps`, as a pipeline's loop yields, without any lookup at all), so a
    loop runs under ``torch.compile(fullgraph=True)``.
    """

    config_class = FlowMatchDDIMConfig
    _compatibles: ClassVar[list[str]] = ["FlowMatchEulerDiscreteScheduler"]
    order = 1
    init_noise_sigma = 1.0

    _config: FlowMatchDDIMConfig
    _schedule: FlowSchedule | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._init_config(args, kwargs)

    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + list(inspect.signature(FlowMatchDDIMConfig).parameters.values())
    )

    # ------------------------------------------------------------------ configuration

    def _set_config(self, config: FlowMatchDDIMConfig) -> None:
        """Install a validated config: the training table; a schedule already set is derived anew."""
        request = self.__dict__.get("_request")
        self._config, self._shift = config, config.shift
        T = config.num_train_timesteps
        sigmas = torch.arange(T, 0, -1, dtype=torch.float32) / T  # diffusers' float32 training table
        levels = np.arange(T, 0, -1, dtype=np.float64) / T
        if not config.use_dynamic_shifting:
            sigmas, levels = shift_sigmas(sigmas, config.shift), shift_sigmas(levels, config.shift)
        self._training = FlowSchedule(sigmas * T, levels, sigmas, config.stochastic_sampling, config.invert_sigmas, T)
        self.sigma_min, self.sigma_max = float(sigmas[-1]), float(sigmas[0])
        self._install(None, None)
        if request is not None:
            self.set_timesteps(**request)

    def _install(self, schedule: FlowSchedule | None, request: dict[str, Any] | None) -> None:
        self._schedule, self._request = schedule, request
        self.num_inference_steps: int | None = None if schedule is None else len(schedule)
        self._reset_progress()

    @property
    def flow_config(self) -> FlowMatchDDIMConfig:
        """The configuration as the frozen :class:`FlowMatchDDIMConfig` dataclass."""
        return self._config

    @property
    def shift(self) -> float:
        """The static shift the next :meth:`set_timesteps` applies (``config.shift`` unless :meth:`set_shift`)."""
        return self._shift

    def set_shift(self, shift: float) -> None:
        """Use ``shift`` (> 0) from the next :meth:`set_timesteps` on, as diffusers' method does."""
        self._shift = check_real("shift", shift, 0.0, strict=True)

    @property
    def timesteps(self) -> torch.Tensor:
        """The timesteps to visit, float32 (before :meth:`set_timesteps`: the T training timesteps)."""
        return (self._schedule or self._training).tensor

    @property
    def sigmas(self) -> torch.Tensor:
        """diffusers' ``sigmas``: the noise level of each timestep, then the final 0 (1 − σ and 1 with
        ``invert_sigmas``), float32; before :meth:`set_timesteps` the T training levels."""
        return (self._schedule or self._training).public_sigmas

    @property
    def noise_levels(self) -> torch.Tensor:
        """The noise level σ of each of :attr:`timesteps` (x_t = (1 − σ)·x0 + σ·ε), then the final 0, as the
        float64 CPU table the step uses (a copy; the real noise level also with ``invert_sigmas``)."""
        return (self._schedule or self._training).levels.clone()

    @property
    def compatibles(self) -> list[type]:
        """The ddim_sched classes that accept this scheduler's config."""
        return [FlowMatchDDIMScheduler]

    def __len__(self) -> int:
        return self._config.num_train_timesteps

    def time_shift(self, mu: float, sigma: float, t: Any) -> Any:
        """The config's dynamic shift (``time_shift_type``) with μ and exponent ``sigma``, on an array or tensor t."""
        return time_shift(mu, sigma, t, self._config.time_shift_type)

    def stretch_shift_to_terminal(self, t: Any) -> Any:
        """Stretch the levels t so that the last becomes ``config.shift_terminal``.

        Raises:
            ValueError: shift_terminal is not set.
        """
        if not self._config.shift_terminal:
            raise ValueError("stretch_shift_to_terminal needs config.shift_terminal; it is None")
        return stretch_to_terminal(t, self._config.shift_terminal)

    # diffusers' private helpers of FlowMatchEulerDiscreteScheduler, for code that calls them (as a
    # pipeline may call any method of its scheduler); each gives what diffusers' gives.

    def _sigma_to_t(self, sigma: Any) -> Any:
        """The timestep of noise level σ: σ·T."""
        return sigma * self._config.num_train_timesteps

    def _time_shift_exponential(self, mu: float, sigma: float, t: Any) -> Any:
        """The exponential dynamic shift e^μ / (e^μ + (1/t − 1)^sigma)."""
        return time_shift(mu, sigma, t, "exponential")

    def _time_shift_linear(self, mu: float, sigma: float, t: Any) -> Any:
        """The linear dynamic shift μ / (μ + (1/t − 1)^sigma)."""
        return time_shift(mu, sigma, t, "linear")

    def _grid_ends(self, in_sigmas: Any) -> tuple[float, float]:
        """(σ_min, σ_max) of a respaced grid: the config's ``sigma_min`` / ``sigma_max`` keys where it has them,
        else the last and first of ``in_sigmas``."""
        lowest, highest = self.config.get("sigma_min"), self.config.get("sigma_max")
        return (
            float(in_sigmas[-1]) if lowest is None else float(lowest),
            float(in_sigmas[0]) if highest is None else float(highest),
        )

    def _convert_to_karras(self, in_sigmas: Any, num_inference_steps: int) -> np.ndarray:
        """``num_inference_steps`` Karras levels between the ends of ``in_sigmas`` (see :meth:`_grid_ends`)."""
        return karras_sigmas(*self._grid_ends(in_sigmas), num_inference_steps)

    def _convert_to_exponential(self, in_sigmas: Any, num_inference_steps: int) -> np.ndarray:
        """``num_inference_steps`` levels uniform in log σ between the ends of ``in_sigmas``."""
        return exponential_sigmas(*self._grid_ends(in_sigmas), num_inference_steps)

    def _convert_to_beta(
        self, in_sigmas: Any, num_inference_steps: int, alpha: float = 0.6, beta: float = 0.6
    ) -> np.ndarray:
        """``num_inference_steps`` levels at Beta(α, β) quantiles between the ends of ``in_sigmas``."""
        return beta_sigmas(*self._grid_ends(in_sigmas), num_inference_steps, alpha, beta)

    @property
    def _step_index(self) -> int | None:
        """diffusers' attribute: :attr:`step_index`, which code may also set (or reset with None)."""
        return self.step_index

    @_step_index.setter
    def _step_index(self, index: int | None) -> None:
        if index is None:
            self._first_timestep, self._steps_taken = None, 0
        elif self._begin_index is None:
            self._first_timestep, self._steps_taken = _SetIndex(index), 0
        else:
            self._first_timestep, self._steps_taken = _SetIndex(index), int(index) - self._begin_index

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        """Start counting steps at ``begin_index``, or else at the index of ``timestep`` (as diffusers' helper)."""
        self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Return ``sample`` unchanged: the flow path needs no input scaling. (diffusers' flow scheduler has no
        such method; pipelines that call it on any other scheduler class, as Bria's does, call it here.)"""
        return sample

    # ------------------------------------------------------------------ choosing timesteps

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Values | None = None,
        mu: float | None = None,
        timesteps: Values | None = None,
    ) -> None:
        """Choose the noise levels to visit, as diffusers does: S levels evenly spaced from ``sigma_max`` to
        ``sigma_min`` (or the given ``sigmas`` / ``timesteps``/T), then the shift (static, or dynamic with
        μ), ``shift_terminal`` and the karras/exponential/beta respacing of the config.

        Args:
            num_inference_steps: S >= 1; optional when sigmas or timesteps are given (then their length).
            device: Where to put :attr:`timesteps` and :attr:`sigmas`.
            sigmas: Custom noise levels, strictly decreasing, in (0, 1], before shifting.
            mu: The dynamic shift's μ with ``use_dynamic_shifting`` (ignored without it). When it is not given
                (pipelines pass it only to diffusers' own class), the dynamic shift takes the value that
                equals the static shift s in use (:attr:`shift`): μ = ln s for the exponential shift, μ = s for
                the linear one.
            timesteps: Custom timesteps, strictly decreasing (in (0, T] when they also give the levels):
                passed to the model as given.

        Raises:
            ValueError: Nothing to choose from; lengths that disagree; levels or timesteps that are not
                strictly decreasing or out of range; mu <= 0 for the linear shift.
            TypeError: Values of the wrong type.
        """
        if mu is None and self._config.use_dynamic_shifting:
            mu = self._shift if self._config.time_shift_type == "linear" else math.log(self._shift)
        schedule = plan_schedule(
            self._config,
            self._shift,
            (self.sigma_max, self.sigma_min),
            num_inference_steps,
            sigmas,
            mu,
            timesteps,
            device,
        )
        request = {"num_inference_steps": num_inference_steps, "device": device, "sigmas": sigmas, "mu": mu,
                   "timesteps": timesteps}  # fmt: skip
        self._install(schedule, request)

    def _require_schedule(self) -> FlowSchedule:
        if self._schedule is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(...) before step(...)")
        return self._schedule

    # ------------------------------------------------------------------ progress (begin_index, step_index)

    def _index_of_first(self, first: Any) -> int | None:
        """The index of the first step's timestep (recorded by :meth:`step`), looked up here; an index set
        through ``_step_index`` as it is."""
        if isinstance(first, _SetIndex):
            return int(first)
        schedule = self._schedule or self._training
        if isinstance(first, torch.Tensor):
            if first.numel() != 1:
                return None
            return int(schedule.indices_of(first.reshape(())).item())
        return schedule.index_of(float(first))

    def index_for_timestep(self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None) -> int:
        """The index of ``timestep`` in ``schedule_timesteps`` (default :attr:`timesteps`), as diffusers'
        method: with duplicates, the second.

        Raises:
            ValueError: The timestep is not there.
        """
        check_timestep_type("timestep", timestep)
        value = float(timestep)
        if schedule_timesteps is None:
            schedule = self._schedule or self._training
            return schedule.index_of(value)
        matches = (schedule_timesteps.detach().cpu().double() == value).nonzero().flatten().tolist()
        if not matches:
            raise ValueError(f"timestep {value!r} is not in schedule_timesteps")
        return int(matches[1] if len(matches) > 1 else matches[0])

    # ------------------------------------------------------------------ reading a timestep

    def _eta(self, eta: Any, sample: torch.Tensor) -> float | torch.Tensor:
        """η of this step: the config's when None."""
        if eta is None:
            return self._config.eta
        if self._config.stochastic_sampling:
            raise ValueError(f"eta cannot be given when stochastic_sampling=True (it re-noises fully); got eta={eta!r}")
        return eta_values(eta, tuple(sample.shape), sample.device)

    # ------------------------------------------------------------------ the step

    @overload
    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        s_churn: float = ...,
        s_tmin: float = ...,
        s_tmax: float = ...,
        s_noise: float = ...,
        generator: Generator = ...,
        per_token_timesteps: torch.Tensor | None = ...,
        return_dict: Literal[True] = ...,
        *,
        eta: Any = ...,
        variance_noise: torch.Tensor | None = ...,
        out: torch.Tensor | None = ...,
    ) -> DDIMSchedulerOutput: ...

    @overload
    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        s_churn: float = ...,
        s_tmin: float = ...,
        s_tmax: float = ...,
        s_noise: float = ...,
        generator: Generator = ...,
        per_token_timesteps: torch.Tensor | None = ...,
        *,
        return_dict: Literal[False],
        eta: Any = ...,
        variance_noise: torch.Tensor | None = ...,
        out: torch.Tensor | None = ...,
    ) -> tuple[torch.Tensor]: ...

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: Generator = None,
        per_token_timesteps: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        eta: Any = None,
        variance_noise: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
    ) -> StepResult:
        """Step from ``timestep`` to the next level of the schedule: DDIM eq. 12 on the flow path.

        Every element is stepped exactly as if it were stepped alone, so one call can advance samples (or
        frames, or tokens) at different noise levels with different η. Differentiable in the tensors.

        Args:
            model_output: The model's velocity u = ε − x0 at x_t (x0 − ε with ``invert_sigmas``), [B, ...].
            timestep: An element of :attr:`timesteps` (a float or a 0-d tensor, as pipelines pass it), or a
                floating tensor that broadcasts over the sample's leading dimensions ([B]; [B, 1, F, 1, 1] for
                video latents [B, C, F, H, W]): each element steps from its own timestep to that timestep's
                successor. Host values must be timesteps of the schedule; device tensors are not read (each
                element takes the nearest timestep).
            sample: x_t, [B, ...], the model output's shape.
            s_churn, s_tmin, s_tmax, s_noise: diffusers' signature; its flow scheduler ignores them, so only
                their defaults are accepted (use ``eta``).
            generator: A torch.Generator, or one per batch element, for the noise of η > 0 (drawn as
                diffusers' ``randn_tensor`` draws); without it torch's global generator is used.
            per_token_timesteps: diffusers' per-token levels: σ_t = value/T for each element (broadcasting
                as ``timestep``), landing on the largest schedule level below it; as in diffusers, the model
                output is then read as x0 − ε (LTX's pipeline passes the negated velocity).
            return_dict: Return a :class:`DDIMSchedulerOutput` with x_s and x̂0 (True), or the tuple
                ``(x_s,)`` as diffusers' FlowMatchEulerDiscreteScheduler does (x̂0 is then not computed:
                one pass over memory fewer, what pipelines take).
            eta: η >= 0 (0: DDIM = Euler; 1: DDPM's σ), a float or a per-element tensor; None: ``config.eta``.
            variance_noise: The noise z itself, the sample's shape; not with ``generator``.
            out: A tensor of the sample's shape and dtype to write x_s into (``out=sample``: in place).

        Returns:
            DDIMSchedulerOutput(prev_sample=x_s, pred_original_sample=x̂0), or ``(x_s,)``; in the sample's
            dtype. ε̂ = (x_t − (1 − σ_t)·x̂0)/σ_t, or from :meth:`predict_x0_eps`.

        Raises:
            ValueError: set_timesteps not called; shapes that differ or do not broadcast; a host timestep
                not in the schedule; η < 0; eta with stochastic_sampling; both generator and variance_noise;
                s_churn etc. changed; a bad ``out``.
            TypeError: Non-tensor or non-floating inputs; an integer timestep (an index, not a timestep).
        """
        schedule = self._require_schedule()
        check_pair("model_output", model_output, "sample", sample)
        if (s_churn, s_tmin, s_tmax, s_noise) != (0.0, 0.0, float("inf"), 1.0):
            raise ValueError(
                "s_churn, s_tmin, s_tmax and s_noise are not used (diffusers' FlowMatchEulerDiscreteScheduler "
                f"ignores them too); use eta. Got {(s_churn, s_tmin, s_tmax, s_noise)!r}"
            )
        if out is not None:
            check_out(out, sample)
        rate = self._eta(eta, sample)
        weights = schedule.coefficients(timestep, rate, sample, model_output, per_token_timesteps)
        stochastic = self._config.stochastic_sampling or isinstance(rate, torch.Tensor) or rate > 0
        # Drawn in float32 whatever the sample's dtype, as diffusers' flow scheduler draws it (it steps a float32 copy).
        noise = step_noise(stochastic, sample, generator, variance_noise, torch.float32)
        prev_sample, pred_original_sample = apply_step(
            model_output, sample, weights, "flow_prediction", noise=noise, out=out, with_x0=return_dict
        )
        self._count_step(timestep)
        if not return_dict:
            return (prev_sample,)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    # ------------------------------------------------------------------ the forward process and predictions

    def scale_noise(self, sample: torch.Tensor, timestep: Any, noise: torch.Tensor) -> torch.Tensor:
        """The forward process: x_σ = (1 − σ)·x0 + σ·noise at the timestep's noise level (img2img, training).

        Args:
            sample: x0, [B, ...], floating.
            timestep: An element of :attr:`timesteps` (float or tensor), or a tensor that broadcasts over the
                sample's leading dimensions ([B], one per sample).
            noise: ε, the sample's shape or one that broadcasts with it.

        Returns:
            x_σ in the sample's dtype and the broadcast shape, computed in at least float32. The scheduler is
            not modified.

        Raises:
            TypeError, ValueError: Non-floating tensors, shapes that do not broadcast, a timestep not in the
                schedule.
        """
        sample, noise = broadcast_pair("sample", sample, "noise", noise)
        sigma = (self._schedule or self._training).sigma_at(timestep, sample)
        dtype = compute_dtype(sample.dtype)
        return ((1 - sigma) * sample.to(dtype) + sigma * noise.to(dtype)).to(sample.dtype)

    def predict_x0_eps(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂0, ε̂) that a velocity output implies at x_t (eq. 9): x̂0 = x_t − σ·u, ε̂ = x_t + (1 − σ)·u.

        Returns:
            Both in the sample's dtype, computed in at least float32.
        """
        check_pair("model_output", model_output, "sample", sample)
        sigma = (self._schedule or self._training).sigma_at(timestep, sample)
        a, b = flow_level(sigma)
        x0_x, x0_m, eps_x, eps_m = prediction_weights(a, b, "flow_prediction")
        sign = -1 if self._config.invert_sigmas else 1
        dtype = compute_dtype(sample.dtype)
        x, m = sample.to(dtype), sign * model_output.to(dtype)
        return (x0_x * x + x0_m * m).to(sample.dtype), (eps_x * x + eps_m * m).to(sample.dtype)
