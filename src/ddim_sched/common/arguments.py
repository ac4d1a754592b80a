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

from ..core.noise import Generator, randn
from ..core.runtime import is_compiling
from .validation import as_int, as_real, check_floating_tensor

__all__ = [
    "broadcast_pair",
    "check_pair",
    "eta_values",
    "pattern_key",
    "per_element_shape",
    "step_noise",
    "timestep_values",
]

# Host tensors of per-element timesteps up to this many elements key a schedule's cache of coefficients.
PATTERN_MAX_NUMEL = 4096
# The dtypes such a tensor is read in for its key (one .numpy(), no conversion).
_KEY_DTYPES = frozenset(
    {torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.float64, torch.float32, torch.float16}
)


def pattern_key(timestep: Any, eta: Any, sample: torch.Tensor, model_output: torch.Tensor) -> tuple[Any, ...] | None:
    """The key of a step's coefficients for a CPU tensor of per-element timesteps: its values (as bytes),
    dtype and shape, η, and the sample's shape, dtype and device and the model output's dtype, which
    are all the coefficients depend on. A video sampler repeats one pattern of levels call after call
    (FIFO-Diffusion's queue holds its frames at fixed levels), so a schedule caches the coefficients of
    each pattern it has validated and computed under this key. None where that does not apply: device
    tensors (never read), large tensors, η tensors, and while torch.compile traces."""
    if (
        type(timestep) is not torch.Tensor
        or type(eta) is not float
        or timestep.device.type != "cpu"
        or timestep.dtype not in _KEY_DTYPES
        or timestep.numel() > PATTERN_MAX_NUMEL
        or timestep.requires_grad
        or is_compiling()
    ):
        return None
    values = timestep.numpy().tobytes()
    return (values, timestep.dtype, timestep.shape, eta, sample.shape, sample.dtype, sample.device, model_output.dtype)


def per_element_shape(name: str, shape: tuple[int, ...], sample_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a per-element argument broadcasts with over the sample: its own shape padded with trailing
    ones to the sample's rank ([B] → [B, 1, ..., 1]; [B, 1, F, 1, 1] as it is for video latents [B, C, F, H, W]).

    Raises:
        ValueError: More dimensions than the sample, or a shape that does not broadcast to it.
    """
    ndim = len(sample_shape)
    padded = shape + (1,) * (ndim - len(shape))
    if len(shape) > ndim or any(n not in (1, m) for n, m in zip(padded, sample_shape, strict=True)):
        raise ValueError(
            f"{name} must be a scalar or a tensor that broadcasts over the sample's leading dimensions (shape "
            f"{list(sample_shape)}: e.g. [], [{sample_shape[0]}] or [{sample_shape[0]}, 1, ...]); "
            f"got shape {list(shape)}"
        )
    return padded


def _check_range(name: str, values: np.ndarray, num_train_timesteps: int, allow_negative: bool) -> np.ndarray:
    """The values, each in [0, T) (negative values become −1 with ``allow_negative``), reported as given."""
    bad = (values >= num_train_timesteps) | ((values < 0) if not allow_negative else False)
    if np.any(bad):
        value = values[np.nonzero(bad)][0]
        bounds = (
            f"< num_train_timesteps={num_train_timesteps}"
            if allow_negative
            else (f"lie in [0, num_train_timesteps={num_train_timesteps})")
        )
        raise ValueError(f"{name} must {bounds}; got {int(value)}")
    return np.maximum(values.astype(np.int64), -1)


def timestep_values(
    value: Any, *, name: str, num_train_timesteps: int, shape: tuple[int, ...], allow_negative: bool = False
) -> int | np.ndarray | torch.Tensor:
    """Normalise a timestep argument.

    Args:
        value: A Python or numpy integer, a 0-d numpy integer array, or an integer array/tensor (any integer
            dtype, any device) that broadcasts over the sample's leading dimensions (see
            :func:`per_element_shape`): [], [1], [B], or e.g. [B, 1, F, 1, 1] for per-frame timesteps.
        name: The argument's name, for messages.
        num_train_timesteps: T; host values must lie in [0, T).
        shape: The sample's shape.
        allow_negative: Accept negative values (meaning "past the last step"), returned as −1.

    Returns:
        An int (one value on the host), an int64 numpy array of the padded shape (per-element values on the
        host), or an int64 tensor of the padded shape on the value's device (values not read).

    Raises:
        TypeError: Not an integer, or a bool / floating / complex tensor.
        ValueError: A shape that does not broadcast, or a host value out of range (reported as given).
    """
    if type(value) is int and 0 <= value < num_train_timesteps:  # the common case, first
        return value
    number = as_int(value)
    if number is not None:
        return int(_check_range(name, np.array([number], dtype=object), num_train_timesteps, allow_negative)[0])
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.integer):
            raise TypeError(f"{name} must hold integers; got a numpy array of dtype {value.dtype}")
        padded = per_element_shape(name, tuple(value.shape), shape)
        values = _check_range(name, value.astype(object), num_train_timesteps, allow_negative).reshape(padded)
        return int(values.reshape(-1)[0]) if values.size == 1 else values
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be an int or an integer tensor; got {value!r} of type {type(value).__name__}")
    if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
        raise TypeError(f"{name} must be an integer tensor; got dtype {value.dtype}")
    padded = per_element_shape(name, tuple(value.shape), shape)
    if value.device.type == "cpu" and not is_compiling():
        if getattr(torch, "uint64", None) == value.dtype:
            host = np.array(value.tolist(), dtype=object).reshape(padded)  # exact above 2**63 too
        else:
            host = value.detach().reshape(padded).to(torch.int64).numpy()
        values = _check_range(name, host, num_train_timesteps, allow_negative)
        return int(values.reshape(-1)[0]) if values.size == 1 else values
    value = value.to(torch.int64).reshape(padded)
    return value.clamp(min=-1) if allow_negative else value


def eta_values(value: Any, shape: tuple[int, ...], device: torch.device) -> float | torch.Tensor:
    """Normalise η: a real number >= 0, or a floating tensor that broadcasts over the sample's leading
    dimensions (:func:`per_element_shape`).

    Host values (numbers, CPU tensors of one element) become a float; other tensors are checked on the
    host when they are CPU tensors, reshaped to the padded shape and moved to ``device`` without a sync.

    Raises:
        TypeError: Not a real number or a floating tensor.
        ValueError: Negative or non-finite (host values), or a shape that does not broadcast.
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
    padded = per_element_shape("eta", tuple(value.shape), shape)
    if value.device.type == "cpu" and not is_compiling() and not value.requires_grad:
        values = value.reshape(-1).tolist()
        bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
        if bad:
            raise ValueError(f"eta must be finite and >= 0; got {bad[0]!r}")
        if len(values) == 1:
            return float(values[0])
    return value.reshape(padded).to(device, non_blocking=True)


def check_pair(first: str, a: Any, second: str, b: Any) -> None:
    """Both floating tensors of one shape with a batch dimension."""
    if type(a) is torch.Tensor and type(b) is torch.Tensor and a.is_floating_point() and b.is_floating_point():
        if a.shape == b.shape and a.dim():  # the common case, first
            return
    check_floating_tensor(first, a)
    check_floating_tensor(second, b)
    if a.shape != b.shape:
        raise ValueError(f"{first} and {second} must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() == 0:
        raise ValueError(f"{first} must have a batch dimension; got a 0-d tensor")


def broadcast_pair(first: str, a: Any, second: str, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Both floating tensors with a batch dimension, of one shape or shapes that broadcast to one (as the
    forward process in diffusers takes them: one noise for a batch, say), expanded to it without copying."""
    if type(a) is torch.Tensor and type(b) is torch.Tensor and a.shape == b.shape and a.dim():
        check_pair(first, a, second, b)
        return a, b
    check_floating_tensor(first, a)
    check_floating_tensor(second, b)
    if a.dim() == 0 or b.dim() == 0:
        shapes = f"{tuple(a.shape)} and {tuple(b.shape)}"
        raise ValueError(f"{first} and {second} must have a batch dimension; got shapes {shapes}")
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(
            f"{first} and {second} must have one shape or shapes that broadcast to one; got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        ) from None
    expanded_a, expanded_b = torch.broadcast_tensors(a, b)
    return expanded_a, expanded_b


def step_noise(
    stochastic: bool,
    sample: torch.Tensor,
    generator: Generator,
    variance_noise: Any,
    draw_dtype: torch.dtype | None = None,
) -> torch.Tensor | None:
    """z for a step: the given ``variance_noise`` (checked), or drawn as diffusers' ``randn_tensor`` draws it,
    in ``draw_dtype`` (default: the sample's dtype), on the sample's device; None for a deterministic step
    (a given ``variance_noise`` is still checked then).

    Raises:
        ValueError: Both generator and variance_noise; variance_noise of another shape than the sample.
        TypeError: variance_noise is not a floating tensor.
    """
    if generator is not None and variance_noise is not None:
        raise ValueError("pass either generator or variance_noise, not both")
    if variance_noise is not None:
        check_floating_tensor("variance_noise", variance_noise)
        if variance_noise.shape != sample.shape:
            raise ValueError(
                f"variance_noise must have the sample's shape {tuple(sample.shape)}; got {tuple(variance_noise.shape)}"
            )
        return variance_noise.to(sample.device) if stochastic else None
    if not stochastic:
        return None
    return randn(sample.shape, generator, sample.device, draw_dtype or sample.dtype)
