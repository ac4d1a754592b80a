r"""The schedule a flow-matching scheduler steps along.

:class:`FlowSchedule` holds the timesteps one ``set_timesteps`` chose (float32, as pipelines pass them to
the model), the noise level of each in float64, the cached step coefficients (:mod:`ddim_sched.flow.update`
computes them), and per-device tables for tensor timesteps, which it looks up on the device without
reading them. The step's functions of :mod:`ddim_sched.flow.update` can be imported from here too.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..common.cache import LockedCache
from ..common.step_plan import Key, OwnSteps, StepPlan
from ..common.validation import check_floating_tensor, check_int
from ..core.runtime import compute_dtype, is_compiling
from ..core.step import in_compute_dtype
from ..core.update import StepCoefficients
from ..tables.flow_sigmas import flow_sigmas
from .arguments import (
    aligned,
    check_aligned,
    check_decreasing,
    check_levels,
    check_mu,
    check_timestep_type,
    float_array,
)
from .config import FlowMatchDDIMConfig
from .update import flow_step_coefficients

__all__ = ["FlowSchedule", "plan_schedule"]

logger = logging.getLogger("ddim_sched")

# A host timestep matches an element of the schedule within this fraction of num_train_timesteps.
TIMESTEP_RTOL = 1e-5


def _as_float64(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64)).clone()


class FlowSchedule(StepPlan):
    """Timesteps and noise levels of a flow-matching schedule; a step's key is (index,): from the level of
    ``timesteps[index]`` to the next level.

    Args:
        timesteps: The public timesteps, float32 [N], strictly monotone, in visiting order.
        levels: The noise level σ of each, float64 [N], then (for a sampling schedule) the final level:
            [N + 1]. Always the real noise (1 at pure noise), also when the model's time is inverted.
        public_sigmas: diffusers' ``sigmas`` attribute, float32.
        renoise, inverted: How steps read the model and add noise (see :func:`flow_step_coefficients`).
        num_train_timesteps: T (a host timestep matches an element within ``TIMESTEP_RTOL``·T).
        device: Where the public tensors go.
    """

    def __init__(
        self,
        timesteps: torch.Tensor,
        levels: np.ndarray,
        public_sigmas: torch.Tensor,
        renoise: bool,
        inverted: bool,
        num_train_timesteps: int,
        device: str | torch.device | None = None,
    ) -> None:
        with torch.inference_mode(False):
            tensor, self.public_sigmas = timesteps.to(device).clone(), public_sigmas.to(device).clone()
            self._host_tensor = timesteps.to("cpu", torch.float64).clone()
        host = self._host_tensor.numpy()
        host.setflags(write=False)
        super().__init__(tensor, host, len(host) + 1)
        self.levels = _as_float64(levels)
        self.renoise, self.inverted, self.num_train_timesteps = renoise, inverted, num_train_timesteps
        self.sampling = len(levels) == len(host) + 1
        self._positions = {float(t): i for i, t in enumerate(host)}
        self._tables = LockedCache(16)

    # ------------------------------------------------------------------ finding a timestep

    def index_of(self, value: float, name: str = "timestep") -> int:
        """The index of a host timestep value: an element of the timesteps, up to float32 rounding.

        Raises:
            ValueError: The value is not one of the timesteps.
        """
        index = self._positions.get(value)
        if index is not None:
            return index
        if len(self.host):
            nearest = int(np.abs(self.host - value).argmin())
            if abs(self.host[nearest] - value) <= TIMESTEP_RTOL * self.num_train_timesteps:
                return nearest
            hint = f"; the nearest is timesteps[{nearest}] = {float(self.host[nearest])!r}"
        else:
            hint = ""
        raise ValueError(f"{name} must be one of scheduler.timesteps; got {value!r}{hint}")

    def host_index(self, timestep: Any, sample: torch.Tensor) -> int | None:
        """The index of a timestep known on the host without a device read (checked: it must be one of the
        timesteps); None for a tensor to look up on its device."""
        check_timestep_type("timestep", timestep)
        if isinstance(timestep, torch.Tensor):
            value = self.host_value(timestep)
            if value is None:
                if timestep.dim():
                    check_aligned("timestep", timestep, sample)
                if timestep.device.type != "cpu" or is_compiling() or timestep.numel() != 1:
                    return None
                value = timestep.reshape(()).item()
            timestep = value
        return self.index_of(float(timestep))

    # ------------------------------------------------------------------ the plan's steps

    def _resolve(self, timestep: Any, landing: Any, sample: torch.Tensor) -> Any:
        if not isinstance(timestep, torch.Tensor) or timestep.numel() == 1 and timestep.device.type == "cpu":
            index = self.host_index(timestep, sample)
            if index is not None:
                return (index,)
        padded = aligned("timestep", timestep, sample)
        if timestep.device.type == "cpu" and not is_compiling():
            indices = [self.index_of(v) for v in timestep.reshape(-1).tolist()]
            return OwnSteps(np.array(indices, dtype=np.int64).reshape(padded.shape))
        return self.indices_of(padded.to(sample.device)).unsqueeze(-1)

    def _host_row(self, key: Key, eta: float) -> StepCoefficients:
        (index,) = key
        row = flow_step_coefficients(
            self.level(index), self.level(index + 1), eta, renoise=self.renoise, inverted=self.inverted
        )
        return StepCoefficients(*(float(c) for c in row))

    def _keys_rows(self, keys: torch.Tensor, eta: float | torch.Tensor) -> StepCoefficients:
        _, levels = self.tables(keys.device)
        index = keys[..., 0]
        sigma_t, sigma_s = levels[index], levels[(index + 1).clamp(max=len(levels) - 1)]
        if isinstance(eta, torch.Tensor):
            eta = eta.to(sigma_t.device, sigma_t.dtype)
        return flow_step_coefficients(sigma_t, sigma_s, eta, renoise=self.renoise, inverted=self.inverted)

    def _own_keys(self) -> list[Key]:
        return [(i,) for i in range(len(self))]

    def coefficients(
        self,
        timestep: Any,
        eta: float | torch.Tensor,
        sample: torch.Tensor,
        model_output: torch.Tensor,
        landing: Any = None,
    ) -> StepCoefficients:
        """:meth:`StepPlan.coefficients`, where ``landing`` is diffusers' ``per_token_timesteps``: σ_t = value/T
        per element, landing on the largest schedule level below it, the model output read as x0 − ε."""
        if landing is None:
            return super().coefficients(timestep, eta, sample, model_output)
        check_floating_tensor("per_token_timesteps", landing)
        if self.inverted:
            raise ValueError("per_token_timesteps cannot be used with invert_sigmas=True")
        sigma_t = aligned("per_token_timesteps", landing, sample).to(sample.device, torch.float64)
        sigma_t = sigma_t / self.num_train_timesteps
        if isinstance(eta, torch.Tensor):
            eta = aligned("eta", eta, sample).to(sigma_t.device, sigma_t.dtype)
        row = flow_step_coefficients(sigma_t, self.levels_below(sigma_t), eta, renoise=self.renoise, inverted=True)
        return in_compute_dtype(row, sample)

    # ------------------------------------------------------------------ levels

    def level(self, index: int) -> float:
        """σ of the timestep at ``index`` (index len(self) on a sampling schedule: the final level)."""
        return float(self.levels[index])

    def tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps, levels) as float64 tensors on ``device`` (float32 on MPS), copied there once."""
        key = str(device)
        tables = self._tables.get(key)
        if tables is None:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            pair = (self._host_tensor.to(dtype), self.levels.to(dtype))
            if device.type == "cuda" and not is_compiling():
                pair = (
                    pair[0].pin_memory().to(device, non_blocking=True),
                    pair[1].pin_memory().to(device, non_blocking=True),
                )
            tables = self._tables.put(key, tuple(v.to(device) for v in pair))
        return tables

    def indices_of(self, t: torch.Tensor) -> torch.Tensor:
        """For each element of a floating tensor of timesteps, the index of the nearest timestep, on its
        device and without reading it (int64, t's shape)."""
        timesteps, _ = self.tables(t.device)
        distance = (timesteps - t.reshape(-1, 1).to(timesteps.dtype)).abs()
        return distance.argmin(dim=1).reshape(t.shape)

    def sigma_at(self, timestep: Any, like: torch.Tensor) -> float | torch.Tensor:
        """σ at a timestep: a float for a host timestep, else a tensor of the compute dtype shaped to
        broadcast over ``like``."""
        index = self.host_index(timestep, like)
        if index is not None:
            return self.level(index)
        t = aligned("timestep", timestep, like).to(like.device)
        _, levels = self.tables(like.device)
        return levels[self.indices_of(t)].to(compute_dtype(like.dtype))

    def levels_below(self, sigma: torch.Tensor) -> torch.Tensor:
        """For each level σ, the largest schedule level below σ − 1e-6 (0 if none): where diffusers'
        ``per_token_timesteps`` steps land."""
        _, levels = self.tables(sigma.device)
        below = levels < sigma.unsqueeze(-1).to(levels.dtype) - 1e-6
        return torch.where(below, levels, torch.zeros_like(levels)).amax(dim=-1)


def _count(num_inference_steps: Any, sigmas: np.ndarray | None, timesteps: np.ndarray | None) -> int:
    """S: num_inference_steps, or the length of the custom levels / timesteps (which must agree)."""
    if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
        raise ValueError(f"sigmas and timesteps must have the same length; got {len(sigmas)} and {len(timesteps)}")
    given = sigmas if sigmas is not None else timesteps
    if num_inference_steps is None:
        if given is None:
            raise ValueError("set_timesteps needs num_inference_steps, sigmas or timesteps; got none of them")
        return len(given)
    count = check_int("num_inference_steps", num_inference_steps, 1)
    if given is not None and len(given) != count:
        raise ValueError(f"num_inference_steps={count} disagrees with the {len(given)} custom sigmas/timesteps given")
    return count


def plan_schedule(
    config: FlowMatchDDIMConfig,
    shift: float,
    sigma_range: tuple[float, float],
    num_inference_steps: Any = None,
    sigmas: Any = None,
    mu: Any = None,
    timesteps: Any = None,
    device: str | torch.device | None = None,
) -> FlowSchedule:
    """The schedule ``set_timesteps`` chooses, validated: S base levels (``sigmas``, or ``timesteps``/T, or
    evenly spaced over ``sigma_range`` = (σ_max, σ_min), diffusers' range; with ``config.shift_once`` and a
    static shift, over the unshifted 1 … 1/T), through :func:`~ddim_sched.tables.flow_sigmas.flow_sigmas`.

    Raises:
        ValueError, TypeError: As :meth:`FlowMatchDDIMScheduler.set_timesteps` documents.
    """
    T = config.num_train_timesteps
    shift_mu = check_mu(mu, config.time_shift_type) if config.use_dynamic_shifting else None
    custom_sigmas = None if sigmas is None else check_levels("sigmas", float_array("sigmas", sigmas))
    custom_t = None if timesteps is None else float_array("timesteps", timesteps).astype(np.float32)
    if custom_t is not None:
        check_decreasing("timesteps", custom_t)
    count = _count(num_inference_steps, custom_sigmas, custom_t)
    if custom_sigmas is not None:
        base = custom_sigmas
    elif custom_t is not None:
        base = check_levels("timesteps / num_train_timesteps", custom_t.astype(np.float64) / T)
    elif config.shift_once and not config.use_dynamic_shifting:
        # The training table's timesteps T … 1 before its shift, which the static shift below then applies once.
        base = np.linspace(T, 1, count) / T
    else:
        # diffusers' range: its float32 training table (statically shifted already, so the default schedule is
        # shifted twice), whose top level can round above 1.
        base = np.minimum(np.linspace(sigma_range[0] * T, sigma_range[1] * T, count) / T, 1.0)
    if config.shift_terminal and base[-1] == 1:  # stretching divides by 1 − (the last level)
        raise ValueError(
            f"shift_terminal={config.shift_terminal!r} cannot stretch a schedule whose only level is 1 "
            f"(num_inference_steps={count}): use more steps"
        )
    shifted = flow_sigmas(
        base, shift=shift, mu=shift_mu, time_shift_type=config.time_shift_type,
        shift_terminal=config.shift_terminal, conversion=config.sigma_conversion,
    )  # fmt: skip
    levels = check_levels("the shifted sigmas", shifted)
    if custom_t is not None and custom_sigmas is None and not np.array_equal(levels, base):
        logger.warning("timesteps were given without sigmas: the model gets them as given, while the noise levels "
                       "derived from them go through the config's shift")  # fmt: skip
    public = torch.from_numpy(levels).to(torch.float32)
    if config.invert_sigmas:  # the model's time runs the other way: it sees 1 − σ
        public_t, public_sigmas = (1.0 - public) * T, torch.cat([1.0 - public, torch.ones(1)])
    else:
        public_t = torch.from_numpy(custom_t) if custom_t is not None else public * T
        public_sigmas = torch.cat([public, torch.zeros(1)])
    if (public_t.diff() == 0).any():
        raise ValueError(f"the {count} timesteps are not distinct in float32: use fewer steps")
    return FlowSchedule(
        public_t, np.append(levels, 0.0), public_sigmas, config.stochastic_sampling, config.invert_sigmas, T, device
    )
