"""Bounded caches that threads may share, and tables of step coefficients gathered on a device.

A schedule (DDIM's or the flow scheduler's) keeps what its steps computed in :class:`LockedCache` instances
that belong to it: a new ``set_timesteps`` makes a new schedule, so a step still running on the old one
never writes into the new one's caches.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch

from ..core.runtime import is_compiling
from ..core.update import StepCoefficients

__all__ = ["PATTERN_CACHE_SIZE", "ROW_CACHE_SIZE", "LockedCache", "gather_rows", "ordinary", "row_table"]

# Coefficient rows kept per schedule (host floats, one per (from, to, η) step taken).
ROW_CACHE_SIZE = 4096
# Patterns of per-element timesteps whose coefficients a schedule keeps (see arguments.pattern_key).
PATTERN_CACHE_SIZE = 64


def ordinary(value: Any) -> Any:
    """``value`` (a tensor, or a tuple or NamedTuple of them and of other values) with every tensor made
    under ``torch.inference_mode()`` replaced by an ordinary copy: a cache filled during inference may
    later serve a step that autograd records, and inference tensors cannot be saved for backward."""
    if isinstance(value, torch.Tensor):
        if not value.is_inference():
            return value
        with torch.inference_mode(False):
            return value.clone()
    if isinstance(value, tuple):
        items = [ordinary(item) for item in value]
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


class LockedCache:
    """A small bounded mapping that threads may share: reads take no lock (a dict lookup is atomic),
    writes and evictions (oldest first) do. While torch.compile traces it is bypassed (the traced code
    recomputes what it would hold, and dynamo cannot trace a lock). What is stored under
    ``torch.inference_mode()`` is stored as ordinary tensors (:func:`ordinary`)."""

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
            value = ordinary(value)
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value
