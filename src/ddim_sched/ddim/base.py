"""What the DDIM schedulers share: their configuration, noise levels, public tables, the forward process
(``add_noise``, ``get_velocity``), timestep validation, the spacing of a schedule, and img2img progress.

:class:`DDIMScheduler` and :class:`DDIMInverseScheduler` derive from :class:`DDIMSchedulerBase` and add
their own ``set_timesteps`` and ``step``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ..common.arguments import broadcast_pair, timestep_values
from ..common.progress import StepProgress
from ..common.validation import check_floating_tensor, check_int
from ..compat.config_surface import ConfigSurface
from ..compat.scheduler_mixin import SchedulerMixin
from ..core.runtime import compute_dtype
from ..core.thresholding import ClipMode, X0Clip, dynamic_threshold
from ..tables.spacing import SPACINGS, check_timesteps, successor_stride, timesteps_from_sigmas
from .carried_flags import SIGMA_FLAG_SPACINGS, warn_carried_sigma_flags
from .config import DDIMConfig
from .plan import NoiseLevels, Schedule

TimestepsArg = Sequence[int] | np.ndarray | torch.Tensor
SigmasArg = Sequence[float] | np.ndarray | torch.Tensor
# The DDIM schedulers defined in this package (filled as their classes are defined): they share one config.
_DDIM_FAMILY: list[type] = []

# The fields a schedule's steps depend on: a change re-derives the current schedule's steps at once. (The
# fields that choose which timesteps it visits, timestep_spacing, steps_offset and prev_timestep_rule, apply
# from the next set_timesteps, where diffusers reads them.)
STEP_FIELDS: tuple[str, ...] = (
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "set_alpha_to_one",
    "prediction_type",
    "rescale_betas_zero_snr",
    "snr_shift_scale",
)


def implied_betas(name: str, value: Any, num_train_timesteps: int) -> torch.Tensor:
    """The float64 β_1..β_T that a β (``"betas"``), α = 1 − β (``"alphas"``) or ᾱ (``"alphas_cumprod"``)
    table implies, validated; ᾱ_t = 0 after ᾱ_{t−1} = 0 means β_t = 1 (zero terminal SNR).

    Raises:
        TypeError: Not a 1-D array of real numbers.
        ValueError: Not ``num_train_timesteps`` entries, or values outside what the table can hold.
    """
    try:
        table = torch.as_tensor(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
        table = table.to(torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a 1-D tensor or array of real numbers; got {value!r}") from None
    if table.dim() != 1 or table.shape[0] != num_train_timesteps:
        raise ValueError(
            f"{name} must be 1-D with num_train_timesteps={num_train_timesteps} entries; got shape {tuple(table.shape)}"
        )

    def refuse(bad: torch.Tensor, rule: str) -> None:
        if bad.any():
            i = int(bad.nonzero()[0])
            after = f" after {name}[{i - 1}] = {float(table[i - 1])!r}" if name == "alphas_cumprod" and i else ""
            raise ValueError(f"{name} {rule}; got {name}[{i}] = {float(table[i])!r}{after}")

    if name == "betas":
        refuse(~((table > 0) & (table <= 1)), "must lie in (0, 1]")
        return table
    if name == "alphas":
        refuse(~((table >= 0) & (table < 1)), "must lie in [0, 1)")
        return 1.0 - table
    previous = torch.cat([torch.ones(1, dtype=torch.float64), table[:-1]])
    ok = (table >= 0) & ((table < previous) | ((table == 0) & (previous == 0)))
    refuse(~ok, "must decrease from below 1 (strictly, while positive) and stay >= 0")
    ratio = torch.where(previous > 0, table / previous.clamp(min=torch.finfo(torch.float64).tiny), 0.0)
    return 1.0 - ratio


def _whole_timesteps(timesteps: Any) -> Any:
    """A floating tensor of whole numbers (LEDITS++ passes ``torch.Tensor([t])`` to ``add_noise``) as int64;
    any other value as given. Reads the tensor (a device tensor syncs once).

    Raises:
        TypeError: A floating tensor with a fractional, infinite or NaN element (naming it).
    """
    if not (isinstance(timesteps, torch.Tensor) and timesteps.is_floating_point()):
        return timesteps
    whole = timesteps.to(torch.int64)
    if not bool((whole.to(timesteps.dtype) == timesteps).all()):
        raise TypeError(f"timesteps must be whole numbers; got {timesteps!r}")
    return whole


class DDIMSchedulerBase(StepProgress, ConfigSurface, SchedulerMixin):
    """The shared shell of the DDIM schedulers; see :class:`ddim_sched.DDIMScheduler`."""

    config_class = DDIMConfig
    # diffusers' respacing flags: one warning of their own (ddim.carried_flags), not the generic one.
    _explained_keys: ClassVar[frozenset[str]] = frozenset(SIGMA_FLAG_SPACINGS)
    order = 1
    init_noise_sigma = 1.0

    _config: DDIMConfig
    _levels: NoiseLevels
    _schedule: Schedule | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._init_config(args, kwargs)

    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + list(inspect.signature(DDIMConfig).parameters.values())
    )

    # ------------------------------------------------------------------ configuration and tables

    def _set_config(self, config: DDIMConfig) -> None:
        """Install a validated config, with the effect a change has in diffusers (which reads its config when
        ``set_timesteps`` or ``step`` runs): the noise tables and the step's options (prediction type,
        clipping, thresholding) change at once, and a schedule already set keeps its timesteps but steps with
        them; the fields that choose timesteps (``timestep_spacing``, ``steps_offset``, ``prev_timestep_rule``)
        apply from the next ``set_timesteps``.
        A new ``num_train_timesteps`` clears the schedule (its timesteps may not exist any more)."""
        old: DDIMConfig | None = self.__dict__.get("_config")
        betas, alpha_bar, final = config.noise_tables()
        levels = NoiseLevels(alpha_bar, final)
        schedule: Schedule | None = self.__dict__.get("_schedule")
        self._config, self._betas, self._levels = config, betas, levels
        self._clip = self._x0_clip(config)
        self._table_views: dict[str, torch.Tensor] = {}
        if schedule is None or old is None or config.num_train_timesteps != old.num_train_timesteps:
            self.__dict__.pop("_timesteps", None)
            self._clear_schedule()
        elif any(getattr(old, f) != getattr(config, f) for f in STEP_FIELDS):
            # the same timesteps, on the new tables (one assignment: a step in flight keeps the old schedule)
            renewed = Schedule(
                schedule.timesteps,
                levels,
                config.prediction_type,
                schedule.stride,
                schedule.tensor.device,
                schedule.inverse,
            )
            if self.__dict__.get("_timesteps") is schedule.tensor:
                self.__dict__["_timesteps"] = renewed.tensor
            self._schedule = renewed

    @staticmethod
    def _x0_clip(config: DDIMConfig) -> X0Clip:
        """How the config bounds x̂0 (thresholding takes precedence over clip_sample, as in diffusers)."""
        mode: ClipMode = "threshold" if config.thresholding else "clip" if config.clip_sample else "none"
        return X0Clip(mode, config.clip_sample_range, config.dynamic_thresholding_ratio, config.sample_max_value)

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """Imagen's dynamic thresholding of ``sample`` with the config's ratio and maximum, as diffusers' helper:
        [B, ...] in, the same shape and dtype out (half precision computed in float32)."""
        check_floating_tensor("sample", sample)
        config = self._config
        work = sample.to(compute_dtype(sample.dtype))
        thresholded = dynamic_threshold(work, config.dynamic_thresholding_ratio, config.sample_max_value)
        return thresholded.to(sample.dtype)

    def _clear_schedule(self) -> None:
        self._schedule = None
        self._schedule_request: dict[str, Any] | None = None
        self.num_inference_steps: int | None = None
        self._reset_progress()

    def _install(self, schedule: Schedule, request: dict[str, Any] | None) -> None:
        """Make ``schedule`` current (one assignment: a step in flight keeps the one it started with) and its
        timesteps the public ``timesteps``; ``request`` (set_timesteps' arguments) re-derives it after a change
        of ``num_train_timesteps``, None where it cannot."""
        self.timesteps = schedule.tensor
        self._schedule = schedule
        self._schedule_request = request
        self.num_inference_steps = len(schedule)
        self._reset_progress()

    @property
    def ddim_config(self) -> DDIMConfig:
        """The configuration as the frozen :class:`DDIMConfig` dataclass."""
        return self._config

    @property
    def alpha_bar(self) -> torch.Tensor:
        """ᾱ_t for t = 0..T−1 as a float64 CPU tensor (a copy)."""
        return self._levels.alpha_bar.clone()

    # diffusers' float32 tables, made on first use: outside inference mode even during inference, so that
    # autograd may use them later, as it may diffusers' (made at construction). Assigning one of them (as
    # training code that rescales to zero terminal SNR does) makes it the scheduler's table:
    # :meth:`_assign_table`.

    def _table_view(self, name: str) -> torch.Tensor:
        """The float32 CPU view ``name`` of the float64 tables, made once per config."""
        views = self._table_views
        view = views.get(name)
        if view is None:
            with torch.inference_mode(False):
                if name == "betas":
                    view = self._betas.to(torch.float32)
                elif name == "alphas":
                    view = (1.0 - self._betas).to(torch.float32)
                elif name == "alphas_cumprod":
                    view = self._levels.alpha_bar.to(torch.float32)
                else:
                    view = torch.tensor(self._levels.final_alpha_bar, dtype=torch.float32)
            views[name] = view
        return view

    @property
    def betas(self) -> torch.Tensor:
        """β_t, float32 CPU (diffusers' attribute; the step uses the float64 tables). Assignable."""
        return self._table_view("betas")

    @betas.setter
    def betas(self, value: Any) -> None:
        self._assign_table("betas", value)

    @property
    def alphas(self) -> torch.Tensor:
        """1 − β_t, float32 CPU. Assignable."""
        return self._table_view("alphas")

    @alphas.setter
    def alphas(self, value: Any) -> None:
        self._assign_table("alphas", value)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t, float32 CPU (diffusers' attribute; :attr:`alpha_bar` is the float64 table). Assignable."""
        return self._table_view("alphas_cumprod")

    @alphas_cumprod.setter
    def alphas_cumprod(self, value: Any) -> None:
        self._assign_table("alphas_cumprod", value)

    @property
    def final_alpha_cumprod(self) -> torch.Tensor:
        """ᾱ after the last step, a float32 0-d tensor: 1 with ``set_alpha_to_one``, else ᾱ_0. Assignable to
        either (which sets ``set_alpha_to_one``)."""
        return self._table_view("final_alpha_cumprod")

    @final_alpha_cumprod.setter
    def final_alpha_cumprod(self, value: Any) -> None:
        self._assign_final(value)

    def _assign_table(self, name: str, value: Any) -> None:
        """Make an assigned β, α (= 1 − β) or ᾱ table the scheduler's noise table, with diffusers' effect (its
        ``step`` and ``add_noise`` read them) and none of its inconsistency: the config's ``trained_betas``
        becomes the β the table implies (no zero-SNR rescale or SNR shift on top: the table is the result),
        the other tables are derived from it, in float64, and a schedule already set steps on them at once.
        ᾱ after the last step follows ``set_alpha_to_one`` (1, or the new ᾱ_0).

        Raises:
            TypeError: Not a 1-D array of real numbers.
            ValueError: Not num_train_timesteps entries, or values no noise schedule has (β outside (0, 1],
                α outside [0, 1), ᾱ not decreasing from below 1 to >= 0), naming the table and the entry.
        """
        betas = implied_betas(name, value, self._config.num_train_timesteps)
        self.register_to_config(trained_betas=tuple(betas.tolist()), rescale_betas_zero_snr=False, snr_shift_scale=1.0)

    def _assign_final(self, value: Any) -> None:
        """``final_alpha_cumprod = 1`` sets ``set_alpha_to_one``; ``= ᾱ_0`` clears it.

        Raises:
            ValueError: Any other value (ddim_sched's schedulers end on one of those two levels).
        """
        try:
            final = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"final_alpha_cumprod must be a number or a one-element tensor; got {value!r}") from None
        first = float(self._levels.alpha_bar[0])
        if final == 1.0:
            self.register_to_config(set_alpha_to_one=True)
        elif abs(final - first) <= 1e-6 * first:  # ᾱ_0, given in float32 or float64
            self.register_to_config(set_alpha_to_one=False)
        else:
            raise ValueError(
                f"final_alpha_cumprod must be 1 (set_alpha_to_one=True) or alphas_cumprod[0]={first!r} "
                f"(set_alpha_to_one=False); got {final!r}"
            )

    @property
    def timesteps(self) -> torch.Tensor:
        """The timesteps :meth:`set_timesteps` chose (before it: every timestep, int64)."""
        value = self.__dict__.get("_timesteps")
        if value is None:
            value = self.__dict__["_timesteps"] = self._default_timesteps()
        return value

    @timesteps.setter
    def timesteps(self, value: torch.Tensor) -> None:
        self.__dict__["_timesteps"] = value

    def _default_timesteps(self) -> torch.Tensor:
        return torch.arange(self._config.num_train_timesteps - 1, -1, -1, dtype=torch.int64)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith(__package__ or "ddim_sched.ddim"):  # this package's own schedulers
            _DDIM_FAMILY.append(cls)

    @property
    def compatibles(self) -> list[type]:
        """The ddim_sched classes that accept this scheduler's config (``_compatibles`` names diffusers')."""
        return list(_DDIM_FAMILY)

    def __len__(self) -> int:
        return self._config.num_train_timesteps

    # ------------------------------------------------------------------ choosing timesteps

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """Build a scheduler from a diffusers-style config (of any scheduler), with overrides, as diffusers'
        ``from_config`` does (:meth:`ddim_sched.compat.config_surface.ConfigSurface.from_config`).

        A config that sets one of diffusers' noise-level respacings (``use_karras_sigmas``,
        ``use_exponential_sigmas``, ``use_beta_sigmas``, ``use_lu_lambdas``) loads as in diffusers, the flag
        ignored, with one warning on the ``ddim_sched`` logger naming the ``timestep_spacing`` that gives
        the same grid; passing that spacing (``from_config(config, timestep_spacing="karras")``) takes it.
        """
        result = super().from_config(config, return_unused_kwargs, **kwargs)
        scheduler = result[0] if return_unused_kwargs else result
        warn_carried_sigma_flags(scheduler.config, scheduler.ddim_config.timestep_spacing, cls.__name__)
        return result

    def _spaced_timesteps(self, num_inference_steps: Any) -> np.ndarray:
        """The config's spacing for S steps, validated, noisiest first."""
        config = self._config
        T = config.num_train_timesteps
        S = check_int("num_inference_steps", num_inference_steps)
        if not 1 <= S <= T:
            raise ValueError(f"num_inference_steps must lie in [1, num_train_timesteps={T}]; got {S}")
        spacing = SPACINGS[config.timestep_spacing]
        raw = spacing(T, S, steps_offset=config.steps_offset, alpha_bar=self._levels.alpha_bar)
        if raw.size and raw.max() >= T:
            raise ValueError(
                f"steps_offset={config.steps_offset} with {config.timestep_spacing!r} spacing and "
                f"num_inference_steps={S} gives timestep {int(raw.max())}, outside [0, {T})"
            )
        return check_timesteps(raw, T, f"{config.timestep_spacing} timesteps")

    def _timesteps_of_sigmas(self, sigmas: SigmasArg) -> np.ndarray:
        """The S timesteps to visit for k-diffusion sigmas (S + 1 levels σ = √((1 − ᾱ)/ᾱ), the last 0 or σ of
        the final level), each the nearest in log σ, noisiest first.

        Nearest, not interpolated: a DDIM timestep is an integer that indexes the ᾱ table and is what the
        model is called with, so a level between two timesteps is taken at the nearer one.
        """
        levels = self._levels
        visited = timesteps_from_sigmas(sigmas, levels.alpha_bar, final_alpha_bar=levels.final_alpha_bar)
        return check_timesteps(visited, len(levels), "the timesteps of sigmas")

    def _plan(
        self,
        num_inference_steps: int | None,
        timesteps: TimestepsArg | None,
        device: str | torch.device | None,
        sigmas: SigmasArg | None = None,
    ) -> Schedule:
        """The sampling schedule (noisiest first) for S steps, custom timesteps or k-diffusion sigmas, validated."""
        given = {"num_inference_steps": num_inference_steps, "timesteps": timesteps, "sigmas": sigmas}
        chosen = {name: value for name, value in given.items() if value is not None}
        if len(chosen) != 1:
            got = " and ".join(f"{name}={value!r}" for name, value in chosen.items()) or "none of them"
            raise ValueError(f"set_timesteps needs exactly one of num_inference_steps, timesteps and sigmas; got {got}")
        config = self._config
        T = config.num_train_timesteps
        stride = None  # custom timesteps and sigmas step along themselves
        if timesteps is not None:
            visited = check_timesteps(timesteps, T, "timesteps")
        elif sigmas is not None:
            visited = self._timesteps_of_sigmas(sigmas)
        else:
            visited = self._spaced_timesteps(num_inference_steps)
            stride = successor_stride(config.prev_timestep_rule, config.timestep_spacing, T, len(visited))
        return Schedule(visited, self._levels, config.prediction_type, stride, device)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep a sampling step from ``timestep`` lands on under the config's rule (−1: past the
        end). For an inverse scheduler, the level its step labelled ``timestep`` starts from.

        An int for an int, a tensor of the timestep's shape (on its device, not read) for a tensor.
        """
        schedule = self._require_schedule()
        if isinstance(timestep, torch.Tensor):
            return schedule.targets_of(timestep.to(torch.int64))
        return schedule.target(self._timestep_arg(timestep, torch.empty(1), "timestep"))

    def _require_schedule(self) -> Schedule:
        schedule = self._schedule
        if schedule is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(...) before step(...)")
        return schedule

    def _timestep_arg(self, value: Any, sample: torch.Tensor, name: str, allow_negative: bool = False) -> Any:
        return timestep_values(
            value,
            name=name,
            num_train_timesteps=self._config.num_train_timesteps,
            shape=tuple(sample.shape),
            allow_negative=allow_negative,
        )

    # ------------------------------------------------------------------ forward process

    def _marginal(self, timesteps: Any, like: torch.Tensor) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        """(a, b) = (√ᾱ_t, √(1 − ᾱ_t)): floats for one host timestep, else tensors that broadcast over ``like``
        ([B, 1, ..., 1] for per-sample timesteps, any per-element shape)."""
        t = self._timestep_arg(timesteps, like, "timesteps")
        if isinstance(t, int):
            return self._levels.level(t)
        index = torch.from_numpy(t).to(like.device) if isinstance(t, np.ndarray) else t.to(like.device)
        a, b = self._levels.levels_of(index)
        dtype = compute_dtype(like.dtype)
        return a.to(dtype).reshape(index.shape), b.to(dtype).reshape(index.shape)

    def _combine(self, first: torch.Tensor, second: torch.Tensor, timesteps: Any, velocity: bool) -> torch.Tensor:
        """a·first + b·second (or a·second − b·first for the velocity), computed in >= float32."""
        a, b = self._marginal(timesteps, first)
        dtype = compute_dtype(first.dtype)
        x, y = first.to(dtype), second.to(dtype)
        if velocity:
            x, y, a, b = y, x, a, -b
        if isinstance(a, float) and isinstance(b, float):
            result = torch.add(x * a, y, alpha=b)
        else:
            result = torch.addcmul(x * a, y, torch.as_tensor(b, dtype=dtype, device=x.device))
        return result.to(first.dtype)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """Sample the forward marginal: x_t = √ᾱ_t · x0 + √(1−ᾱ_t) · ε. Differentiable.

        Args:
            original_samples: x0, [B, ...], floating.
            noise: ε, the same shape or one that broadcasts with it (one noise for the batch: [1, ...]).
            timesteps: An int, a 0-d tensor, or a [B] integer tensor (one per sample), any device; a floating
                tensor of whole numbers is taken as those integers.

        Returns:
            x_t in the samples' dtype and the broadcast shape, computed in at least float32. The scheduler is
            not modified.

        Raises:
            TypeError, ValueError: Non-floating tensors, shapes that do not broadcast, bad timesteps.
        """
        original_samples, noise = broadcast_pair("original_samples", original_samples, "noise", noise)
        return self._combine(original_samples, noise, _whole_timesteps(timesteps), velocity=False)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """The v-prediction target: v = √ᾱ_t · ε − √(1−ᾱ_t) · x0 (``sample`` is x0 here, as in diffusers).

        Args:
            sample: x0, [B, ...], floating.
            noise: ε, the same shape or one that broadcasts with it.
            timesteps: An int, a 0-d tensor, or a [B] integer tensor (a floating tensor of whole numbers too).

        Returns:
            v in the sample's dtype and the broadcast shape, computed in at least float32. The scheduler is not
            modified.
        """
        sample, noise = broadcast_pair("sample", sample, "noise", noise)
        return self._combine(sample, noise, _whole_timesteps(timesteps), velocity=True)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """Return ``sample`` unchanged: DDIM needs no input scaling (present for pipeline compatibility)."""
        return sample
