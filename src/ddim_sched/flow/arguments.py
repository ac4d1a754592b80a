"""The per-call arguments of :class:`~ddim_sched.FlowMatchDDIMScheduler`: custom levels and timesteps for
``set_timesteps``, μ, float timesteps and η for ``step``. Each check raises a TypeError or ValueError that
names the argument and the value received.

Per-element tensors (timesteps, η) broadcast over a sample from its leading dimensions: a tensor of shape
(d_0, ..., d_k) with each d_i equal to 1 or to the sample's size i, k < the sample's rank ([B] is one value
per sample; [B, 1, F, 1, 1] one per frame of video latents [B, C, F, H, W]).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..common.arguments import per_element_shape
from ..common.validation import as_int, as_real, check_real

__all__ = [
    "aligned",
    "check_aligned",
    "check_decreasing",
    "check_levels",
    "check_mu",
    "check_timestep_type",
    "float_array",
]


def float_array(name: str, value: Any) -> np.ndarray:
    """A 1-D array of finite floats, as float64."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must hold real numbers; got dtype {value.dtype}")
        value = value.detach().to("cpu", torch.float64).numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a 1-D sequence of real numbers; got {value!r}") from err
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence; got shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite; got {value!r}")
    return array


def check_decreasing(name: str, array: np.ndarray) -> None:
    rising = np.flatnonzero(np.diff(array) >= 0)
    if rising.size:
        i = int(rising[0])
        raise ValueError(
            f"{name} must be strictly decreasing; got {name}[{i}] = {float(array[i])!r} <= "
            f"{name}[{i + 1}] = {float(array[i + 1])!r}"
        )


def check_levels(name: str, levels: np.ndarray) -> np.ndarray:
    """Noise levels: strictly decreasing, each in (0, 1] (the scheduler appends the final 0)."""
    outside = np.flatnonzero(~((levels > 0) & (levels <= 1)))
    if outside.size:
        i = int(outside[0])
        raise ValueError(
            f"{name} must lie in (0, 1] (the final sigma = 0 is appended by the scheduler); "
            f"got {name}[{i}] = {float(levels[i])!r}"
        )
    check_decreasing(name, levels)
    return levels


def check_mu(mu: Any, time_shift_type: str) -> float:
    if mu is None:
        raise ValueError(
            "mu must be given when use_dynamic_shifting=True (pipelines compute it from the image size); got None"
        )
    value = check_real("mu", mu)
    if time_shift_type == "linear" and value <= 0:
        raise ValueError(f"mu must be > 0 for the linear time shift; got {mu!r}")
    return value


def check_aligned(name: str, value: torch.Tensor, sample: torch.Tensor) -> None:
    """That a per-element tensor broadcasts over the sample from its leading dimensions
    (:func:`ddim_sched.common.arguments.per_element_shape`, the one rule for both schedulers)."""
    per_element_shape(name, tuple(value.shape), tuple(sample.shape))


def aligned(name: str, value: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """A per-element tensor (checked) shaped to broadcast over the sample from its leading dimensions."""
    check_aligned(name, value, sample)
    return value.reshape(tuple(value.shape) + (1,) * (sample.dim() - value.dim()))


def check_timestep_type(name: str, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor (an element of scheduler.timesteps, not an index); "
                f"got dtype {value.dtype}"
            )
    elif isinstance(value, (bool, np.bool_)) or as_int(value) is not None:
        raise TypeError(
            f"{name} must be one of scheduler.timesteps (a float), not an integer index (from enumerate?); "
            f"got {value!r}"
        )
    elif as_real(value) is None:
        raise TypeError(
            f"{name} must be a float or a floating-point tensor; got {value!r} of type {type(value).__name__}"
        )
