r"""The one route from a step's timestep argument to its coefficients, shared by every scheduler.

A *plan* is what one ``set_timesteps`` chose: the timesteps to visit (``tensor``, public) and, for each step,
the level it starts from and the level it lands on. :meth:`StepPlan.coefficients` answers the question each
``step`` asks — the coefficients of this timestep argument with this η, for this sample's compute dtype and
device — for every kind of argument:

=================================  ========================================================================
timestep argument                  route
=================================  ========================================================================
one host value (a Python or numpy  resolved to the plan's key for that step (validated once); its float64
number, a CPU 0-d tensor, an       row is cached per (value, η): host floats where the engine takes them,
element of ``timesteps``)          else the row as [1] tensors on the sample's device, copied there once
per-element host values (a CPU     the distinct steps' rows, gathered from a table cast once; the result is
tensor of one value per sample,    kept per pattern of values (a video sampler repeats one every call)
frame or token)
a tensor on another device         never read (no host sync): the steps' levels gathered on the device
=================================  ========================================================================

A timestep is taken by value: a CPU tensor is read; a tensor on another device that is an element of the
plan's own ``tensor`` is recognised by its place in memory while that tensor's version counter says it is
unchanged (so no value is read from the device), and otherwise takes the device route like any tensor.

A plan says what one of its steps is through four methods: :meth:`StepPlan._resolve` (an argument to host
keys, or to keys on the device), :meth:`StepPlan._host_row` (one key's float64 coefficients),
:meth:`StepPlan._keys_rows` (coefficients of keys given as a tensor), and :meth:`StepPlan._own_keys` (the
keys of the plan's own steps, in visiting order). Keys are tuples of ints: (t_from, t_to) for DDIM,
(index,) for the flow scheduler.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.runtime import compute_dtype, is_compiling
from ..core.step import device_row, in_compute_dtype, takes_host_weights
from ..core.update import StepCoefficients
from .arguments import pattern_key
from .cache import PATTERN_CACHE_SIZE, ROW_CACHE_SIZE, LockedCache, gather_rows, row_table

__all__ = ["Key", "OwnSteps", "StepPlan", "element_position"]

Key = tuple[int, ...]


class OwnSteps:
    """Per-element steps that are all the plan's own: their positions in visiting order (an int64 array of
    the per-element shape), which gather straight from the plan's table."""

    __slots__ = ("positions",)

    def __init__(self, positions: np.ndarray) -> None:
        self.positions = positions


# What _resolve returns: one host key, host keys [..., k] (int64), the plan's own steps, or keys on the
# sample's device [..., k].
Resolved = Key | np.ndarray | OwnSteps | torch.Tensor


def element_position(tensor: torch.Tensor, version: int | None, t: torch.Tensor) -> int | None:
    """The index of ``t`` in the 1-D ``tensor`` when ``t`` is one of its elements (as ``for t in tensor``
    yields: a 0-d view of the same storage), found from its place in memory without reading the device;
    None for any other tensor, for inference tensors (they keep no version counter), or once ``tensor``
    was modified in place (its version is no longer ``version``)."""
    if version is None or t.dim() != 0 or t.dtype != tensor.dtype or t.device != tensor.device:
        return None
    if t.is_inference() or t._version != version:
        return None
    if tensor.numel() == 0 or t.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr():
        return None
    stride = int(tensor.stride(0))
    offset = int(t.storage_offset() - tensor.storage_offset())
    index, remainder = divmod(offset, stride) if stride else (0, offset)
    return index if not remainder and 0 <= index < tensor.shape[0] else None


class StepPlan:
    """The coefficients of a plan's steps for any timestep argument, cached per plan.

    Args:
        tensor: The public timesteps, 1-D, in visiting order, on the device ``set_timesteps`` was given.
        host: Their values on the host, the same order (a read-only numpy array).
        key_range: Every int in a key lies in [−1, key_range): keys are then coded as one int64 each.
    """

    def __init__(self, tensor: torch.Tensor, host: np.ndarray, key_range: int) -> None:
        self.tensor = tensor
        self.host = host
        self._radix = key_range + 1
        self._version: int | None = None if tensor.is_inference() else tensor._version
        self._rows = LockedCache(ROW_CACHE_SIZE)
        # Coefficients of per-element timestep patterns, keyed by arguments.pattern_key.
        self.patterns = LockedCache(PATTERN_CACHE_SIZE)
        self._own_codes: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.host)

    # ------------------------------------------------------------------ what a plan says about its steps

    def _resolve(self, timestep: Any, landing: Any, sample: torch.Tensor) -> Resolved:
        """The key(s) of the step(s) a timestep argument names (validated), with ``landing`` where the caller
        overrides where steps land: a host key, host keys [..., k], :class:`OwnSteps` (per-element steps that
        are all the plan's own), or keys on the sample's device."""
        raise NotImplementedError

    def _host_row(self, key: Key, eta: float) -> StepCoefficients:
        """The float64 coefficients (host floats) of the step ``key`` with η."""
        raise NotImplementedError

    def _keys_rows(self, keys: torch.Tensor, eta: float | torch.Tensor) -> StepCoefficients:
        """Float64 coefficients, elementwise, of keys [..., k] given as a tensor (on the device they will be
        used on), of keys.shape[:-1] broadcast with η's shape."""
        raise NotImplementedError

    def _own_keys(self) -> list[Key]:
        """The keys of the plan's own steps, in visiting order."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the route

    def host_value(self, timestep: torch.Tensor) -> int | float | None:
        """The value of a 0-d tensor timestep of the plan's dtype when it is known without a device read:
        read from a CPU tensor, or found by place in memory for an element of :attr:`tensor`; else None."""
        if timestep.dim() != 0 or timestep.dtype != self.tensor.dtype or is_compiling():
            return None
        if timestep.device.type == "cpu":
            return timestep.item()
        index = element_position(self.tensor, self._version, timestep)
        return None if index is None else self.host[index].item()

    def coefficients(
        self,
        timestep: Any,
        eta: float | torch.Tensor,
        sample: torch.Tensor,
        model_output: torch.Tensor,
        landing: Any = None,
    ) -> StepCoefficients:
        """The coefficients of the step(s) a timestep argument names, with η (a float, or a tensor that
        broadcasts over the sample), ready for :func:`ddim_sched.core.step.apply_step`: host floats, or
        tensors of the sample's compute dtype on its device shaped to broadcast over it.

        Raises:
            ValueError, TypeError: As the plan's :meth:`_resolve` raises them (bad or unknown timesteps).
        """
        if type(timestep) is torch.Tensor:
            value = self.host_value(timestep)
            timestep = timestep if value is None else value
        host = takes_host_weights(model_output, sample)
        if landing is None and type(eta) is float and type(timestep) in (int, float):  # one host value: the common case
            memo = (timestep, eta) if host else (timestep, eta, sample.dtype, sample.device)
            row = self._rows.get(memo)
            if row is None:
                key = self._resolve(timestep, None, sample)
                if not isinstance(key, tuple):
                    return in_compute_dtype(self._route(key, eta, sample, host), sample)
                row = self._rows.put(memo, self._route(key, eta, sample, host))
            return row
        pattern = pattern_key(timestep, eta, sample, model_output) if landing is None else None
        cached = None if pattern is None else self.patterns.get(pattern)
        if cached is not None:
            return cached
        resolved = self._resolve(timestep, landing, sample)
        weights = in_compute_dtype(self._route(resolved, eta, sample, host), sample)
        return weights if pattern is None else self.patterns.put(pattern, weights)

    def _route(self, resolved: Resolved, eta: float | torch.Tensor, sample: torch.Tensor, host: bool) -> Any:
        """The coefficients of resolved keys, by the kind of keys and of η."""
        if isinstance(resolved, OwnSteps):
            if isinstance(eta, torch.Tensor):
                keys = torch.as_tensor(np.asarray(self._own_keys(), dtype=np.int64)[resolved.positions])
                return self._keys_rows(keys.to(sample.device), eta.to(sample.device))
            return gather_rows(self._own_table(eta, compute_dtype(sample.dtype), sample.device), resolved.positions)
        if isinstance(eta, torch.Tensor) or isinstance(resolved, torch.Tensor):
            keys = resolved if isinstance(resolved, torch.Tensor) else torch.as_tensor(np.asarray(resolved, np.int64))
            if isinstance(eta, torch.Tensor):
                eta = eta.to(sample.device)
            return self._keys_rows(keys.to(sample.device), eta)
        if isinstance(resolved, tuple):
            if host:
                return self.row(resolved, eta)
            return self.device_row(resolved, eta, compute_dtype(sample.dtype), sample.device)
        return self.rows_at(resolved, eta, compute_dtype(sample.dtype), sample.device)

    # ------------------------------------------------------------------ cached rows

    def row(self, key: Key, eta: float) -> StepCoefficients:
        """:meth:`_host_row`, cached."""
        memo = (key, eta)
        row = self._rows.get(memo)
        if row is None:
            row = self._rows.put(memo, self._host_row(key, eta))
        return row

    def device_row(self, key: Key, eta: float, dtype: torch.dtype, device: torch.device) -> StepCoefficients:
        """:meth:`row` as tensors [1] of ``dtype`` on ``device`` (:func:`~ddim_sched.core.step.device_row`),
        copied there once and cached: later steps copy nothing, so a loop warmed up once can be captured in
        a CUDA graph."""
        memo = ("device", key, eta, dtype, str(device))
        row = self._rows.get(memo)
        if row is None:
            row = self._rows.put(memo, device_row(self.row(key, eta), dtype, device))
        return row

    def rows_at(self, keys: np.ndarray, eta: float, dtype: torch.dtype, device: torch.device) -> StepCoefficients:
        """Coefficients of host keys [..., k] elementwise, as tensors of keys.shape[:-1] in ``dtype`` on
        ``device``: gathered from the plan's own table when every key is one of its steps, else from the
        rows of the distinct keys, cast once."""
        codes = self._encode(keys)
        own_codes, positions = self._own_lookup()
        at = np.minimum(np.searchsorted(own_codes, codes), len(own_codes) - 1)
        if np.array_equal(own_codes[at], codes):
            return gather_rows(self._own_table(eta, dtype, device), positions[at])
        distinct, inverse = np.unique(codes, return_inverse=True)
        rows = [self.row(self._decode(int(code), keys.shape[-1]), eta) for code in distinct.tolist()]
        return gather_rows(row_table(rows, dtype, device), inverse.reshape(codes.shape))

    def _encode(self, keys: np.ndarray) -> np.ndarray:
        """One int64 per key [..., k]: its ints + 1 as digits in base ``key_range`` + 1."""
        codes = np.zeros(keys.shape[:-1], dtype=np.int64)
        for j in range(keys.shape[-1]):
            codes = codes * self._radix + (keys[..., j] + 1)
        return codes

    def _decode(self, code: int, width: int) -> Key:
        digits = []
        for _ in range(width):
            code, digit = divmod(code, self._radix)
            digits.append(digit - 1)
        return tuple(reversed(digits))

    def _own_lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """The codes of the plan's own steps, sorted, and each one's position in visiting order."""
        if self._own_codes is None:
            codes = self._encode(np.asarray(self._own_keys(), dtype=np.int64).reshape(len(self), -1))
            order = np.argsort(codes, kind="stable")
            self._own_codes = (codes[order], order)
        return self._own_codes

    def _own_table(self, eta: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """[fields, S]: the rows of the plan's own steps with η in ``dtype`` on ``device``, built once per
        (η, dtype, device) and cached."""
        memo = ("table", eta, dtype, str(device))
        table = self._rows.get(memo)
        if table is None:
            table = self._rows.put(memo, row_table([self.row(key, eta) for key in self._own_keys()], dtype, device))
        return table
