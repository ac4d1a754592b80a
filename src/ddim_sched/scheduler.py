"""``DDIMScheduler``: a thin stateful shell over the pure schedule, spacing and kernel functions."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import kernel
from .config import DIFFUSERS_FIELDS, ConfigView, DDIMConfig
from .config_io import CONFIG_NAME, read_config, write_config
from .noise import Generator, randn
from .output import DDIMSchedulerOutput
from .schedules import alpha_bar_from_betas, make_betas
from .spacing import SPACINGS, check_timesteps, predecessors, successor_stride

# Schedulers whose configs diffusers treats as interchangeable with DDIM's.
KARRAS_COMPATIBLE = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
)

_TABLE_CACHE_SIZE = 8


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 samples, float32 for everything else (half precision included)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _is_compiling() -> bool:
    """True while torch.compile traces (value checks and host tables are skipped then)."""
    return _compiler_is_compiling()


_compiler_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


def _to_device(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU table to ``device``; to CUDA through pinned memory, without blocking the host."""
    if device.type == "cuda" and not _is_compiling():  # tracing cannot pin memory
        return table.pin_memory().to(device, non_blocking=True)
    return table.to(device)


def _gather(table: torch.Tensor, index: int | torch.Tensor) -> torch.Tensor:
    """Rows ``table[index]``: [...] for an int, [N, ...] for a 0-d or [N] index tensor.

    Tensor indices go through ``index_select``: plain indexing with a 0-d tensor reads its value on
    the host (a device sync, and a data-dependent graph break under torch.compile).
    """
    if isinstance(index, int):
        return table[index]
    return table.index_select(0, index.reshape(-1))


def _check_floating(name: str, value: Any) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {value.dtype}")


def _one_schedule_argument(num_inference_steps: Any, timesteps: Any) -> None:
    """Raise unless exactly one of set_timesteps' two ways to choose a schedule is used."""
    if (num_inference_steps is None) == (timesteps is None):
        raise ValueError(
            "set_timesteps needs exactly one of num_inference_steps and timesteps; got "
            f"num_inference_steps={num_inference_steps!r} and timesteps={timesteps!r}"
        )


class DDIMScheduler:
    """Denoising diffusion implicit models (Song, Meng & Ermon 2020), a drop-in for diffusers' DDIMScheduler.

    Construct it with the same keyword arguments as diffusers' class (see :class:`DDIMConfig`) or
    with :meth:`from_config` / :meth:`from_pretrained`; call :meth:`set_timesteps`, then :meth:`step`
    once per timestep in :attr:`timesteps`.

    Dtype rule: the noise tables (β, ᾱ) and every step coefficient are computed in float64 and cast
    once to the compute dtype: float64 for float64 samples, float32 otherwise. Half-precision
    samples are therefore stepped in float32 and returned in their own dtype. The public ``betas``,
    ``alphas``, ``alphas_cumprod`` and ``final_alpha_cumprod`` attributes are float32 CPU tensors, as
    in diffusers; ``alpha_bar`` is the float64 table.

    Devices: tables move to the sample's device once and are cached there; ``step`` never copies from
    the device to the host, so it runs under ``torch.cuda.set_sync_debug_mode("error")`` and inside
    CUDA graphs when ``timestep`` is a tensor on the sample's device.
    """

    config_name = CONFIG_NAME
    order = 1
    init_noise_sigma = 1.0
    _compatibles = list(KARRAS_COMPATIBLE)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._set_config(DDIMConfig(*args, **kwargs))

    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + list(inspect.signature(DDIMConfig).parameters.values())
    )

    # ------------------------------------------------------------------ configuration

    def _set_config(self, config: DDIMConfig) -> None:
        """Install a validated config and derive the noise tables from it."""
        self._config = config
        betas = make_betas(
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
            config.beta_schedule,
            config.trained_betas,
            config.rescale_betas_zero_snr,
            config.snr_shift_scale,
        )
        alpha_bar = alpha_bar_from_betas(betas)
        final = 1.0 if config.set_alpha_to_one else float(alpha_bar[0])
        self._alpha_bar = alpha_bar
        # ᾱ with the final value (after the last step) prepended: index with timestep + 1.
        self._alpha_bar_ext = torch.cat([torch.tensor([final], dtype=torch.float64), alpha_bar])
        self.betas = betas.to(torch.float32)
        self.alphas = (1.0 - betas).to(torch.float32)
        self.alphas_cumprod = alpha_bar.to(torch.float32)
        self.final_alpha_cumprod = torch.tensor(final, dtype=torch.float32)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(config.num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._prev_of: np.ndarray | None = None
        self._custom_timesteps = False
        self._begin_index: int | None = None
        self._reset_progress()
        self._device_tables: dict[tuple[Any, ...], torch.Tensor] = {}

    @property
    def config(self) -> ConfigView:
        """The configuration as a read-only dict with attribute access (diffusers' ``FrozenDict``)."""
        return ConfigView(self._config.to_dict())

    @property
    def ddim_config(self) -> DDIMConfig:
        """The configuration as the frozen :class:`DDIMConfig` dataclass."""
        return self._config

    @property
    def _internal_dict(self) -> ConfigView:
        # diffusers pipelines patch configs through this attribute (e.g. forcing steps_offset=1).
        return self.config

    @_internal_dict.setter
    def _internal_dict(self, value: Mapping[str, Any]) -> None:
        self._set_config(DDIMConfig.from_mapping(value))

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | DDIMConfig | DDIMScheduler, **overrides: Any) -> DDIMScheduler:
        """Build a scheduler from a diffusers-style config of any scheduler, with overrides.

        Args:
            config: A dict / ``FrozenDict`` (e.g. ``pipe.scheduler.config``), a :class:`DDIMConfig`,
                or a scheduler whose ``config`` to take.
            **overrides: Config fields to change, e.g. ``timestep_spacing="trailing"``.

        Keys that are not DDIM options (another scheduler's, such as PNDM's ``skip_prk_steps``) are
        ignored with one logged warning naming them; ``_``-prefixed metadata keys silently.

        Raises:
            TypeError, ValueError: As :class:`DDIMConfig` does, for invalid values.
        """
        if isinstance(config, DDIMConfig):
            config = config.to_dict()
        elif not isinstance(config, Mapping) and hasattr(config, "config"):
            config = config.config
        return cls._from_validated(DDIMConfig.from_mapping(config, **overrides))

    @classmethod
    def _from_validated(cls, config: DDIMConfig) -> DDIMScheduler:
        scheduler = cls.__new__(cls)
        scheduler._set_config(config)
        return scheduler

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike[str], subfolder: str | None = None, **kwargs: Any
    ) -> DDIMScheduler:
        """Load ``scheduler_config.json`` from a local directory (or a direct path to the file).

        Args:
            pretrained_model_name_or_path: A directory holding ``scheduler_config.json`` (for a whole
                pipeline, pass ``subfolder="scheduler"``), or the .json file itself.
            subfolder: Folder inside that directory.
            **kwargs: Config fields override the file's values; hub-download options that diffusers
                accepts (``cache_dir``, ``revision``, ...) are accepted and ignored.

        Raises:
            ConfigFileNotFoundError: No config file there (a FileNotFoundError and a ValueError).
            ValueError: The file is not valid JSON, or holds invalid values.
        """
        data = read_config(pretrained_model_name_or_path, subfolder)
        fields = set(DDIMConfig.field_names())
        overrides = {k: v for k, v in kwargs.items() if k in fields}
        return cls.from_config(data, **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> None:
        """Write ``save_directory/scheduler_config.json`` that diffusers' DDIMScheduler can load.

        The 15 diffusers fields are always written; ddim_sched's extension fields only when they
        differ from their defaults (diffusers would warn about them and ignore them).
        """
        write_config(save_directory, type(self).__name__, self._config_fields_to_save())

    def save_config(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> None:
        """Alias of :meth:`save_pretrained`, as in diffusers."""
        self.save_pretrained(save_directory, **kwargs)

    def _config_fields_to_save(self) -> dict[str, Any]:
        everything = self._config.to_dict()
        defaults = DDIMConfig().to_dict()
        return {
            k: v for k, v in everything.items() if k in DIFFUSERS_FIELDS or v != defaults[k]
        }

    @property
    def compatibles(self) -> list[type]:
        """ddim_sched classes that accept this scheduler's config (see ``_compatibles`` for diffusers' names)."""
        import ddim_sched

        return [getattr(ddim_sched, name) for name in ("DDIMScheduler", "DDIMInverseScheduler") if hasattr(ddim_sched, name)]

    def __len__(self) -> int:
        return self._config.num_train_timesteps

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._config.to_dict().items() if k != "trained_betas")
        return f"{type(self).__name__}({fields})"

    @property
    def alpha_bar(self) -> torch.Tensor:
        """ᾱ_t for t = 0..T−1 as a float64 CPU tensor (a copy)."""
        return self._alpha_bar.clone()

    # ------------------------------------------------------------------ schedule

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Choose the timesteps to visit; call before sampling.

        Args:
            num_inference_steps: S, the number of steps, 1 <= S <= num_train_timesteps; the
                config's ``timestep_spacing`` picks which timesteps.
            device: Where to put :attr:`timesteps` (and, lazily, the step tables).
            timesteps: A custom strictly decreasing sequence of timesteps in [0, T) instead of S.
                Each step then lands on the next timestep of this sequence (the "schedule" rule),
                since a stride means nothing for an arbitrary sequence.

        Raises:
            ValueError: Neither or both of num_inference_steps and timesteps; S out of range; a
                leading schedule pushed past T by steps_offset; a bad custom sequence; or a schedule
                that visits a timestep with ᾱ = 0 (zero terminal SNR with trailing/linspace spacing)
                while prediction_type is "epsilon", where x̂0 = (x − √(1−ᾱ)ε)/√ᾱ is undefined.
            TypeError: num_inference_steps is not an int.
        """
        config = self._config
        T = config.num_train_timesteps
        _one_schedule_argument(num_inference_steps, timesteps)
        custom = timesteps is not None
        schedule = check_timesteps(timesteps, T, "timesteps") if custom else self._spaced_timesteps(num_inference_steps)
        if config.prediction_type == "epsilon":
            zero = (self._alpha_bar[torch.from_numpy(schedule)] == 0).numpy()
            if zero.any():
                t = int(schedule[np.flatnonzero(zero)[0]])
                raise ValueError(
                    f"this schedule visits timestep {t}, where alpha_bar is 0 (zero terminal SNR), but "
                    "prediction_type is 'epsilon': x0 = (x - sqrt(1 - alpha_bar) * eps) / sqrt(alpha_bar) is "
                    "undefined there. Use prediction_type='v_prediction' (as Lin et al. 2023 prescribe for "
                    "zero SNR), or a spacing that does not visit the last timestep ('leading')."
                )
        S = len(schedule)
        spacing_name = None if custom else config.timestep_spacing
        self._prev_of = predecessors(schedule, T, successor_stride(config.prev_timestep_rule, spacing_name, T, S))
        self._custom_timesteps = custom
        self.num_inference_steps = S
        self.timesteps = torch.from_numpy(schedule.copy()).to(device)
        self._device_tables = {k: v for k, v in self._device_tables.items() if k[0] == "alpha_bar"}
        self._begin_index = None
        self._reset_progress()

    def _spaced_timesteps(self, num_inference_steps: int) -> np.ndarray:
        """The config's spacing for S steps, validated, noisiest first."""
        config = self._config
        T = config.num_train_timesteps
        if isinstance(num_inference_steps, (bool, np.bool_)) or not isinstance(num_inference_steps, (int, np.integer)):
            raise TypeError(
                f"num_inference_steps must be an int; got {num_inference_steps!r} "
                f"of type {type(num_inference_steps).__name__}"
            )
        if not 1 <= num_inference_steps <= T:
            raise ValueError(f"num_inference_steps must lie in [1, num_train_timesteps={T}]; got {num_inference_steps}")
        spacing = SPACINGS[config.timestep_spacing]
        raw = spacing(T, int(num_inference_steps), steps_offset=config.steps_offset, alpha_bar=self._alpha_bar)
        if raw.size and raw.max() >= T:
            raise ValueError(
                f"steps_offset={config.steps_offset} with {config.timestep_spacing!r} spacing and "
                f"num_inference_steps={num_inference_steps} gives timestep {int(raw.max())}, outside [0, {T})"
            )
        return check_timesteps(raw, T, f"{config.timestep_spacing} timesteps")

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep a step from ``timestep`` lands on under the config's rule (−1: past the end)."""
        self._require_schedule()
        if isinstance(timestep, torch.Tensor):
            table = torch.from_numpy(self._prev_of).to(timestep.device)
            return table[timestep.long()]
        return int(self._prev_of[self._check_int_timestep(timestep)])

    # ------------------------------------------------------------------ img2img progress tracking

    def _reset_progress(self) -> None:
        self._steps_taken = 0
        self._first_timestep: int | torch.Tensor | None = None

    @property
    def begin_index(self) -> int | None:
        """Index of the first timestep to run, set by a pipeline with :meth:`set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Declare that sampling starts at ``timesteps[begin_index]`` (img2img); call after set_timesteps."""
        if isinstance(begin_index, bool) or not isinstance(begin_index, (int, np.integer)):
            raise TypeError(f"begin_index must be an int; got {begin_index!r}")
        if not 0 <= begin_index < len(self.timesteps):
            raise ValueError(f"begin_index must lie in [0, {len(self.timesteps)}); got {begin_index}")
        self._begin_index = int(begin_index)

    @property
    def step_index(self) -> int | None:
        """Index in :attr:`timesteps` of the next step (None before the first step).

        Computed on demand: when begin_index is unset and the first timestep was a device tensor,
        reading this property copies one value to the host; stepping never does.
        """
        if self._first_timestep is None:
            return None
        start = self._begin_index
        if start is None:
            first = self._first_timestep
            if isinstance(first, torch.Tensor):
                if first.numel() != 1:
                    return None
                first = int(first.reshape(()).item())
            matches = np.flatnonzero(self.timesteps.cpu().numpy() == first)
            if matches.size == 0:
                return None
            start = int(matches[0])
        return start + self._steps_taken

    # ------------------------------------------------------------------ stepping

    def _require_schedule(self) -> None:
        if self.num_inference_steps is None or self._prev_of is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(...) before step(...)")

    def _check_int_timestep(self, timestep: Any, name: str = "timestep") -> int:
        T = self._config.num_train_timesteps
        if not 0 <= timestep < T:
            raise ValueError(f"{name} must lie in [0, num_train_timesteps={T}); got {timestep}")
        return int(timestep)

    def _timestep_arg(self, timestep: Any, sample: torch.Tensor, name: str, allow_negative: bool = False) -> int | torch.Tensor:
        """Validate a timestep argument: an int, or an integer tensor of shape [] / [1] / [B].

        Returns a Python int for ints and for one-element CPU tensors (whose value is read anyway
        to range-check it: no device sync), else an int64 tensor on the sample's device. Values of
        device tensors are not checked (that would sync), nor anything under ``torch.compile``.
        Negative values (with ``allow_negative``) become −1.
        """
        T = self._config.num_train_timesteps
        if type(timestep) is int and 0 <= timestep < T:  # the common case, first
            return timestep
        if isinstance(timestep, (int, np.integer)) and not isinstance(timestep, (bool, np.bool_)):
            if allow_negative:
                if timestep >= T:
                    raise ValueError(f"{name} must be < num_train_timesteps={T} (negative: final); got {timestep}")
                return max(int(timestep), -1)
            return self._check_int_timestep(timestep, name)
        if not isinstance(timestep, torch.Tensor):
            raise TypeError(f"{name} must be an int or an integer tensor; got {timestep!r}")
        if timestep.is_floating_point() or timestep.is_complex() or timestep.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor; got dtype {timestep.dtype}")
        batch = sample.shape[0]
        if timestep.dim() > 1 or (timestep.dim() == 1 and timestep.shape[0] not in (1, batch)):
            raise ValueError(
                f"{name} must be a 0-d tensor or have shape [{batch}] (one per batch element); "
                f"got shape {tuple(timestep.shape)}"
            )
        if timestep.device.type == "cpu" and not _is_compiling():
            if timestep.numel() == 1:
                return self._timestep_arg(int(timestep.reshape(())), sample, name, allow_negative)
            if timestep.numel():
                low, high = int(timestep.min()), int(timestep.max())
                if high >= T or (low < 0 and not allow_negative):
                    bad = high if high >= T else low
                    raise ValueError(f"{name} must lie in [0, num_train_timesteps={T}); got {bad}")
        timestep = timestep.to(device=sample.device, dtype=torch.int64, non_blocking=True)
        return timestep.clamp(min=-1) if allow_negative else timestep

    def _eta_arg(self, eta: Any, sample: torch.Tensor) -> float | torch.Tensor:
        """Validate η: a float >= 0 or a floating tensor of shape [] / [1] / [B] (device tensors and
        tensors under ``torch.compile`` are not range-checked: that would sync)."""
        if type(eta) is float and 0.0 <= eta < math.inf:  # the common case, first
            return eta
        if isinstance(eta, torch.Tensor):
            if not eta.is_floating_point():
                raise TypeError(f"eta must be a float or a floating-point tensor; got dtype {eta.dtype}")
            batch = sample.shape[0]
            if eta.dim() > 1 or (eta.dim() == 1 and eta.shape[0] not in (1, batch)):
                raise ValueError(f"eta must be a float, a 0-d tensor or have shape [{batch}]; got shape {tuple(eta.shape)}")
            if eta.device.type == "cpu" and not _is_compiling() and bool((eta < 0).any() | ~eta.isfinite().all()):
                raise ValueError(f"eta must be finite and >= 0; got {eta}")
            return eta.to(sample.device, non_blocking=True)
        if isinstance(eta, (bool, np.bool_)) or not isinstance(eta, (int, float, np.integer, np.floating)):
            raise TypeError(f"eta must be a float; got {eta!r}")
        if not (math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be finite and >= 0; got {eta!r}")
        return float(eta)

    # Step tables. Everything is computed once in float64 on the CPU and cached in _device_tables:
    # ("alpha_bar", device) and ("alpha_bar", "host") depend on the config only and survive
    # set_timesteps; ("prev_of", device), ("coefficients", device, dtype, η) and ("host", η) depend
    # on the schedule and are dropped by set_timesteps. At most _TABLE_CACHE_SIZE coefficient
    # tables are kept (oldest evicted first).

    def _cache_table(self, key: tuple[Any, ...], table: Any) -> Any:
        coefficient_keys = [k for k in self._device_tables if k[0] in ("coefficients", "host")]
        if key[0] in ("coefficients", "host") and len(coefficient_keys) >= _TABLE_CACHE_SIZE:
            del self._device_tables[coefficient_keys[0]]
        self._device_tables[key] = table
        return table

    def _alpha_bar_on(self, device: torch.device) -> torch.Tensor:
        """The float64 ᾱ table with the final value at index 0, cached on ``device``."""
        key = ("alpha_bar", str(device))
        table = self._device_tables.get(key)
        if table is None:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            table = self._cache_table(key, _to_device(self._alpha_bar_ext.to(dtype), device))
        return table

    def _alpha_bar_host(self) -> list[float]:
        """ᾱ_t for t = 0..T−1 as Python floats (for host-side checks of int timesteps)."""
        table = self._device_tables.get(("alpha_bar", "host"))
        if table is None:
            table = self._cache_table(("alpha_bar", "host"), self._alpha_bar.tolist())
        return table

    def _coefficients_cpu(self, eta: float) -> torch.Tensor:
        """[T, K] float64 step coefficients for every timestep under the schedule's successor rule."""
        prev_of = torch.from_numpy(self._prev_of)
        alpha_bar_prev = self._alpha_bar_ext[prev_of + 1]
        return kernel.ddim_coefficients(self._alpha_bar, alpha_bar_prev, eta, self._config.prediction_type)

    def _coefficient_table(self, eta: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[T, K] step coefficients in ``dtype`` on ``device``, cached."""
        key = ("coefficients", str(device), dtype, eta)
        table = self._device_tables.get(key)
        if table is None:
            table = self._cache_table(key, _to_device(self._coefficients_cpu(eta).to(dtype), device))
        return table

    def _host_coefficients(self, eta: float) -> list[list[float]]:
        """The [T, K] float64 coefficient table as Python floats, for Python-int timesteps, cached."""
        key = ("host", eta)
        table = self._device_tables.get(key)
        if table is None:
            table = self._cache_table(key, self._coefficients_cpu(eta).tolist())
        return table

    def _prev_table_on(self, device: torch.device) -> torch.Tensor:
        key = ("prev_of", str(device))
        table = self._device_tables.get(key)
        if table is None:
            table = self._cache_table(key, _to_device(torch.from_numpy(self._prev_of), device))
        return table

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float | torch.Tensor = 0.0,
        use_clipped_model_output: bool = False,
        generator: Generator = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
        prev_timestep: int | torch.Tensor | None = None,
        out: torch.Tensor | None = None,
    ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """Step from ``timestep`` to the previous (less noisy) timestep: DDIM eq. 12.

        Every batch element is stepped exactly as if it were stepped alone, so one call can advance
        requests that are at different timesteps with different η (continuous batching).

        Args:
            model_output: The model's output m at x_t, [B, ...]: ε, x0 or v (``prediction_type``).
            timestep: t, a Python int, a 0-d integer tensor, or a [B] integer tensor (one timestep
                per batch element). Tensors may live on the sample's device; only CPU tensors are
                range-checked (checking a device tensor would sync), and nothing under torch.compile.
            sample: x_t, [B, ...], same shape as model_output.
            eta: η >= 0 (0 = DDIM, 1 = DDPM's σ), a float or a [B] tensor.
            use_clipped_model_output: Re-derive ε̂ from the clipped/thresholded x̂0.
            generator: A torch.Generator, or a list of one per batch element, for the η > 0 noise;
                draws exactly what diffusers' randn_tensor draws.
            variance_noise: The noise z itself, [B, ...] (e.g. CycleDiffusion); not with generator.
            return_dict: Return a :class:`DDIMSchedulerOutput` (True) or a tuple.
            prev_timestep: The timestep to land on, overriding the config's ``prev_timestep_rule``:
                an int or a [B] tensor; negative means past the last step (ᾱ = final_alpha_cumprod).
            out: A tensor of the sample's shape and dtype to write x_prev into; ``out=sample``
                steps in place (on the CPU one memory transfer fewer per element of the eight a
                step makes, ~15% on large latents). The default None returns a new tensor.

        Returns:
            (x_prev, x̂0) of the sample's dtype (computed in float32 for half precision, float64
            for float64), as DDIMSchedulerOutput or tuple; x_prev is ``out`` when given.

        Sync-free: with tensor timesteps on the sample's device, the step gathers its coefficients
        from tables cached on that device (built by the first step there) and never reads a value
        on the host, so it runs under ``torch.cuda.set_sync_debug_mode("error")``, in CUDA graphs
        and under ``torch.compile(fullgraph=True)``.

        Raises:
            ValueError: set_timesteps not called; shapes differ; timestep or prev_timestep out of
                range; eta < 0; both generator and variance_noise; a timestep with ᾱ = 0 under
                epsilon prediction; ``out`` of another shape or dtype than the sample.
            TypeError: Non-tensor or non-floating inputs, non-integer timesteps.
        """
        self._require_schedule()
        if not (
            isinstance(model_output, torch.Tensor)
            and isinstance(sample, torch.Tensor)
            and model_output.is_floating_point()
            and sample.is_floating_point()
        ):
            _check_floating("model_output", model_output)
            _check_floating("sample", sample)
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output and sample must have the same shape; got {tuple(model_output.shape)} "
                f"and {tuple(sample.shape)}"
            )
        if sample.dim() == 0:
            raise ValueError("sample must have a batch dimension; got a 0-d tensor")
        if generator is not None and variance_noise is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        config = self._config
        t = self._timestep_arg(timestep, sample, "timestep")
        eta = self._eta_arg(eta, sample)
        dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32  # the compute dtype
        if isinstance(t, int) and config.prediction_type == "epsilon" and self._alpha_bar_host()[t] == 0:
            raise ValueError(
                f"timestep {t} has alpha_bar = 0 (zero terminal SNR): x0 is undefined for prediction_type "
                "'epsilon'; use 'v_prediction'"
            )

        # The coefficients: Python floats from the host table (an int timestep, and CPU inputs or
        # inputs the kernel's fused path takes as they are), else gathered on the device, never
        # read on the host.
        coefficients: torch.Tensor | list[float]
        if prev_timestep is None and not isinstance(eta, torch.Tensor):
            if (
                isinstance(t, int)
                and (
                    (model_output.dtype == sample.dtype == dtype and sample.is_contiguous() and model_output.is_contiguous())
                    or sample.device.type == "cpu"  # the kernel converts other CPU inputs once
                )
                and not _is_compiling()
            ):
                coefficients = self._host_coefficients(eta)[t]
            else:
                coefficients = _gather(self._coefficient_table(eta, sample.device, dtype), t)
        else:
            device = sample.device
            alpha_bar = self._alpha_bar_on(device)
            if prev_timestep is None:
                prev = _gather(self._prev_table_on(device), t)
            else:
                prev = self._timestep_arg(prev_timestep, sample, "prev_timestep", allow_negative=True)
            a_t, a_prev = torch.broadcast_tensors(_gather(alpha_bar, t + 1), _gather(alpha_bar, prev + 1))
            coefficients = kernel.ddim_coefficients(a_t, a_prev, eta, config.prediction_type).to(dtype)

        noise = None
        stochastic = isinstance(eta, torch.Tensor) or eta > 0
        if variance_noise is not None:
            _check_floating("variance_noise", variance_noise)
            if variance_noise.shape != sample.shape:
                raise ValueError(
                    f"variance_noise must have the sample's shape {tuple(sample.shape)}; got {tuple(variance_noise.shape)}"
                )
            if stochastic:
                noise = variance_noise.to(sample.device)
        elif stochastic:
            noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)

        if config.thresholding:
            clip = "threshold"
        elif config.clip_sample:
            clip = "clip"
        else:
            clip = "none"
        prev_sample, pred_original_sample = kernel.ddim_step(
            model_output,
            sample,
            coefficients,
            config.prediction_type,
            clip=clip,
            clip_sample_range=config.clip_sample_range,
            dynamic_thresholding_ratio=config.dynamic_thresholding_ratio,
            sample_max_value=config.sample_max_value,
            use_clipped_model_output=use_clipped_model_output,
            noise=noise,
            out=out,
        )
        if self._first_timestep is None:
            self._first_timestep = timestep
        self._steps_taken += 1
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    # ------------------------------------------------------------------ forward process

    def _marginal_coefficients(
        self, timesteps: int | torch.Tensor, like: torch.Tensor, name: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(√ᾱ_t, √(1−ᾱ_t)) for per-sample timesteps, in float64 cast once, shaped to broadcast over ``like``."""
        _check_floating(name, like)
        t = self._timestep_arg(timesteps, like, "timesteps")
        if isinstance(t, int):
            t = torch.tensor(t, device=like.device)
        alpha_bar = self._alpha_bar_on(like.device)[t.reshape(-1) + 1]
        shape = (alpha_bar.shape[0],) + (1,) * (like.dim() - 1)
        dtype = _compute_dtype(like.dtype)
        return alpha_bar.sqrt().to(dtype).reshape(shape), (1 - alpha_bar).sqrt().to(dtype).reshape(shape)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor
    ) -> torch.Tensor:
        """Sample the forward marginal: x_t = √ᾱ_t · x0 + √(1−ᾱ_t) · ε.

        Args:
            original_samples: x0, [B, ...].
            noise: ε, same shape.
            timesteps: An int, a 0-d tensor, or a [B] integer tensor (one per sample).

        Returns:
            x_t in the samples' dtype, computed in at least float32. The scheduler is not modified.
        """
        if not isinstance(noise, torch.Tensor) or noise.shape != getattr(original_samples, "shape", None):
            raise ValueError(
                f"noise must be a tensor of the samples' shape {tuple(getattr(original_samples, 'shape', ()))}; "
                f"got {getattr(noise, 'shape', noise)!r}"
            )
        sqrt_a, sqrt_b = self._marginal_coefficients(timesteps, original_samples, "original_samples")
        return kernel._combine([(sqrt_a, original_samples), (sqrt_b, noise)]).to(original_samples.dtype)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor) -> torch.Tensor:
        """The v-prediction target: v = √ᾱ_t · ε − √(1−ᾱ_t) · x0 (``sample`` is x0 here, as in diffusers).

        Args:
            sample: x0, [B, ...].
            noise: ε, same shape.
            timesteps: An int, a 0-d tensor, or a [B] integer tensor.

        Returns:
            v in the sample's dtype, computed in at least float32. The scheduler is not modified.
        """
        if not isinstance(noise, torch.Tensor) or noise.shape != getattr(sample, "shape", None):
            raise ValueError(
                f"noise must be a tensor of the sample's shape {tuple(getattr(sample, 'shape', ()))}; "
                f"got {getattr(noise, 'shape', noise)!r}"
            )
        sqrt_a, sqrt_b = self._marginal_coefficients(timesteps, sample, "sample")
        return kernel._combine([(sqrt_a, noise), (-sqrt_b, sample)]).to(sample.dtype)

    def scale_model_input(self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None) -> torch.Tensor:
        """Return ``sample`` unchanged: DDIM needs no input scaling (present for pipeline compatibility)."""
        return sample

    # ------------------------------------------------------------------ k-diffusion interop

    @property
    def sigmas(self) -> torch.Tensor:
        """The schedule as k-diffusion noise levels: σ_t = √((1−ᾱ_t)/ᾱ_t) for each of :attr:`timesteps`,
        then the final σ: 0 with ``set_alpha_to_one`` (ᾱ = 1), else σ of ᾱ_0.

        float64 CPU tensor of length len(timesteps) + 1 (+∞ where ᾱ_t = 0, zero terminal SNR).
        DDIM with η = 0 is Euler's method on these sigmas in x/√ᾱ coordinates (REFERENCE.md §1),
        step for step wherever each step lands on the next visited timestep: always with
        ``prev_timestep_rule="schedule"`` or custom timesteps, and for ``leading`` under the "stride"
        rule too (with linspace, and with trailing when T is not a multiple of S, it lands elsewhere).
        """
        alpha_bar = self._alpha_bar_ext[self.timesteps.cpu() + 1]
        levels = torch.cat([alpha_bar, self._alpha_bar_ext[:1]])
        return ((1 - levels) / levels).sqrt()
