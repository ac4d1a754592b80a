"""The frozen, validated configuration of a DDIM scheduler and its diffusers-style dict view."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch

from ..common.frozen_config import FrozenConfig
from ..common.validation import check_choice, check_flag, check_int, check_real
from ..compat.config_surface import COMPATIBLE_KEYS
from ..core.update import VP_PREDICTION_TYPES, PredictionType
from ..tables.betas import BETA_SCHEDULES, alpha_bar_from_betas, make_betas
from ..tables.spacing import SPACINGS
from .carried_flags import warn_carried_sigma_flags

logger = logging.getLogger("ddim_sched")

PrevTimestepRule = Literal["stride", "schedule"]

# What a DDIM model may predict (the flow scheduler's velocity is not among them).
PREDICTION_TYPES: tuple[str, ...] = VP_PREDICTION_TYPES
PREV_TIMESTEP_RULES: tuple[str, ...] = get_args(PrevTimestepRule)

# The 15 fields of diffusers' DDIMScheduler, in its order; the rest are ddim_sched extensions.
DIFFUSERS_FIELDS: tuple[str, ...] = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "clip_sample",
    "set_alpha_to_one",
    "steps_offset",
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "clip_sample_range",
    "sample_max_value",
    "timestep_spacing",
    "rescale_betas_zero_snr",
)
# The largest num_train_timesteps: timesteps must fit the int32 a model's embedding may be given.
MAX_TRAIN_TIMESTEPS = 2**31 - 1


def _trained_betas(value: Any, num_train_timesteps: int) -> tuple[float, ...]:
    """Validate an explicit beta array and return it as a tuple of floats."""
    try:
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"trained_betas must be a 1-D array of floats; got {value!r}") from err
    if array.ndim != 1:
        raise ValueError(f"trained_betas must be 1-D; got shape {tuple(array.shape)}")
    if array.shape[0] != num_train_timesteps:
        raise ValueError(
            f"trained_betas must have num_train_timesteps={num_train_timesteps} entries; got {array.shape[0]}"
        )
    bad = ~((array > 0) & (array <= 1))
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(f"trained_betas must lie in (0, 1]; got trained_betas[{index}] = {float(array[index])!r}")
    return tuple(float(b) for b in array)


@dataclass(frozen=True)
class DDIMConfig(FrozenConfig):
    """Configuration of a DDIM scheduler, validated on construction.

    The first 15 fields are diffusers' ``DDIMScheduler`` arguments with the same defaults; the last
    two are ddim_sched extensions whose defaults reproduce diffusers exactly.

    Args:
        num_train_timesteps: T, the number of diffusion steps the model was trained with.
        beta_start: First β of the ``linear``/``scaled_linear`` schedules, in (0, 1).
        beta_end: Last β of those schedules, in (0, 1) and >= beta_start.
        beta_schedule: ``"linear"``, ``"scaled_linear"`` or ``"squaredcos_cap_v2"``.
        trained_betas: Explicit β_t values (length T, each in (0, 1]); overrides beta_schedule.
        clip_sample: Clamp x̂0 to [-clip_sample_range, clip_sample_range]. diffusers' default is
            True, which is wrong for latent models: pass False for Stable Diffusion.
        set_alpha_to_one: After the last step, use ᾱ = 1 (True) or ᾱ[0] (False).
        steps_offset: Added to every ``leading`` timestep (Stable Diffusion uses 1).
        prediction_type: What the model predicts: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
        thresholding: Imagen's dynamic thresholding of x̂0 (takes precedence over clip_sample).
        dynamic_thresholding_ratio: Quantile of |x̂0| used as the threshold, in (0, 1].
        clip_sample_range: Clamp bound for clip_sample, > 0.
        sample_max_value: Upper bound of the dynamic threshold, > 0.
        timestep_spacing: A name in ``ddim_sched.tables.spacing.SPACINGS``: diffusers' ``"leading"``,
            ``"trailing"``, ``"linspace"``, and ddim_sched's: the paper's ``"quad"``, the noise-level grids
            ``"karras"``, ``"exponential"``, ``"beta"``, ``"logsnr"``, ``"kl_optimal"``,
            ``"linear_quadratic"``, Align Your Steps ``"ays_sd15"`` and ``"ays_sdxl"``, and ComfyUI's
            ``"simple"``, ``"normal"``, ``"sgm_uniform"`` and ``"beta_timesteps"`` (docs/recipes.md).
        rescale_betas_zero_snr: Rescale β to zero terminal SNR (Lin et al. 2023, Algorithm 1); needs T >= 2.
        prev_timestep_rule: ``"stride"`` (diffusers: t − T // S) or ``"schedule"`` (the next timestep
            the schedule visits). The stride rule applies to diffusers' own spacings only: quad,
            karras and custom timesteps always step along the schedule. ddim_sched extension.
        snr_shift_scale: Divide the SNR by this factor (CogVideoX); 1.0 is off. ddim_sched extension.

    Raises:
        ValueError: A value out of range or an unknown option name (the message lists the options).
        TypeError: A value of the wrong type.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    clip_sample: bool = True
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: PredictionType = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False
    prev_timestep_rule: PrevTimestepRule = "stride"
    snr_shift_scale: float = field(default=1.0)

    # The fields diffusers' DDIMScheduler has; the others appear in ``scheduler.config`` only when changed.
    visible_fields: ClassVar[tuple[str, ...]] = DIFFUSERS_FIELDS

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("num_train_timesteps", check_int("num_train_timesteps", self.num_train_timesteps, 1, MAX_TRAIN_TIMESTEPS))
        check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        put("beta_start", check_real("beta_start", self.beta_start))
        put("beta_end", check_real("beta_end", self.beta_end))
        if self.trained_betas is not None:
            put("trained_betas", _trained_betas(self.trained_betas, self.num_train_timesteps))
        elif self.beta_schedule in ("linear", "scaled_linear"):
            for name in ("beta_start", "beta_end"):
                value = getattr(self, name)
                if not 0.0 < value < 1.0:
                    raise ValueError(f"{name} must lie in (0, 1); got {value!r}")
            if self.beta_start > self.beta_end:
                raise ValueError(
                    f"beta_start must not exceed beta_end; got beta_start={self.beta_start!r} > "
                    f"beta_end={self.beta_end!r}"
                )
        for name in ("clip_sample", "set_alpha_to_one", "thresholding", "rescale_betas_zero_snr"):
            put(name, check_flag(name, getattr(self, name)))
        if self.rescale_betas_zero_snr and self.num_train_timesteps < 2:
            # Algorithm 1 divides by √ᾱ_0 − √ᾱ_T, which is 0 for a single timestep: all-NaN tables.
            raise ValueError(
                "rescale_betas_zero_snr needs num_train_timesteps >= 2; got "
                f"num_train_timesteps={self.num_train_timesteps!r}"
            )
        put("steps_offset", check_int("steps_offset", self.steps_offset, 0, MAX_TRAIN_TIMESTEPS))
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", self.timestep_spacing, SPACINGS)
        check_choice("prev_timestep_rule", self.prev_timestep_rule, PREV_TIMESTEP_RULES)
        ratio = check_real("dynamic_thresholding_ratio", self.dynamic_thresholding_ratio)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"dynamic_thresholding_ratio must lie in (0, 1]; got {ratio!r}")
        put("dynamic_thresholding_ratio", ratio)
        for name in ("clip_sample_range", "sample_max_value", "snr_shift_scale"):
            put(name, check_real(name, getattr(self, name), 0.0, strict=True))

    def noise_tables(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(β_1..β_T, ᾱ_0..ᾱ_{T−1}, ᾱ after the last step) in float64 on the CPU: the β schedule or the trained
        betas, then the SNR shift, then the zero-SNR rescale; the last level is 1 with ``set_alpha_to_one``,
        else ᾱ_0."""
        betas = make_betas(
            self.num_train_timesteps,
            self.beta_start,
            self.beta_end,
            self.beta_schedule,
            self.trained_betas,
            self.rescale_betas_zero_snr,
            self.snr_shift_scale,
        )
        alpha_bar = alpha_bar_from_betas(betas)
        return betas, alpha_bar, 1.0 if self.set_alpha_to_one else float(alpha_bar[0])

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], **overrides: Any) -> DDIMConfig:
        """Build a config from any diffusers-style mapping, ignoring keys that are not fields.

        Keys starting with ``_`` (``_class_name``, ``_diffusers_version``, ...) and options of
        DDIM-compatible diffusers schedulers (e.g. PNDM's ``skip_prk_steps``) are dropped silently; other
        unknown keys are dropped with one logged warning that names them. A noise-level respacing flag set
        True (``use_karras_sigmas``, ...) is dropped too, with one warning naming the ``timestep_spacing``
        that gives its grid (pass that spacing to take it).
        """
        if not isinstance(mapping, Mapping):
            raise TypeError(f"config must be a mapping or DDIMConfig; got {type(mapping).__name__}")
        known = set(cls.field_names())
        merged = {**dict(mapping), **overrides}
        unknown = sorted(
            str(k) for k in merged if k not in known and k not in COMPATIBLE_KEYS and not str(k).startswith("_")
        )
        if unknown:
            logger.warning(
                "DDIMScheduler config: ignoring keys that are not DDIM options: %s", ", ".join(map(str, unknown))
            )
        config = cls(**{k: v for k, v in merged.items() if k in known})
        warn_carried_sigma_flags(merged, config.timestep_spacing, "DDIMConfig")
        return config
