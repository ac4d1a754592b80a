"""What the DDIM schedulers step along: a config's noise levels, and the plan one ``set_timesteps`` chose.

:class:`NoiseLevels` holds ᾱ_t in float64 for every timestep (the only table of size T) and the level
after the last step. :class:`Schedule` holds the S timesteps visited, where each step lands, and answers
each step's coefficients through the route every scheduler shares (:class:`~ddim_sched.common.step_plan.StepPlan`),
computed on first use in float64 and kept in caches that belong to the schedule. A new ``set_timesteps``
builds a new schedule, so a step still running on the old one never writes into the new one's caches; the
caches are locked, so any number of threads may step one scheduler. Work and memory per schedule are O(S),
whatever T is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..common.arguments import timestep_values
from ..common.cache import LockedCache
from ..common.step_plan import Key, OwnSteps, StepPlan
from ..core.runtime import is_compiling
from ..core.update import StepCoefficients, step_coefficients, vp_level
from ..tables.spacing import step_target, step_targets


class NoiseLevels:
    """The variance-preserving noise levels of one config: a = √ᾱ_t, b = √(1 − ᾱ_t) for t in [0, T), and
    the level after the last step, ᾱ_final (index −1).

    Args:
        alpha_bar: ᾱ_0..ᾱ_{T−1}, a float64 CPU tensor.
        final_alpha_bar: ᾱ after the last step (1 with set_alpha_to_one, else ᾱ_0).
    """

    def __init__(self, alpha_bar: torch.Tensor, final_alpha_bar: float) -> None:
        self.alpha_bar = alpha_bar
        self.final_alpha_bar = float(final_alpha_bar)
        self._host = alpha_bar.numpy()
        # ᾱ decreases with t: from this timestep on ᾱ is 0 (zero terminal SNR) or so small (below float32's
        # max ** -2, e.g. ᾱ underflowing at huge T) that epsilon prediction's x̂0 weight 1/√ᾱ overflows float32.
        zeros = (alpha_bar < torch.finfo(torch.float32).max ** -2).nonzero()
        self.first_zero = int(zeros[0]) if len(zeros) else len(alpha_bar)
        self._tables = LockedCache(16)

    def __len__(self) -> int:
        return int(self.alpha_bar.shape[0])

    def alpha_bar_at(self, t: int) -> float:
        """ᾱ_t on the host (t = −1: the level after the last step)."""
        return self.final_alpha_bar if t < 0 else float(self._host[t])

    def level(self, t: int) -> tuple[float, float]:
        """(a, b) at timestep t on the host (t = −1: after the last step)."""
        return vp_level(self.alpha_bar_at(t))

    def table(self, device: torch.device) -> torch.Tensor:
        """ᾱ with the final level at index 0 (index t + 1 for timestep t) on ``device``, float64 (float32 on
        MPS, which has no float64), copied there once."""
        key = str(device)
        table = self._tables.get(key)
        if table is None:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            table = torch.cat([torch.tensor([self.final_alpha_bar], dtype=torch.float64), self.alpha_bar]).to(dtype)
            if device.type == "cuda" and not is_compiling():  # without blocking the host
                table = table.pin_memory().to(device, non_blocking=True)
            table = self._tables.put(key, table.to(device))
        return table

    def levels_of(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) gathered on t's device for integer timesteps t (−1 allowed), of t's shape."""
        alpha_bar = self.table(t.device).index_select(0, (t.reshape(-1) + 1).to(torch.int64)).reshape(t.shape)
        return vp_level(alpha_bar)

    def check_defined(self, t: int, prediction_type: str) -> None:
        """That a step from timestep t can read x̂0 from an epsilon prediction: refuse ᾱ_t = 0 (or so small
        that 1/√ᾱ_t overflows float32) when ``prediction_type`` is "epsilon".

        Raises:
            ValueError: Such a timestep, with what to use instead.
        """
        if prediction_type != "epsilon" or t < self.first_zero:
            return
        value = self.alpha_bar_at(int(t))
        what = (
            "alpha_bar is 0 there (zero terminal SNR)"
            if value == 0
            else f"alpha_bar is {value:.3g} there, so small that 1/sqrt(alpha_bar) overflows float32 "
            "(zero SNR in effect)"
        )
        raise ValueError(
            f"timestep {int(t)}: {what}, but prediction_type is 'epsilon': "
            "x0 = (x - sqrt(1 - alpha_bar) * eps) / sqrt(alpha_bar) is undefined. Use "
            "prediction_type='v_prediction' (as Lin et al. 2023 prescribe for zero SNR), or a spacing "
            "that does not visit the last timestep ('leading')."
        )


class Schedule(StepPlan):
    """The timesteps one ``set_timesteps`` chose, in the order they are visited, and where steps land.

    A step's key is (t_from, t_to): a sampling step from a visited t lands on :meth:`target`; an inversion
    step labelled t (``inverse=True``) starts from the level a sampling step from t lands on and goes up to t.

    Args:
        timesteps: The visited timesteps, int64, in visiting order (descending when sampling).
        levels: The config's :class:`NoiseLevels`.
        prediction_type: What the model predicts (the coefficients depend on it).
        stride: diffusers' successor rule t − stride (for its own spacings under
            ``prev_timestep_rule="stride"``), or None: a step lands on the next lower visited timestep.
        device: Where the public ``timesteps`` tensor goes.
        inverse: Whether a timestep names the level an inversion step lands on.
    """

    def __init__(
        self,
        timesteps: np.ndarray,
        levels: NoiseLevels,
        prediction_type: str,
        stride: int | None,
        device: str | torch.device | None = None,
        inverse: bool = False,
    ) -> None:
        visited = np.array(timesteps, dtype=np.int64)
        visited.setflags(write=False)
        with torch.inference_mode(False):
            tensor = torch.from_numpy(visited.copy()).to(device)
        super().__init__(tensor, visited, len(levels))
        self.timesteps = visited
        self.levels = levels
        self.prediction_type = prediction_type
        self.stride = stride
        self.inverse = inverse
        self._ascending = sorted(int(t) for t in visited)
        self._ascending_array = np.array(self._ascending, dtype=np.int64)
        self._lower = np.concatenate([[-1], self._ascending_array])  # the target of ascending[i] is lower[i]
        self._visit_position = np.argsort(visited, kind="stable")  # where ascending[i] is visited
        self._device_ascending = LockedCache(16)

    def reversed(self, device: str | torch.device | None = None) -> Schedule:
        """The same steps visited in the opposite order, as an inversion schedule (or back)."""
        return Schedule(self.timesteps[::-1], self.levels, self.prediction_type, self.stride, device, not self.inverse)

    # ------------------------------------------------------------------ where a step lands

    def target(self, t: int) -> int:
        """The timestep a sampling step from t lands on (−1: past the end)."""
        return step_target(t, self._ascending, self.stride)

    def targets_at(self, t: np.ndarray) -> np.ndarray:
        """:meth:`target` elementwise for a host array of timesteps."""
        if self.stride is not None:
            return np.maximum(t - self.stride, -1)
        return self._lower[np.searchsorted(self._ascending_array, t, side="left")]

    def targets_of(self, t: torch.Tensor) -> torch.Tensor:
        """:meth:`target` for an integer tensor of timesteps, on its device, without reading it."""
        key = str(t.device)
        ascending = self._device_ascending.get(key)
        if ascending is None:
            ascending = self._device_ascending.put(key, torch.tensor([-1] + self._ascending, device=t.device))
        return step_targets(t, ascending, self.stride)

    def sampling_key(self, t: int) -> Key:
        """The key of the sampling step from timestep t (to :meth:`target`)."""
        return (t, self.target(t))

    # ------------------------------------------------------------------ the plan's steps

    def _resolve(self, timestep: Any, landing: Any, sample: torch.Tensor) -> Any:
        T = len(self.levels)
        shape = tuple(sample.shape)
        t = timestep_values(timestep, name="timestep", num_train_timesteps=T, shape=shape)
        target = None
        if landing is not None:
            target = timestep_values(
                landing, name="prev_timestep", num_train_timesteps=T, shape=shape, allow_negative=True
            )
        if isinstance(t, torch.Tensor) or isinstance(target, torch.Tensor):
            t_tensor = _as_tensor(t, sample.device)
            if target is None:
                target = self.targets_of(t_tensor)
            t_from, t_to = torch.broadcast_tensors(t_tensor, _as_tensor(target, sample.device))
            return torch.stack([t_to, t_from] if self.inverse else [t_from, t_to], dim=-1)
        if isinstance(t, int) and not isinstance(target, np.ndarray):
            lands = self.target(t) if target is None else target
            if not self.inverse:
                self.levels.check_defined(t, self.prediction_type)
            return (lands, t) if self.inverse else (t, lands)
        t_array = np.asarray(t, dtype=np.int64)
        if not self.inverse and t_array.size:
            self.levels.check_defined(int(t_array.max()), self.prediction_type)
        if target is None and t_array.size:  # visited timesteps stepping by the plan's own rule: its own steps
            at = np.minimum(np.searchsorted(self._ascending_array, t_array), len(self._ascending_array) - 1)
            if np.array_equal(self._ascending_array[at], t_array):
                return OwnSteps(self._visit_position[at])
        lands_array = self.targets_at(t_array) if target is None else np.asarray(target, dtype=np.int64)
        t_array, lands_array = np.broadcast_arrays(t_array, lands_array)
        return np.stack([lands_array, t_array] if self.inverse else [t_array, lands_array], axis=-1)

    def _host_row(self, key: Key, eta: float) -> StepCoefficients:
        t_from, t_to = key
        a_t, b_t = self.levels.level(t_from)
        a_s, b_s = self.levels.level(t_to)
        return step_coefficients(a_t, b_t, a_s, b_s, eta, self.prediction_type)

    def _keys_rows(self, keys: torch.Tensor, eta: float | torch.Tensor) -> StepCoefficients:
        a_t, b_t = self.levels.levels_of(keys[..., 0])
        a_s, b_s = self.levels.levels_of(keys[..., 1])
        if isinstance(eta, torch.Tensor):
            eta = eta.to(device=a_t.device, dtype=a_t.dtype)
        return step_coefficients(a_t, b_t, a_s, b_s, eta, self.prediction_type)

    def _own_keys(self) -> list[Key]:
        if self.inverse:
            return [(self.target(t), t) for t in self.timesteps.tolist()]
        return [self.sampling_key(t) for t in self.timesteps.tolist()]


def _as_tensor(value: int | np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """An int64 tensor of integer timesteps on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.int64)
    return torch.as_tensor(np.asarray(value, dtype=np.int64), device=device)
