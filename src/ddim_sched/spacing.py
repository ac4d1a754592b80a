"""Timestep spacing: pure functions from (T, S) to the S timesteps a sampler visits, noisiest first.

Each strategy takes ``(num_train_timesteps, num_inference_steps, *, steps_offset, alpha_bar)`` and
returns a 1-D int64 numpy array. ``steps_offset`` only shifts ``leading``; ``alpha_bar`` is there
for strategies defined on the noise levels. Callers validate the result with :func:`check_timesteps`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Spacing = Callable[..., np.ndarray]


def leading(num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar=None) -> np.ndarray:
    """Multiples of T // S from 0, reversed, plus steps_offset (T=1000, S=10: 900, 800, …, 0)."""
    stride = num_train_timesteps // num_inference_steps
    return (np.arange(num_inference_steps, dtype=np.int64) * stride)[::-1] + steps_offset


def trailing(num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar=None) -> np.ndarray:
    """round(T − k·T/S) − 1 for k = 0..S−1 (T=1000, S=10: 999, 899, …, 99).

    Computed with the same float arithmetic as diffusers, so the values are identical; but exactly S
    of them: diffusers' ``arange`` sometimes yields one more, ending at timestep −1 (e.g. S=61).
    """
    stride = num_train_timesteps / num_inference_steps
    values = np.round(np.arange(num_train_timesteps, 0, -stride))[:num_inference_steps]
    return values.astype(np.int64) - 1


def linspace(num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar=None) -> np.ndarray:
    """round(linspace(0, T−1, S)), reversed (T=1000, S=10: 999, 888, …, 111, 0)."""
    values = np.linspace(0, num_train_timesteps - 1, num_inference_steps).round()[::-1]
    return values.astype(np.int64)


# name -> strategy; the config's timestep_spacing options.
SPACINGS: dict[str, Spacing] = {
    "leading": leading,
    "trailing": trailing,
    "linspace": linspace,
}


def check_timesteps(timesteps: object, num_train_timesteps: int, name: str = "timesteps") -> np.ndarray:
    """Validate a custom or computed schedule and return it as a 1-D int64 numpy array.

    Raises:
        TypeError: Not a sequence of integers.
        ValueError: Empty, not 1-D, out of [0, T), or not strictly decreasing (names the first offence).
    """
    if isinstance(timesteps, torch.Tensor):
        if timesteps.is_floating_point() or timesteps.is_complex():
            raise TypeError(f"{name} must hold integers; got a tensor of dtype {timesteps.dtype}")
        array = timesteps.detach().cpu().numpy()
    else:
        array = np.asarray(timesteps)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        if np.issubdtype(array.dtype, np.floating) and array.size and np.all(array == np.round(array)):
            array = array.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integers; got {timesteps!r}")
    array = array.astype(np.int64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence; got shape {tuple(array.shape)}")
    out_of_range = (array < 0) | (array >= num_train_timesteps)
    if out_of_range.any():
        i = int(np.flatnonzero(out_of_range)[0])
        raise ValueError(
            f"{name} must lie in [0, num_train_timesteps={num_train_timesteps}); got {name}[{i}] = {int(array[i])}"
        )
    steps = np.diff(array)
    if (steps == 0).any():
        i = int(np.flatnonzero(steps == 0)[0])
        raise ValueError(f"{name} must not repeat a timestep; got {int(array[i])} at positions {i} and {i + 1}")
    if (steps > 0).any():
        i = int(np.flatnonzero(steps > 0)[0])
        raise ValueError(
            f"{name} must be strictly decreasing; got {int(array[i])} then {int(array[i + 1])} at position {i}"
        )
    return array
