"""The frozen, validated configuration of :class:`~ddim_sched.FlowMatchDDIMScheduler`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..common.frozen_config import FrozenConfig
from ..common.validation import check_choice, check_flag, check_int, check_real
from ..tables.flow_sigmas import SIGMA_SCHEDULES, TIME_SHIFTS

# The 14 fields of diffusers' FlowMatchEulerDiscreteScheduler (0.42.1), in its order; ``eta`` is ddim_sched's.
DIFFUSERS_FLOW_FIELDS: tuple[str, ...] = (
    "num_train_timesteps",
    "shift",
    "use_dynamic_shifting",
    "base_shift",
    "max_shift",
    "base_image_seq_len",
    "max_image_seq_len",
    "invert_sigmas",
    "shift_terminal",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "time_shift_type",
    "stochastic_sampling",
)


def _optional_real(name: str, value: Any) -> float | None:
    return None if value is None else check_real(name, value)


@dataclass(frozen=True)
class FlowMatchDDIMConfig(FrozenConfig):
    """Configuration of a flow-matching DDIM scheduler, validated on construction.

    The first 14 fields are diffusers' ``FlowMatchEulerDiscreteScheduler`` arguments with the same
    defaults and meaning; ``eta``, the two respacings after it and ``shift_once`` are ddim_sched's (in
    ``config`` only when set).

    Args:
        num_train_timesteps: T; a timestep is σ·T (σ = 1 is pure noise).
        shift: The static shift s·σ/(1 + (s − 1)·σ) of every schedule, > 0 (SD3 uses 3.0).
        use_dynamic_shifting: Shift by μ per call instead (Flux): ``set_timesteps`` then needs ``mu``.
        base_shift, max_shift, base_image_seq_len, max_image_seq_len: What pipelines read to compute μ
            from the image size (kept in the config; the scheduler itself does not use them).
        invert_sigmas: The model's time runs the other way (Mochi): ``sigmas`` and ``timesteps`` hold
            1 − σ, and the model output is read as x0 − ε.
        shift_terminal: Stretch each schedule so that its last level is this value, in (0, 1);
            None (or 0, as diffusers treats it) is off.
        use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas: Respace each schedule between its
            first and last level (at most one of these and the two respacing extensions below).
        time_shift_type: ``"exponential"`` or ``"linear"``: the form of the dynamic shift.
        stochastic_sampling: diffusers' stochastic sampler: each step re-noises x̂0 completely,
            x_s = (1 − σ_s)·x̂0 + σ_s·z (the η → ∞ end of the DDIM family). Not with ``eta``.
        eta: η >= 0 of every step that is not given one: 0 is DDIM (diffusers' Euler step), 1 is the
            DDPM posterior's noise. ddim_sched extension.
        use_kl_optimal_sigmas: Respace each schedule uniformly in atan σ between its first and last level
            (the KL-optimal schedule of Sabour et al. 2024; ComfyUI's ``kl_optimal``). ddim_sched extension.
        use_linear_quadratic_sigmas: Replace each schedule by Mochi's linear-quadratic levels below its first
            level (ComfyUI's ``linear_quadratic``, τ = 0.025; the last level is not used). ddim_sched extension.
        shift_once: Apply the static shift once to the default schedule. diffusers takes the default
            schedule's range from its training table, which is already shifted, and shifts again (so SD3's
            shift 3 at S = T ends at 0.0089, not the table's 0.0030); False reproduces that, True spaces the
            unshifted levels 1 … 1/T and shifts them once (S = T then gives the training table). Custom
            sigmas or timesteps and the dynamic shift are shifted once either way. ddim_sched extension.

    Raises:
        ValueError: A value out of range, several sigma respacings, an unknown time_shift_type (the message
            lists the options), or stochastic_sampling with eta > 0.
        TypeError: A value of the wrong type.
    """

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: float | None = 0.5
    max_shift: float | None = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    invert_sigmas: bool = False
    shift_terminal: float | None = None
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    time_shift_type: str = "exponential"
    stochastic_sampling: bool = False
    eta: float = 0.0
    use_kl_optimal_sigmas: bool = False
    use_linear_quadratic_sigmas: bool = False
    shift_once: bool = False

    # The fields diffusers' FlowMatchEulerDiscreteScheduler has; the extensions appear in ``config`` only when set.
    visible_fields: ClassVar[tuple[str, ...]] = DIFFUSERS_FLOW_FIELDS

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("num_train_timesteps", check_int("num_train_timesteps", self.num_train_timesteps, 1))
        put("shift", check_real("shift", self.shift, 0.0, strict=True))
        flags = ("use_dynamic_shifting", "invert_sigmas", "stochastic_sampling", "shift_once", *SIGMA_SCHEDULES)
        for name in flags:
            put(name, check_flag(name, getattr(self, name)))
        for name in ("base_shift", "max_shift"):
            put(name, _optional_real(name, getattr(self, name)))
        for name in ("base_image_seq_len", "max_image_seq_len"):
            put(name, check_int(name, getattr(self, name), 1))
        terminal = _optional_real("shift_terminal", self.shift_terminal)
        if terminal and not 0.0 < terminal < 1.0:
            raise ValueError(f"shift_terminal must lie in (0, 1) (or be None: off); got {self.shift_terminal!r}")
        put("shift_terminal", terminal)
        chosen = [name for name in SIGMA_SCHEDULES if getattr(self, name)]
        if len(chosen) > 1:
            raise ValueError(f"at most one of {', '.join(SIGMA_SCHEDULES)} may be True; got {', '.join(chosen)}")
        check_choice("time_shift_type", self.time_shift_type, TIME_SHIFTS)
        put("eta", check_real("eta", self.eta, 0.0))
        if self.stochastic_sampling and self.eta > 0:
            raise ValueError(
                f"stochastic_sampling=True re-noises fully (the eta -> infinity end); it cannot be combined with "
                f"eta={self.eta!r}: choose one"
            )

    @property
    def sigma_conversion(self) -> str | None:
        """The respacing option that is on (a key of ``flow_sigmas.SIGMA_SCHEDULES``), or None."""
        return next((name for name in SIGMA_SCHEDULES if getattr(self, name)), None)
