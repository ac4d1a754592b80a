"""Argument checks shared by every public entry point: each raises a TypeError or ValueError that names
the argument and the value as the caller gave it, before any work is done.

One rule for numbers everywhere: ``bool`` is never an int or a real number, and integers may be Python
or numpy integers (of any width, unsigned included) or 0-d numpy arrays of an integer dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "as_int",
    "as_real",
    "check_choice",
    "check_flag",
    "check_floating_tensor",
    "check_int",
    "check_real",
]


def as_int(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer (not a bool), else None. 0-d integer arrays count."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value)


def as_real(value: Any) -> float | None:
    """``value`` as a Python float if it is a real number (not a bool), else None. 0-d arrays count."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an int in [minimum, maximum] (either bound optional)."""
    number = as_int(value)
    if number is None:
        raise TypeError(f"{name} must be an int; got {value!r} of type {type(value).__name__}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {number}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {number}")
    return number


def check_real(name: str, value: Any, minimum: float | None = None, *, strict: bool = False) -> float:
    """Return ``value`` as a finite float, optionally >= minimum (> minimum with ``strict``)."""
    number = as_real(value)
    if number is None:
        raise TypeError(f"{name} must be a real number; got {value!r} of type {type(value).__name__}")
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite; got {value!r}")
    if minimum is not None and (number <= minimum if strict else number < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}; got {value!r}")
    return number


def check_flag(name: str, value: Any) -> bool:
    """Return ``value`` as a bool, rejecting anything that is not a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool; got {value!r} of type {type(value).__name__}")
    return bool(value)


def check_choice(name: str, value: Any, accepted: Mapping[str, Any] | Iterable[str]) -> str:
    """Return ``value`` if it is one of the accepted names (a registry's keys); the error lists them."""
    names = list(accepted)
    if not isinstance(value, str) or value not in names:
        listed = ", ".join(repr(k) for k in names)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}")
    return value


def check_floating_tensor(name: str, value: Any) -> torch.Tensor:
    """Return ``value`` if it is a floating-point tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {value.dtype}")
    return value
