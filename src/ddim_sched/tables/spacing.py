"""Timestep spacing: pure functions from (T, S) to the S timesteps a sampler visits, noisiest first.

Each strategy takes ``(num_train_timesteps, num_inference_steps, *, steps_offset, alpha_bar)`` and
returns a 1-D int64 numpy array. ``steps_offset`` shifts ``leading`` and ``quad`` (the sub-sequences
that start at 0); ``alpha_bar`` (the float64 ᾱ table) is used by ``karras``, which is defined on the
noise levels. Callers validate the result with :func:`check_timesteps`.

``quad`` and ``karras`` place timesteps unevenly, so a step should land on the next timestep they
visit: use them with ``prev_timestep_rule="schedule"`` (the "stride" rule t − T // S is diffusers'
and is right for ``leading`` only).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .sigma_grids import karras_sigmas

Spacing = Callable[..., np.ndarray]


def leading(
    num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar: torch.Tensor | None = None
) -> np.ndarray:
    """Multiples of T // S from 0, reversed, plus steps_offset (T=1000, S=10: 900, 800, …, 0)."""
    stride = num_train_timesteps // num_inference_steps
    return (np.arange(num_inference_steps, dtype=np.int64) * stride)[::-1] + steps_offset


def trailing(
    num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar: torch.Tensor | None = None
) -> np.ndarray:
    """round(T − k·T/S) − 1 for k = 0..S−1 (T=1000, S=10: 999, 899, …, 99).

    Computed with the same float arithmetic as diffusers, so the values are identical; but exactly S
    of them: diffusers' ``arange`` sometimes yields one more, ending at timestep −1 (e.g. S=61).
    """
    stride = num_train_timesteps / num_inference_steps
    values = np.round(np.arange(num_train_timesteps, 0, -stride))[:num_inference_steps]
    return values.astype(np.int64) - 1


def linspace(
    num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar: torch.Tensor | None = None
) -> np.ndarray:
    """round(linspace(0, T−1, S)), reversed (T=1000, S=10: 999, 888, …, 111, 0)."""
    values = np.linspace(0, num_train_timesteps - 1, num_inference_steps).round()[::-1]
    return values.astype(np.int64)


def quad(
    num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar: torch.Tensor | None = None
) -> np.ndarray:
    """The DDIM paper's quadratic sub-sequence: int(linspace(0, √(0.8·T), S)²), reversed, plus steps_offset.

    T=1000, S=10: 800, 632, 483, 355, 246, 158, 88, 39, 9, 0 (ermongroup/ddim's ``skip_type="quad"``;
    steps_offset=1 gives CompVis' ``ddim_discretize="quad"``). Where the rule yields a timestep twice
    (large S: T=1000, S=50 has 49 distinct values), the duplicate is dropped, since a repeated
    timestep would be a wasted model call; the schedule then has fewer than S steps, and the
    scheduler's ``num_inference_steps`` reports how many.
    """
    values = np.linspace(0, np.sqrt(num_train_timesteps * 0.8), num_inference_steps) ** 2
    distinct = np.unique(values.astype(np.int64))  # int() truncates toward zero, as the paper's code does
    return distinct[::-1] + steps_offset


def _sigmas_from_alpha_bar(alpha_bar: object) -> np.ndarray:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t) in float64 (∞ where ᾱ_t = 0)."""
    a = np.asarray(alpha_bar.detach().cpu() if hasattr(alpha_bar, "detach") else alpha_bar, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - a) / a)


def _nearest_distinct(ideal: np.ndarray, num_train_timesteps: int) -> np.ndarray:
    """Round ascending real positions to strictly increasing integers in [0, T), each as near as the order allows."""
    t = np.clip(np.rint(ideal), 0, num_train_timesteps - 1).astype(np.int64)
    for j in range(1, len(t)):  # push collisions up ...
        t[j] = max(t[j], t[j - 1] + 1)
    t[-1] = min(t[-1], num_train_timesteps - 1)
    for j in range(len(t) - 2, -1, -1):  # ... and back down below the top
        t[j] = min(t[j], t[j + 1] - 1)
    return t


def karras(
    num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar: torch.Tensor | None = None
) -> np.ndarray:
    """Karras et al. ρ = 7 noise levels between the schedule's σ_min = σ_0 and σ_max = σ_{T−1},
    each mapped to the nearest discrete timestep in log σ, with σ_t = √((1 − ᾱ_t)/ᾱ_t).

    "Nearest" is nearest in log σ, which is what rounding diffusers' interpolated Karras timesteps
    (``EulerDiscreteScheduler(use_karras_sigmas=True)``) gives. Where several levels round to the same
    timestep (large S; the low-noise end is dense in σ), they are moved to the nearest free timesteps
    so that all S are distinct. Timesteps with ᾱ_t = 0 (σ = ∞, zero terminal SNR) are never visited:
    σ_max is then the largest finite σ. steps_offset is ignored.

    Raises:
        ValueError: alpha_bar is missing, or has fewer than S timesteps with ᾱ > 0.
    """
    if alpha_bar is None:
        raise ValueError("the 'karras' timestep spacing needs alpha_bar (the noise levels); got alpha_bar=None")
    log_sigmas = np.log(_sigmas_from_alpha_bar(alpha_bar))
    finite = int(np.isfinite(log_sigmas).sum())  # ᾱ decreases, so the finite levels come first
    if finite < num_inference_steps:
        raise ValueError(
            f"the 'karras' timestep spacing needs num_inference_steps <= the {finite} timesteps with alpha_bar > 0; "
            f"got num_inference_steps={num_inference_steps}"
        )
    log_sigmas = log_sigmas[:finite]
    targets = np.log(karras_sigmas(float(np.exp(log_sigmas[0])), float(np.exp(log_sigmas[-1])), num_inference_steps))
    # Fractional timestep of each target, linear in log σ between neighbouring integer timesteps.
    ideal = np.interp(targets[::-1], log_sigmas, np.arange(finite, dtype=np.float64))
    return _nearest_distinct(ideal, finite)[::-1].copy()


# name -> strategy; the config's timestep_spacing options (config validation lists these keys).
SPACINGS: dict[str, Spacing] = {
    "leading": leading,
    "trailing": trailing,
    "linspace": linspace,
    "quad": quad,
    "karras": karras,
}


# The spacings diffusers offers. Only for these does the config's default prev_timestep_rule,
# "stride" (t − T // S, diffusers' rule), apply; every other schedule steps along itself.
STRIDED_SPACINGS: tuple[str, ...] = ("leading", "trailing", "linspace")


def successor_stride(
    prev_timestep_rule: str, timestep_spacing: str | None, num_train_timesteps: int, num_steps: int
) -> int | None:
    """diffusers' stride T // S where the "stride" rule applies (its own spacings), else None.

    ``timestep_spacing`` is None for a custom schedule, which always steps along itself.
    """
    if prev_timestep_rule == "stride" and timestep_spacing in STRIDED_SPACINGS:
        return num_train_timesteps // num_steps
    return None


def check_timesteps(
    timesteps: object, num_train_timesteps: int, name: str = "timesteps", *, increasing: bool = False
) -> np.ndarray:
    """Validate a custom or computed schedule and return it as a 1-D int64 numpy array.

    Args:
        timesteps: A list, numpy array or integer tensor.
        num_train_timesteps: T; every timestep must lie in [0, T).
        name: The argument's name, for messages.
        increasing: Require a strictly increasing sequence (an inversion schedule) instead of a
            strictly decreasing one.

    Raises:
        TypeError: Not a sequence of integers.
        ValueError: Empty, not 1-D, out of [0, T), repeated, or in the wrong order (names the first offence).
    """
    if isinstance(timesteps, torch.Tensor):
        if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers; got a tensor of dtype {timesteps.dtype}")
        array = np.array(timesteps.detach().cpu().tolist(), dtype=object)  # exact for uint64 too
    else:
        array = np.asarray(timesteps)
    if array.dtype == object:
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in array.reshape(-1)):
            raise TypeError(f"{name} must hold integers; got {timesteps!r}")
    elif not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        if np.issubdtype(array.dtype, np.floating) and array.size and np.all(array == np.round(array)):
            array = array.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integers; got {timesteps!r}")
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence; got shape {tuple(array.shape)}")
    given = array.astype(object)  # Python ints: range errors report the values as given (uint64 included)
    bad = [i for i, v in enumerate(given) if not 0 <= v < num_train_timesteps]
    if bad:
        i = bad[0]
        raise ValueError(
            f"{name} must lie in [0, num_train_timesteps={num_train_timesteps}); got {name}[{i}] = {int(given[i])}"
        )
    array = given.astype(np.int64)
    steps = np.diff(array)
    if (steps == 0).any():
        i = int(np.flatnonzero(steps == 0)[0])
        raise ValueError(f"{name} must not repeat a timestep; got {int(array[i])} at positions {i} and {i + 1}")
    wrong = steps < 0 if increasing else steps > 0
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        order = "increasing" if increasing else "decreasing"
        raise ValueError(
            f"{name} must be strictly {order}; got {int(array[i])} then {int(array[i + 1])} at position {i}"
        )
    return array


def step_target(t: int, ascending: Sequence[int], stride: int | None) -> int:
    """Where a sampling step from timestep t lands (−1: past the end): t − stride under diffusers' rule,
    else the largest visited timestep below t (``ascending``: the visited timesteps, sorted)."""
    if stride is not None:
        return max(t - stride, -1)
    position = bisect.bisect_left(ascending, t)
    return ascending[position - 1] if position > 0 else -1


def step_targets(t: torch.Tensor, ascending: torch.Tensor, stride: int | None) -> torch.Tensor:
    """:func:`step_target` for a tensor of timesteps, on its device without reading it (``ascending``:
    the visited timesteps, sorted, with −1 in front, on t's device)."""
    if stride is not None:
        return (t - stride).clamp(min=-1)
    position = torch.searchsorted(ascending, t.to(ascending.dtype).contiguous(), right=False) - 1
    return ascending.index_select(0, position.clamp(min=0).reshape(-1)).reshape(t.shape)


def predecessors(schedule: np.ndarray, num_train_timesteps: int, stride: int | None = None) -> np.ndarray:
    """For every t in [0, T), the timestep a sampling step from t lands on (:func:`step_target`); −1
    means past the end.

    Args:
        schedule: The visited timesteps (any order), int64.
        num_train_timesteps: T.
        stride: diffusers' rule t − stride when given; otherwise the largest visited timestep below t.

    Returns:
        int64 array [T] with values in [−1, T−1].
    """
    ascending = torch.tensor([-1] + sorted(int(t) for t in np.asarray(schedule).reshape(-1)), dtype=torch.int64)
    return step_targets(torch.arange(num_train_timesteps), ascending, stride).numpy()
