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

import torch

from ..common.arguments import check_pair
from ..compat.output import DDIMSchedulerOutput
from ..compat.scheduler_mixin import (
    DiffusersDDIMInverseScheduler,
    SchedulerMixin,  # noqa: F401  (diffusers' pipeline loader looks for it beside the class)
)
from ..core.step import apply_step
from ..core.thresholding import X0Clip
from ..tables.spacing import check_timesteps
from .base import DDIMSchedulerBase, SigmasArg, TimestepsArg
from .config import DIFFUSERS_FIELDS, DDIMConfig

_DEPRECATED_ALPHA_KWARG = "set_alpha_to_zero"
# The constructor options of diffusers' DDIMInverseScheduler (its DDIMScheduler's, less thresholding, which it
# ignores); the others appear in config only when changed.
INVERSE_FIELDS: tuple[str, ...] = tuple(
    name for name in DIFFUSERS_FIELDS if name not in ("thresholding", "dynamic_thresholding_ratio", "sample_max_value")
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
            inverse._install(schedule, None)  # not re-derivable: a config change clears it
        return inverse

    def _default_timesteps(self) -> torch.Tensor:
        return torch.arange(self._config.num_train_timesteps, dtype=torch.int64)

    @staticmethod
    def _x0_clip(config: DDIMConfig) -> X0Clip:
        """As diffusers' inverse scheduler: ``clip_sample`` clamps x̂0, ``thresholding`` is ignored."""
        return X0Clip("clip" if config.clip_sample else "none", config.clip_sample_range)

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
        sigmas: SigmasArg | None = None,
    ) -> None:
        """Choose the timesteps to visit, ascending: the DDIMScheduler's for the same config and arguments,
        reversed. Pass exactly one of ``num_inference_steps``, ``timesteps`` and ``sigmas``.

        Args:
            num_inference_steps: S, 1 <= S <= num_train_timesteps; the config's ``timestep_spacing`` picks
                the timesteps.
            device: Where to put :attr:`timesteps`.
            timesteps: A custom strictly increasing sequence in [0, T) instead of S; each step then starts
                from the previous timestep of the sequence (the clean sample before the first).
            sigmas: The k-diffusion schedule of the sampling that will decode (S + 1 levels, noisiest first,
                the last 0), as :meth:`DDIMScheduler.set_timesteps` takes it: its timesteps (each the nearest
                in log σ), visited in reverse.

        Raises:
            ValueError: Not exactly one of num_inference_steps, timesteps and sigmas; S out of range; a
                schedule pushed past T by steps_offset; a custom sequence out of range, repeated or not
                increasing; sigmas that :meth:`DDIMScheduler.set_timesteps` refuses.
            TypeError: num_inference_steps is not an int, timesteps are not integers, or sigmas are not
                real numbers.
        """
        if timesteps is not None and num_inference_steps is None and sigmas is None:
            ascending = check_timesteps(timesteps, self._config.num_train_timesteps, "timesteps", increasing=True)
            schedule = self._plan(None, ascending[::-1].copy(), None).reversed(device)
        else:
            schedule = self._plan(num_inference_steps, timesteps, None, sigmas).reversed(device)
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
        check_pair("model_output", model_output, "sample", sample)
        coefficients = schedule.coefficients(timestep, 0.0, sample, model_output)
        prev_sample, pred_original_sample = apply_step(
            model_output, sample, coefficients, schedule.prediction_type, self._clip
        )
        self._count_step(timestep)
        if not return_dict:
            return prev_sample, pred_original_sample  # type: ignore[return-value]
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
