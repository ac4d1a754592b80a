"""What the schedulers step along: a config's noise levels, and the schedule one ``set_timesteps`` chose.

:class:`NoiseLevels` holds ᾱ_t in float64 for every timestep (the only table of size T) and the level
after the last step. :class:`Schedule` holds the S timesteps visited, where each step lands, and the
step coefficients of the steps taken, computed on first use in float64 and kept in a small cache that
belongs to the schedule. A new ``set_timesteps`` builds a new schedule, so a step that is still running
on the old one can never put its coefficients into the new one's cache; the caches are locked, so any
number of threads may step one scheduler. Work and memory per schedule are O(S), whatever T is.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch

from ..core._fused import device_row
from ..core.runtime import is_compiling
from ..core.update import StepCoefficients, step_coefficients, vp_level
from ..tables.spacing import step_target, step_targets

# Coefficient rows kept per schedule (host floats, one per (from, to, η) step taken).
ROW_CACHE_SIZE = 4096
# Patterns of per-element timesteps whose coefficients a schedule keeps (see arguments.pattern_key).
PATTERN_CACHE_SIZE = 64


def element_position(tensor: torch.Tensor, version: int, t: torch.Tensor) -> int | None:
    """The index of ``t`` in the 1-D ``tensor`` when ``t`` is one of its elements (as ``for t in tensor``
    yields: a 0-d view of the same storage), found from its place in memory without reading the device;
    None for any other tensor, or once ``tensor`` was modified in place (its version is no longer
    ``version``)."""
    if t.dim() != 0 or t.dtype != tensor.dtype or t.device != tensor.device or t._version != version:
        return None
    if tensor.numel() == 0 or t.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr():
        return None
    stride = int(tensor.stride(0))
    offset = int(t.storage_offset() - tensor.storage_offset())
    index, remainder = divmod(offset, stride) if stride else (0, offset)
    return index if not remainder and 0 <= index < tensor.shape[0] else None


def _ordinary(value: Any) -> Any:
    """``value`` (a tensor, or a tuple or NamedTuple of them and of other values) with every tensor made
    under ``torch.inference_mode()`` replaced by an ordinary copy: a cache filled during inference may
    later serve a step that autograd records, and inference tensors cannot be saved for backward."""
    if isinstance(value, torch.Tensor):
        if not value.is_inference():
            return value
        with torch.inference_mode(False):
            return value.clone()
    if isinstance(value, tuple):
        items = [_ordinary(item) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


def row_table(rows: list[StepCoefficients], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[fields, N]: N host rows of float64 coefficients, cast once to ``dtype`` on ``device``."""
    return torch.tensor(rows, dtype=torch.float64).to(dtype).T.contiguous().to(device)


def gather_rows(table: torch.Tensor, index: np.ndarray) -> StepCoefficients:
    """The rows of a :func:`row_table` at ``index`` (an integer array of any shape), as coefficients of
    that shape."""
    columns = table[:, torch.from_numpy(index.reshape(-1)).to(table.device)]
    return StepCoefficients(*columns.reshape((table.shape[0],) + index.shape).unbind(0))


class _LockedCache:
    """A small bounded mapping that threads may share: reads take no lock (a dict lookup is atomic),
    writes and evictions (oldest first) do. While torch.compile traces it is bypassed (the traced code
    recomputes what it would hold, and dynamo cannot trace a lock). What is stored under
    ``torch.inference_mode()`` is stored as ordinary tensors (:func:`_ordinary`)."""

    def __init__(self, size: int) -> None:
        # (an OrderedDict: evicting the oldest entry of a plain dict again and again costs a scan past the
        # deleted slots each time)
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        if is_compiling():
            return None
        return self._items.get(key)

    def __getstate__(self) -> dict[str, Any]:
        # copy.deepcopy and pickle: a lock cannot be copied; the copy gets its own (and an empty cache).
        return {"_size": self._size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["_size"])  # type: ignore[misc]

    def put(self, key: Hashable, value: Any) -> Any:
        if is_compiling():
            return value
        if torch.is_inference_mode_enabled():
            value = _ordinary(value)
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


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
        self._tables = _LockedCache(16)

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


class Schedule:
    """The timesteps one ``set_timesteps`` chose, in the order they are visited, and where steps land.

    Args:
        timesteps: The visited timesteps, int64, in visiting order (descending when sampling).
        levels: The config's :class:`NoiseLevels`.
        prediction_type: What the model predicts (the coefficients depend on it).
        stride: diffusers' successor rule t − stride (for its own spacings under
            ``prev_timestep_rule="stride"``), or None: a step lands on the next lower visited timestep.
        device: Where the public ``timesteps`` tensor goes.
    """

    def __init__(
        self,
        timesteps: np.ndarray,
        levels: NoiseLevels,
        prediction_type: str,
        stride: int | None,
        device: str | torch.device | None = None,
    ) -> None:
        self.timesteps = np.array(timesteps, dtype=np.int64)
        self.timesteps.setflags(write=False)
        self.levels = levels
        self.prediction_type = prediction_type
        self.stride = stride
        self._ascending = sorted(int(t) for t in self.timesteps)
        self._ascending_array = np.array(self._ascending, dtype=np.int64)
        self.tensor = torch.from_numpy(self.timesteps.copy()).to(device)
        self._tensor_version = self.tensor._version
        self._rows = _LockedCache(ROW_CACHE_SIZE)
        self._device_ascending = _LockedCache(16)
        # Coefficients of per-element timestep patterns, keyed by arguments.pattern_key.
        self.patterns = _LockedCache(PATTERN_CACHE_SIZE)

    def __len__(self) -> int:
        return len(self.timesteps)

    def reversed(self, device: str | torch.device | None = None) -> Schedule:
        """The same steps visited in the opposite order (an inversion schedule)."""
        return Schedule(self.timesteps[::-1], self.levels, self.prediction_type, self.stride, device)

    # ------------------------------------------------------------------ where a step lands

    def target(self, t: int) -> int:
        """The timestep a sampling step from t lands on (−1: past the end)."""
        return step_target(t, self._ascending, self.stride)

    def targets_of(self, t: torch.Tensor) -> torch.Tensor:
        """:meth:`target` for an integer tensor of timesteps, on its device, without reading it."""
        key = str(t.device)
        ascending = self._device_ascending.get(key)
        if ascending is None:
            ascending = self._device_ascending.put(key, torch.tensor([-1] + self._ascending, device=t.device))
        return step_targets(t, ascending, self.stride)

    def host_timestep(self, t: torch.Tensor) -> int | None:
        """The value of a 0-d tensor that is an element of this schedule's ``tensor`` (as ``for t in
        scheduler.timesteps`` yields), found from its place in memory without reading the device; None
        for any other tensor, or once the timesteps tensor was modified in place."""
        index = element_position(self.tensor, self._tensor_version, t)
        return None if index is None else int(self.timesteps[index])

    # ------------------------------------------------------------------ coefficients

    def sampling_row(self, t: int, eta: float) -> StepCoefficients:
        """The coefficients of the sampling step from timestep t (to :meth:`target`) with η, cached."""
        key = (t, eta)
        row = self._rows.get(key)
        if row is None:
            row = self._rows.put(key, self.row(t, self.target(t), eta))
        return row

    def row(self, t_from: int, t_to: int, eta: float) -> StepCoefficients:
        """The float64 coefficients (host floats) of one step from timestep t_from to t_to with η, cached."""
        key = (t_from, t_to, eta)
        row = self._rows.get(key)
        if row is None:
            a_t, b_t = self.levels.level(t_from)
            a_s, b_s = self.levels.level(t_to)
            row = self._rows.put(key, step_coefficients(a_t, b_t, a_s, b_s, eta, self.prediction_type))
        return row

    def device_row(
        self, t_from: int, t_to: int, eta: float, dtype: torch.dtype, device: torch.device
    ) -> StepCoefficients:
        """:meth:`row` as tensors [1] of ``dtype`` on ``device`` (:func:`~ddim_sched.core._fused.device_row`),
        copied there once and cached: later steps from the same timestep copy nothing, so a loop
        warmed up once can be captured in a CUDA graph."""
        key = ("device", t_from, t_to, eta, dtype, str(device))
        row = self._rows.get(key)
        if row is None:
            row = self._rows.put(key, device_row(self.row(t_from, t_to, eta), dtype, device))
        return row

    def _visited_table(self, eta: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """[fields, S]: the sampling rows of every visited timestep (ascending) with η, in ``dtype`` on
        ``device``, built once per (η, dtype, device) and cached."""
        key = ("table", eta, dtype, str(device))
        table = self._rows.get(key)
        if table is None:
            rows = [self.sampling_row(t, eta) for t in self._ascending]
            table = self._rows.put(key, row_table(rows, dtype, device))
        return table

    def rows_of(self, t_from: torch.Tensor, t_to: torch.Tensor, eta: float | torch.Tensor) -> StepCoefficients:
        """Float64 coefficients, elementwise for integer tensors of timesteps (and η) of broadcastable shapes,
        computed on their device."""
        t_from, t_to = torch.broadcast_tensors(t_from, t_to)
        a_t, b_t = self.levels.levels_of(t_from)
        a_s, b_s = self.levels.levels_of(t_to)
        if isinstance(eta, torch.Tensor):
            eta = eta.to(device=a_t.device, dtype=a_t.dtype)
        return step_coefficients(a_t, b_t, a_s, b_s, eta, self.prediction_type)

    def rows_at(
        self, t_from: np.ndarray, t_to: np.ndarray | None, eta: float, dtype: torch.dtype, device: torch.device
    ) -> StepCoefficients:
        """Coefficients elementwise for host arrays of timesteps of broadcastable shapes (t_to None: where
        the sampling step from each t_from lands), from the cached float64 rows of their distinct values,
        cast once to ``dtype`` on ``device``."""
        t_from = np.asarray(t_from, dtype=np.int64)
        if t_to is None:
            position = np.minimum(np.searchsorted(self._ascending_array, t_from), len(self._ascending) - 1)
            if np.array_equal(self._ascending_array[position], t_from):  # all visited: one gather
                return gather_rows(self._visited_table(eta, dtype, device), position)
            distinct, inverse = np.unique(t_from, return_inverse=True)
            rows = [self.sampling_row(int(t), eta) for t in distinct]
            shape = t_from.shape
        else:
            t_from, t_to = np.broadcast_arrays(t_from, np.asarray(t_to, dtype=np.int64))
            pairs = np.stack([t_from.reshape(-1), t_to.reshape(-1)], axis=1)
            distinct, inverse = np.unique(pairs, axis=0, return_inverse=True)
            rows = [self.row(int(a), int(b), eta) for a, b in distinct]
            shape = t_from.shape
        return gather_rows(row_table(rows, dtype, device), inverse.reshape(shape))
