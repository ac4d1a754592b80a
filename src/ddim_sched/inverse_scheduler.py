"""``DDIMInverseScheduler``: DDIM inversion (image → noise) one step at a time, a drop-in for diffusers'.

A step labelled t goes *up* in noise: from the level a sampling step from t would land on (its
"source", ᾱ_src) to ᾱ_t, with the DDIM update and the roles of the two timesteps swapped
(REFERENCE.md §1): x̂0 and ε̂ are read from the model output at x on level ᾱ_src, then
x_t = √ᾱ_t·x̂0 + √(1−ᾱ_t)·ε̂. Before the first step the sample is clean, ᾱ_src =
``initial_alpha_cumprod`` (1 with set_alpha_to_one, else ᾱ_0).

The timesteps are the DDIMScheduler's for the same config and S, in ascending order, and each
step's source is exactly the level the DDIMScheduler's step from t lands on. Decoding with a
DDIMScheduler therefore retraces the inversion's points in reverse, for every spacing and
``prev_timestep_rule``; with ``leading``/``trailing`` and the default "stride" rule this is also
exactly what diffusers' DDIMInverseScheduler computes (source t − T // S).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import kernel
from .config import DDIMConfig
from .output import DDIMSchedulerOutput
from .scheduler import DDIMScheduler, _check_floating, _compute_dtype, _one_schedule_argument
from .spacing import check_timesteps, predecessors, successor_stride

_DEPRECATED_ALPHA_KWARG = "set_alpha_to_zero"


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


class DDIMInverseScheduler(DDIMScheduler):
    """DDIM inversion scheduler, a drop-in for diffusers' ``DDIMInverseScheduler``.

    Takes the same configuration as :class:`ddim_sched.DDIMScheduler` (diffusers' inverse
    scheduler's arguments are a subset; its deprecated ``set_alpha_to_zero`` is accepted with a
    FutureWarning and, as in diffusers, sets ``set_alpha_to_one`` to its value). Every spacing of
    the registry works, not only ``leading``/``trailing``. As in diffusers, ``clip_sample`` clamps
    x̂0 and ``thresholding`` is ignored; there is no η (inversion is deterministic).

    Use :meth:`from_scheduler` to get the exact reverse of a DDIMScheduler on which set_timesteps
    was called, custom timesteps included. Loading, saving and the noise tables are inherited from
    DDIMScheduler; ``step`` is the inverse update.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **_take_deprecated(dict(kwargs)))

    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        list(inspect.signature(DDIMScheduler.__init__).parameters.values())
        + [inspect.Parameter(_DEPRECATED_ALPHA_KWARG, inspect.Parameter.KEYWORD_ONLY, default=None)]
    )

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | DDIMConfig | DDIMScheduler, **overrides: Any) -> DDIMInverseScheduler:
        """As :meth:`DDIMScheduler.from_config`; a ``set_alpha_to_zero`` key is honoured with a FutureWarning."""
        if isinstance(config, DDIMConfig):
            config = config.to_dict()
        elif not isinstance(config, Mapping) and hasattr(config, "config"):
            config = config.config
        if isinstance(config, Mapping) and _DEPRECATED_ALPHA_KWARG in {**config, **overrides}:
            merged = _take_deprecated({**dict(config), **overrides})
            return super().from_config(merged)  # type: ignore[return-value]
        return super().from_config(config, **overrides)  # type: ignore[return-value]

    @classmethod
    def from_scheduler(cls, scheduler: DDIMScheduler) -> DDIMInverseScheduler:
        """The inverse of a DDIMScheduler: same config, and (if set) its timesteps reversed, each step
        starting from the level that scheduler's step from the same timestep lands on.

        Raises:
            TypeError: ``scheduler`` is not a DDIMScheduler (or is itself an inverse scheduler).
        """
        if not isinstance(scheduler, DDIMScheduler) or isinstance(scheduler, DDIMInverseScheduler):
            raise TypeError(f"scheduler must be a ddim_sched.DDIMScheduler; got {type(scheduler).__name__}")
        inverse = cls._from_validated(scheduler.ddim_config)
        if scheduler.num_inference_steps is not None:
            forward = scheduler.timesteps.cpu().numpy()
            T = scheduler.ddim_config.num_train_timesteps
            source_of = predecessors(forward, T)
            source_of[forward] = [scheduler.previous_timestep(int(t)) for t in forward]
            inverse._install(forward[::-1].copy(), source_of, scheduler.timesteps.device)
        return inverse

    # ------------------------------------------------------------------ configuration

    def _set_config(self, config: DDIMConfig) -> None:
        super()._set_config(config)
        self.initial_alpha_cumprod = self.final_alpha_cumprod
        self.timesteps = torch.arange(config.num_train_timesteps, dtype=torch.int64)
        self._source_of: np.ndarray | None = None
        self._inverse_tables: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ schedule

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Choose the timesteps to visit, in ascending order: the DDIMScheduler's for the same config, reversed.

        Args:
            num_inference_steps: S, 1 <= S <= num_train_timesteps; the config's ``timestep_spacing``
                picks the timesteps.
            device: Where to put :attr:`timesteps`.
            timesteps: A custom strictly increasing sequence in [0, T) instead of S; each step then
                starts from the previous timestep of the sequence (the clean sample before the first).

        Raises:
            ValueError: Neither or both arguments; S out of range; a leading/quad schedule pushed past T
                by steps_offset; a custom sequence out of range, repeated or not increasing.
            TypeError: num_inference_steps is not an int, or timesteps are not integers.
        """
        config = self._config
        T = config.num_train_timesteps
        _one_schedule_argument(num_inference_steps, timesteps)
        if timesteps is not None:
            ascending = check_timesteps(timesteps, T, "timesteps", increasing=True)
            self._install(ascending, predecessors(ascending, T), device)
            return
        forward = self._spaced_timesteps(num_inference_steps)
        stride = successor_stride(config.prev_timestep_rule, config.timestep_spacing, T, len(forward))
        self._install(forward[::-1].copy(), predecessors(forward, T, stride), device)

    def _install(self, ascending: np.ndarray, source_of: np.ndarray, device: str | torch.device | None) -> None:
        """Set the ascending schedule and each timestep's source level (index into ᾱ; −1 = clean)."""
        self.num_inference_steps = len(ascending)
        self.timesteps = torch.from_numpy(ascending).to(device)
        self._source_of = source_of
        self._inverse_tables = {}
        self._prev_of = source_of  # the inherited previous_timestep(t) then names the source level

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The level an inverse step labelled ``timestep`` starts from (−1: the clean sample, ᾱ = initial_alpha_cumprod).

        This is the timestep a DDIMScheduler's step from ``timestep`` lands on.
        """
        return super().previous_timestep(timestep)

    # ------------------------------------------------------------------ stepping

    def _tables_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(ᾱ with initial_alpha_cumprod at index 0, float64; source table, int64) on ``device``, cached."""
        key = str(device)
        if key not in self._inverse_tables:
            table = self.alpha_bar
            initial = torch.ones(1, dtype=torch.float64) if self._config.set_alpha_to_one else table[:1]
            alpha_bar = torch.cat([initial, table])
            dtype = torch.float32 if device.type == "mps" else torch.float64
            self._inverse_tables[key] = alpha_bar.to(device=device, dtype=dtype)
            self._inverse_tables[key + "/source"] = torch.from_numpy(self._source_of).to(device)
        return self._inverse_tables[key], self._inverse_tables[key + "/source"]

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One inversion step: from the source level of ``timestep`` up to ``timestep``.

        Args:
            model_output: The model's output m (ε, x0 or v per ``prediction_type``), [B, ...], computed
                at ``sample`` with the label ``timestep`` (as diffusers' inversion pipelines do).
            timestep: t, the timestep to land on: an int, a 0-d integer tensor, or a [B] integer tensor.
            sample: The current, less noisy sample, [B, ...].
            return_dict: Return a :class:`DDIMSchedulerOutput` (True) or a tuple.

        Returns:
            (x_t, x̂0) in the sample's dtype; ``prev_sample`` holds x_t, as in diffusers.

        Raises:
            ValueError: set_timesteps not called; shapes differ; timestep out of range.
            TypeError: Non-tensor or non-floating inputs, a non-integer timestep.
        """
        if self._source_of is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(...) before step(...)")
        _check_floating("model_output", model_output)
        _check_floating("sample", sample)
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output and sample must have the same shape; got {tuple(model_output.shape)} "
                f"and {tuple(sample.shape)}"
            )
        if sample.dim() == 0:
            raise ValueError("sample must have a batch dimension; got a 0-d tensor")
        t = self._timestep_arg(timestep, sample, "timestep")
        device = sample.device
        alpha_bar, source_of = self._tables_on(device)
        t = torch.as_tensor(t, device=device)
        alpha_bar_source = alpha_bar[source_of[t] + 1]
        # ᾱ_t = 0 (zero terminal SNR) from a clean source (ᾱ = 1) would make the kernel's η = 1
        # variance ∞·1 and σ = 0·∞ = NaN; the smallest normal float64 instead changes x_t by ~1e-154·x̂0.
        alpha_bar_target = alpha_bar[t + 1].clamp(min=torch.finfo(torch.float64).tiny)
        prediction_type = self._config.prediction_type
        # The DDIM coefficients from ᾱ_src "down" to ᾱ_t: with σ = 0 eq. 12 is symmetric in direction.
        coefficients = kernel.ddim_coefficients(alpha_bar_source, alpha_bar_target, 0.0, prediction_type)
        prev_sample, pred_original_sample = kernel.ddim_step(
            model_output,
            sample,
            coefficients.to(_compute_dtype(sample.dtype)),
            prediction_type,
            clip="clip" if self._config.clip_sample else "none",
            clip_sample_range=self._config.clip_sample_range,
        )
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
