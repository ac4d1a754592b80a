"""The per-call arguments of a step: timesteps of every type diffusers accepts, and η.

Values that live on the host (Python and numpy integers, 0-d numpy arrays, CPU tensors) are read and
range-checked: that costs no device sync. Tensors on other devices are never read (a read would sync);
they stay tensors, and a schedule gathers their coefficients on the device. Nothing is read while
``torch.compile`` traces.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .validation import as_int, as_real

__all__ = ["eta_values", "is_compiling", "timestep_values"]

_compiler = getattr(torch, "compiler", None)
_is_compiling = getattr(_compiler, "is_compiling", lambda: False)


def is_compiling() -> bool:
    """True while torch.compile traces (host reads and host caches are skipped then)."""
    return bool(_is_compiling())


def _check_shape(name: str, shape: tuple[int, ...], batch: int) -> None:
    if len(shape) > 1 or (len(shape) == 1 and shape[0] not in (1, batch)):
        raise ValueError(
            f"{name} must be a scalar, a 0-d tensor or have shape [{batch}] (one per batch element); got shape {shape}"
        )


def _check_range(name: str, values: list[int], num_train_timesteps: int, allow_negative: bool) -> list[int]:
    """The values, each in [0, T) (negative values become −1 with ``allow_negative``)."""
    for value in values:
        if value >= num_train_timesteps or (value < 0 and not allow_negative):
            bounds = f"< num_train_timesteps={num_train_timesteps}" if allow_negative else (
                f"lie in [0, num_train_timesteps={num_train_timesteps})"
            )
            raise ValueError(f"{name} must {bounds}; got {value}")
    return [max(v, -1) for v in values]


def timestep_values(
    value: Any, *, name: str, num_train_timesteps: int, batch: int, allow_negative: bool = False
) -> int | list[int] | torch.Tensor:
    """Normalise a timestep argument.

    Args:
        value: A Python or numpy integer, a 0-d or 1-D numpy integer array, or an integer tensor of shape
            [], [1] or [batch], on any device.
        name: The argument's name, for messages.
        num_train_timesteps: T; host values must lie in [0, T).
        batch: The sample's batch size.
        allow_negative: Accept negative values (meaning "past the last step"), returned as −1.

    Returns:
        An int (one value on the host), a list of ``batch`` ints (per-sample values on the host), or an
        int64 tensor of shape [] or [batch] on the value's device (values not read).

    Raises:
        TypeError: Not an integer, or a bool / floating / complex tensor.
        ValueError: A shape that does not match the batch, or a host value out of range (reported as given).
    """
    if type(value) is int and 0 <= value < num_train_timesteps:  # the common case, first
        return value
    number = as_int(value)
    if number is not None:
        return _check_range(name, [number], num_train_timesteps, allow_negative)[0]
    if isinstance(value, np.ndarray) and (np.issubdtype(value.dtype, np.integer) and not value.dtype == np.bool_):
        value = torch.from_numpy(value.astype(np.int64)) if value.max(initial=0) < 2**63 else value.tolist()
        if isinstance(value, list):
            raise ValueError(f"{name} must lie in [0, num_train_timesteps={num_train_timesteps}); got {max(value)}")
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be an int or an integer tensor; got {value!r} of type {type(value).__name__}")
    if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
        raise TypeError(f"{name} must be an integer tensor; got dtype {value.dtype}")
    _check_shape(name, tuple(value.shape), batch)
    if value.device.type == "cpu" and not is_compiling():
        values = _check_range(name, [int(v) for v in value.reshape(-1).tolist()], num_train_timesteps, allow_negative)
        return values[0] if len(values) == 1 else values
    value = value.to(torch.int64)
    return value.clamp(min=-1) if allow_negative else value


def eta_values(value: Any, batch: int, device: torch.device) -> float | torch.Tensor:
    """Normalise η: a real number >= 0, or a floating tensor of shape [], [1] or [batch].

    Host values (numbers, CPU tensors of one element) become a float; other tensors are checked on the
    host when they are CPU tensors and moved to ``device`` without a sync.

    Raises:
        TypeError: Not a real number or a floating tensor.
        ValueError: Negative or non-finite (host values), or a shape that does not match the batch.
    """
    if type(value) is float and 0.0 <= value < math.inf:  # the common case, first
        return value
    number = as_real(value)
    if number is not None:
        if not (math.isfinite(number) and number >= 0):
            raise ValueError(f"eta must be finite and >= 0; got {value!r}")
        return number
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"eta must be a float or a floating-point tensor; got {value!r} of type {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"eta must be a float or a floating-point tensor; got dtype {value.dtype}")
    _check_shape("eta", tuple(value.shape), batch)
    if value.device.type == "cpu" and not is_compiling() and not value.requires_grad:
        values = value.reshape(-1).tolist()
        bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
        if bad:
            raise ValueError(f"eta must be finite and >= 0; got {bad[0]!r}")
        if len(values) == 1:
            return float(values[0])
    return value.to(device, non_blocking=True)
