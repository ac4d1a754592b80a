"""``DDIMInverseScheduler``: DDIM inversion (image → noise) one step at a time, a drop-in for diffusers'.

A step labelled t goes *up* in noise: from the level a sampling step from t would land on (its source) to
level t, with the DDIM update at η = 0 and the roles of the two levels swapped (docs/concepts.md): x̂0
and ε̂ are read from the model output at x on the source level, then x_t = √ᾱ_t·x̂0 + √(1−ᾱ_t)·ε̂. Before
the first step the sample is clean: ᾱ_source = ``initial_alpha_cumprod`` (1 with set_alpha_to_one, else ᾱ_0).

The timesteps are the DDIMScheduler's for the same config and S, ascending, and each step's source is
exactly the level the DDIMScheduler's step from t lands on. Decoding with a DDIMScheduler therefore
retraces the inversion's points in reverse, for every spacing and ``prev_timestep_rule``; with
``leading``/``trailing`` and the default "stride" rule this is also what diffusers' DDIMInverseScheduler
computes (source t − T // S).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, ClassVar, Literal, overload

import numpy as np
import torch

from ..compat.output import DDIMSchedulerOutput
from ..compat.scheduler_mixin import (
    DiffusersDDIMInverseScheduler,
    SchedulerMixin,  # noqa: F401  (diffusers' pipeline loader looks for it beside the class)
)
from ..core._fused import takes_host_weights
from ..core.runtime import compute_dtype, is_compiling
from ..core.thresholding import X0Clip
from ..core.update import StepCoefficients
from ..tables.spacing import check_timesteps
from .base import DDIMSchedulerBase, TimestepsArg, _check_pair
from .config import DDIMConfig

_DEPRECATED_ALPHA_KWARG = "set_alpha_to_zero"
# The constructor options of diffusers' DDIMInverseScheduler; the others appear in config only when changed.
INVERSE_FIELDS: tuple[str, ...] = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "clip_sample",
    "set_alpha_to_one",
    "steps_offset",
    "prediction_type",
    "clip_sample_range",
    "timestep_spacing",
    "rescale_betas_zero_snr",
)


def _take_deprecated(options: dict[str, Any]) -> dict[str, Any]:
    """Map diffusers' deprecated ``set_alpha_to_zero`` onto ``set_alpha_to_one`` (with its value, as diffusers does)."""
    value = options.pop(_DEPRECATED_ALPHA_KWARG, None)
    if value is not None:
        warnings.warn(
            "The `set_alpha_to_zero` argument is deprecated. Please use `set_alpha_to_one` instead "
            f"(set_alpha_to_zero={value!r} is taken as set_alpha_to_one={value!r}, as diffusers does).",
            FutureWarning,
            stacklevel=3,
        )
        options["set_alpha_to_one"] = value
    return options


class DDIMInverseScheduler(DDIMSchedulerBase, DiffusersDDIMInverseScheduler):
    """DDIM inversion scheduler, a drop-in for diffusers' ``DDIMInverseScheduler``.

    Takes the configuration of :class:`ddim_sched.DDIMScheduler` (diffusers' inverse scheduler's options
    are a subset; its deprecated ``set_alpha_to_zero`` is accepted with a FutureWarning and, as in
    diffusers, sets ``set_alpha_to_one`` to its value). Every spacing works, not only
    ``leading``/``trailing``. As in diffusers, ``clip_sample`` clamps x̂0, ``thresholding`` is ignored and
    there is no η (inversion is deterministic). :meth:`from_scheduler` gives the exact reverse of a
    DDIMScheduler's schedule, custom timesteps included.

    ``prediction_type="sample"`` with ``set_alpha_to_one=True`` is refused with a ValueError at construction
    (or when a config change makes it so): the first step would start from ᾱ = 1, where the noise an
    x0-predicting model implies is 0/0 (diffusers returns Inf/NaN latents there).
    """

    _compatibles: ClassVar[list[str]] = []  # as diffusers' DDIMInverseScheduler: no scheduler shares its role
    _deprecated_kwargs: ClassVar[list[str]] = [_DEPRECATED_ALPHA_KWARG]
    visible_fields: ClassVar[tuple[str, ...]] = INVERSE_FIELDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **_take_deprecated(dict(kwargs)))

    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        list(inspect.signature(DDIMSchedulerBase.__init__).parameters.values())
        + [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
    )

    def _set_config(self, config: DDIMConfig) -> None:
        """Refuse a config whose first inversion step is undefined, then install it."""
        if config.prediction_type == "sample" and config.set_alpha_to_one:
            # From ᾱ = 1 the sample is x0 itself and says nothing about the noise: ε̂ = (x − √ᾱ·x̂0)/√(1 − ᾱ)
            # is 0/0 for a model that predicts x0 (NaN latents), and no limit exists (x − x̂0 is anything).
            raise ValueError(
                "DDIMInverseScheduler(prediction_type='sample', set_alpha_to_one=True) cannot invert: the first "
                "step starts from the clean sample (alpha_bar = 1), where the noise (x - sqrt(alpha_bar) * x0) / "
                "sqrt(1 - alpha_bar) is 0/0 for a model that predicts x0. Pass set_alpha_to_one=False (start from "
                "alpha_bar[0] < 1), or use an epsilon or v_prediction model."
            )
        super()._set_config(config)

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> DDIMInverseScheduler:
        """The inverse of a DDIMScheduler: same config, and (if set) its timesteps reversed, each step starting
        from the level that scheduler's step from the same timestep lands on.

        Raises:
            TypeError: ``scheduler`` is not a ddim_sched DDIMScheduler (or is itself an inverse scheduler).
        """
        from .scheduler import DDIMScheduler

        if not isinstance(scheduler, DDIMScheduler):
            raise TypeError(f"scheduler must be a ddim_sched.DDIMScheduler; got {type(scheduler).__name__}")
        inverse = cls.from_config(scheduler.ddim_config)
        forward = scheduler._schedule
        if forward is not None:
            schedule = forward.reversed(scheduler.timesteps.device)
            inverse.timesteps = schedule.tensor
            inverse._install(schedule, None)  # not re-derivable: a config change clears it
        return inverse

    def _default_timesteps(self) -> torch.Tensor:
        return torch.arange(self._config.num_train_timesteps, dtype=torch.int64)

    @property
    def initial_alpha_cumprod(self) -> torch.Tensor:
        """ᾱ before the first step (the clean sample): 1 with set_alpha_to_one, else ᾱ_0; float32. Assignable
        to either, as ``final_alpha_cumprod``."""
        return self.final_alpha_cumprod

    @initial_alpha_cumprod.setter
    def initial_alpha_cumprod(self, value: Any) -> None:
        self._assign_final(value)

    # ------------------------------------------------------------------ schedule

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: TimestepsArg | None = None,
    ) -> None:
        """Choose the timesteps to visit, ascending: the DDIMScheduler's for the same config, reversed.

        Args:
            num_inference_steps: S, 1 <= S <= num_train_timesteps; the config's ``timestep_spacing`` picks
                the timesteps.
            device: Where to put :attr:`timesteps`.
            timesteps: A custom strictly increasing sequence in [0, T) instead of S; each step then starts
                from the previous timestep of the sequence (the clean sample before the first).

        Raises:
            ValueError: Neither or both of num_inference_steps and timesteps; S out of range; a schedule
                pushed past T by steps_offset; a custom sequence out of range, repeated or not increasing.
            TypeError: num_inference_steps is not an int, or timesteps are not integers.
        """
        if timesteps is not None and num_inference_steps is None:
            ascending = check_timesteps(timesteps, self._config.num_train_timesteps, "timesteps", increasing=True)
            schedule = self._plan(None, ascending[::-1].copy(), None).reversed(device)
        else:
            schedule = self._plan(num_inference_steps, timesteps, None).reversed(device)
        self.timesteps = schedule.tensor
        self._install(schedule, {"num_inference_steps": num_inference_steps, "device": device, "timesteps": timesteps})

    # ------------------------------------------------------------------ the step

    @overload
    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, return_dict: Literal[True] = ...
    ) -> DDIMSchedulerOutput: ...

    @overload
    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, return_dict: Literal[False]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, return_dict: bool = True
    ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One inversion step: from the source level of ``timestep`` up to ``timestep``.

        Args:
            model_output: The model's output m (ε, x0 or v per ``prediction_type``), [B, ...], computed at
                ``sample`` with the label ``timestep`` (as diffusers' inversion pipelines do).
            timestep: t, the timestep to land on: an int, a 0-d integer tensor, or a [B] integer tensor.
            sample: The current, less noisy sample, [B, ...].
            return_dict: Return a :class:`DDIMSchedulerOutput` (True) or a tuple.

        Returns:
            (x_t, x̂0) in the sample's dtype; ``prev_sample`` holds x_t, as in diffusers.

        Raises:
            ValueError: set_timesteps not called; shapes differ; timestep out of range.
            TypeError: Non-tensor or non-floating inputs, a non-integer timestep.
        """
        schedule = self._require_schedule()
        _check_pair("model_output", model_output, "sample", sample)
        if isinstance(timestep, torch.Tensor) and not is_compiling():
            known = schedule.host_timestep(timestep)  # an element of timesteps: its value is known
            timestep = timestep if known is None else known
        t = self._timestep_arg(timestep, sample, "timestep")
        coefficients: StepCoefficients
        if isinstance(t, int) and takes_host_weights(model_output, sample):
            coefficients = schedule.row(schedule.target(t), t, 0.0)
        elif isinstance(t, int):
            coefficients = schedule.device_row(schedule.target(t), t, 0.0, compute_dtype(sample.dtype), sample.device)
        elif isinstance(t, np.ndarray):
            sources = np.array([schedule.target(int(v)) for v in t.reshape(-1)]).reshape(t.shape)
            coefficients = schedule.rows_at(sources, t, 0.0, compute_dtype(sample.dtype), sample.device)
        else:
            t_tensor = t.to(sample.device)
            coefficients = schedule.rows_of(schedule.targets_of(t_tensor), t_tensor, 0.0)
        config = self._config
        clip = X0Clip("clip" if config.clip_sample else "none", config.clip_sample_range)
        prev_sample, pred_original_sample = self._run_step(model_output, sample, coefficients, 0.0, clip)
        self._count_step(timestep)
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
