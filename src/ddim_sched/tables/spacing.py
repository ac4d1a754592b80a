r"""Timestep spacing: pure functions from (T, S) to the S timesteps a sampler visits, noisiest first.

Each strategy takes ``(num_train_timesteps, num_inference_steps, *, steps_offset, alpha_bar)`` and
returns a 1-D int64 numpy array. ``steps_offset`` shifts ``leading`` and ``quad`` (the sub-sequences
that start at 0) and is ignored by the others; ``alpha_bar`` (the float64 ᾱ table) is used by the
spacings defined on noise levels. Callers validate the result with :func:`check_timesteps`.

Two families beyond diffusers' ``leading``, ``trailing`` and ``linspace`` and the DDIM paper's ``quad``:

* on the noise levels (σ = √((1 − ᾱ)/ᾱ), k-diffusion's): a grid of S levels from
  :mod:`ddim_sched.tables.sigma_grids` between the table's σ_max (its largest finite σ) and σ_min = σ_0,
  each level mapped to the nearest timestep in log σ: ``karras``, ``exponential``, ``beta``,
  ``kl_optimal``, ``logsnr``, ``linear_quadratic``, and the Align Your Steps presets ``ays_sd15`` and
  ``ays_sdxl`` (:mod:`ddim_sched.tables.ays`);
* on the timestep axis, as ComfyUI defines them for a discrete ᾱ table: ``simple``, ``normal``,
  ``sgm_uniform`` and ``beta_timesteps``.

Where several levels land on one timestep (large S: the low-noise end is dense in σ), they are moved to
the nearest free timesteps, so every spacing gives S distinct timesteps. The noise-level spacings skip
timesteps with ᾱ = 0 (σ = ∞) unless S exceeds the others (zero terminal SNR with S near T): then they
visit every timestep with ᾱ > 0 and the lowest ones with ᾱ = 0. None of these steps by diffusers'
stride t − T // S: a step lands on the next visited timestep (:data:`STRIDED_SPACINGS`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .ays import ays_sigmas
from .sigma_grids import (
    beta_quantile,
    beta_sigmas,
    exponential_sigmas,
    karras_sigmas,
    kl_optimal_sigmas,
    linear_quadratic_sigmas,
)

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


def _finite_log_sigmas(name: str, alpha_bar: object) -> np.ndarray:
    """log σ_t of the timesteps with ᾱ_t > 0 (they come first: ᾱ decreases), float64."""
    if alpha_bar is None:
        raise ValueError(f"the {name!r} timestep spacing needs alpha_bar (the noise levels); got alpha_bar=None")
    log_sigmas = np.log(_sigmas_from_alpha_bar(alpha_bar))
    return log_sigmas[: int(np.isfinite(log_sigmas).sum())]


def _on_levels(levels: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """S decreasing noise levels -> S distinct timesteps, each the nearest in log σ that the order allows."""
    finite = len(log_sigmas)
    with np.errstate(divide="ignore"):
        targets = np.log(levels)
    # Fractional timestep of each target, linear in log σ between neighbouring integer timesteps.
    ideal = np.interp(targets[::-1], log_sigmas, np.arange(finite, dtype=np.float64))
    return _nearest_distinct(ideal, finite)[::-1].copy()


def _grid_spacing(
    name: str, grid: Callable[[float, float, int], np.ndarray], num_inference_steps: int, alpha_bar: object
) -> np.ndarray:
    """The timesteps of ``grid(σ_min, σ_max, S)`` on the table's finite levels (σ_max: its largest finite σ)."""
    log_sigmas = _finite_log_sigmas(name, alpha_bar)
    if len(log_sigmas) < num_inference_steps:
        return _all_lowest(num_inference_steps)
    levels = grid(float(np.exp(log_sigmas[0])), float(np.exp(log_sigmas[-1])), num_inference_steps)
    return _on_levels(levels, log_sigmas)


def _all_lowest(num_inference_steps: int) -> np.ndarray:
    """S − 1, …, 1, 0: where S exceeds the timesteps with ᾱ > 0 (zero terminal SNR, S near T), a noise-level
    spacing visits every one of them and, above them, the lowest timesteps with ᾱ = 0."""
    return np.arange(num_inference_steps - 1, -1, -1, dtype=np.int64)


def _on_timestep_axis(ideal: np.ndarray, num_train_timesteps: int) -> np.ndarray:
    """Decreasing fractional timesteps -> distinct integer timesteps, each the nearest the order allows."""
    return _nearest_distinct(np.asarray(ideal, dtype=np.float64)[::-1], num_train_timesteps)[::-1].copy()


def karras(
    num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar: torch.Tensor | None = None
) -> np.ndarray:
    """Karras et al. ρ = 7 noise levels between the schedule's σ_min = σ_0 and σ_max = σ_{T−1},
    each mapped to the nearest discrete timestep in log σ, with σ_t = √((1 − ᾱ_t)/ᾱ_t).

    "Nearest" is nearest in log σ, which is what rounding diffusers' interpolated Karras timesteps
    (``EulerDiscreteScheduler(use_karras_sigmas=True)``) gives. Where several levels round to the same
    timestep (large S; the low-noise end is dense in σ), they are moved to the nearest free timesteps
    so that all S are distinct. Timesteps with ᾱ_t = 0 (σ = ∞, zero terminal SNR) are not visited:
    σ_max is then the largest finite σ; only where S exceeds the timesteps with ᾱ > 0 (S near T) are they
    all visited, and the lowest of those with ᾱ = 0 above them. steps_offset is ignored.

    Raises:
        ValueError: alpha_bar is missing.
    """
    return _grid_spacing("karras", karras_sigmas, num_inference_steps, alpha_bar)


def exponential(
    num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar: torch.Tensor | None = None
) -> np.ndarray:
    """S levels uniform in log σ from σ_max to σ_min (both visited), nearest timesteps in log σ: diffusers'
    ``use_exponential_sigmas`` (and its ``use_lu_lambdas``, the same grid). Otherwise as :func:`karras`."""
    return _grid_spacing("exponential", exponential_sigmas, num_inference_steps, alpha_bar)


def logsnr(
    num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar: torch.Tensor | None = None
) -> np.ndarray:
    """DPM-Solver's ``skip_type="logSNR"`` (Lu et al. 2022): S + 1 points uniform in log-SNR from the noisiest
    level to σ_min = σ_0, of which the sampler visits the first S; the last step goes to the scheduler's final
    level (with ``set_alpha_to_one=False`` that is ᾱ_0, DPM-Solver's own end point). Since SNR = 1/σ², this is
    :func:`exponential` with one more level and the last left out. Otherwise as :func:`karras`."""

    def grid(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
        return exponential_sigmas(sigma_min, sigma_max, n + 1)[:-1]

    return _grid_spacing("logsnr", grid, num_inference_steps, alpha_bar)


def beta(
    num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar: torch.Tensor | None = None
) -> np.ndarray:
    """Levels at the Beta(0.6, 0.6) quantiles of σ between σ_max and σ_min: diffusers' ``use_beta_sigmas``,
    which places Lee et al.'s (2024) quantiles on the σ axis (:func:`beta_timesteps` places them on the
    timestep axis, as the paper and ComfyUI do). Otherwise as :func:`karras`."""
    return _grid_spacing("beta", beta_sigmas, num_inference_steps, alpha_bar)


def kl_optimal(
    num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar: torch.Tensor | None = None
) -> np.ndarray:
    """Levels uniform in atan σ from σ_max to σ_min (:func:`ddim_sched.tables.sigma_grids.kl_optimal_sigmas`;
    ComfyUI's and AUTOMATIC1111's ``kl_optimal``). Otherwise as :func:`karras`."""
    return _grid_spacing("kl_optimal", kl_optimal_sigmas, num_inference_steps, alpha_bar)


def linear_quadratic(
    num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar: torch.Tensor | None = None
) -> np.ndarray:
    """ComfyUI's ``linear_quadratic`` on a discrete table: σ_max·(1 − x_i) with Mochi's linear-then-quadratic
    x (:func:`ddim_sched.tables.sigma_grids.linear_quadratic_sigmas`, τ = 0.025). Made for flow models, where
    σ_max = 1; on an ᾱ table it spends half the steps in the top 2.5 % of σ, so the first timesteps are
    adjacent. Levels below σ_0 map to the lowest free timesteps. Otherwise as :func:`karras`."""

    def grid(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
        return linear_quadratic_sigmas(sigma_max, n)

    return _grid_spacing("linear_quadratic", grid, num_inference_steps, alpha_bar)


def _ays(model: str) -> Spacing:
    def spacing(
        num_train_timesteps: int,
        num_inference_steps: int,
        *,
        steps_offset: int = 0,
        alpha_bar: torch.Tensor | None = None,
    ) -> np.ndarray:
        log_sigmas = _finite_log_sigmas(f"ays_{model}", alpha_bar)
        if len(log_sigmas) < num_inference_steps:
            return _all_lowest(num_inference_steps)
        return _on_levels(ays_sigmas(model, num_inference_steps)[:-1], log_sigmas)

    spacing.__name__ = spacing.__qualname__ = f"ays_{model}"
    spacing.__doc__ = (
        f"Align Your Steps' {model} levels (:func:`ddim_sched.tables.ays.ays_sigmas`: the published 10, or their "
        "log-linear interpolation to S + 1 with the last, 0, left out), nearest timesteps in log σ. On Stable "
        f"Diffusion's ᾱ table (scaled_linear 0.00085–0.012, T = 1000) S = 10 gives the published timesteps; on "
        "another table the levels are mapped as they are (those beyond its range to its first or last timesteps)."
    )
    return spacing


ays_sd15 = _ays("sd15")
ays_sdxl = _ays("sdxl")


def simple(
    num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar: torch.Tensor | None = None
) -> np.ndarray:
    """ComfyUI's ``simple``: T − 1 − int(k·(T/S)) for k = 0..S−1, computed in float64 as ComfyUI computes it
    (T = 1000, S = 10: 999, 899, …, 99, trailing's timesteps; they differ where T/S is not an integer)."""
    stride = num_train_timesteps / num_inference_steps
    return np.array([num_train_timesteps - 1 - int(k * stride) for k in range(num_inference_steps)], dtype=np.int64)


def normal(
    num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar: torch.Tensor | None = None
) -> np.ndarray:
    """ComfyUI's ``normal`` on a discrete table: the σ at the S fractional timesteps linspace(T − 1, 0, S),
    interpolated in log σ, mapped to the nearest timestep in log σ, which is the nearest integer timestep:
    ``linspace``'s timesteps for S >= 2 (up to the rounding of exact halves); for S = 1, T − 1."""
    return _on_timestep_axis(np.linspace(num_train_timesteps - 1, 0, num_inference_steps), num_train_timesteps)


def sgm_uniform(
    num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar: torch.Tensor | None = None
) -> np.ndarray:
    """ComfyUI's ``sgm_uniform`` (Stability's sgm sampler): as :func:`normal` at the first S of S + 1 fractional
    timesteps linspace(T − 1, 0, S + 1), so the last visited one is above 0 (T = 1000, S = 10: 999, 899, …, 100)."""
    ideal = np.linspace(num_train_timesteps - 1, 0, num_inference_steps + 1)[:-1]
    return _on_timestep_axis(ideal, num_train_timesteps)


def beta_timesteps(
    num_train_timesteps: int, num_inference_steps: int, *, steps_offset: int = 0, alpha_bar: torch.Tensor | None = None
) -> np.ndarray:
    """Lee et al.'s (2024) beta sampling as the paper and ComfyUI's ``beta`` scheduler define it, on the
    timestep axis: (T − 1)·F⁻¹(1 − k/S) for k = 0..S−1, F the Beta(0.6, 0.6) CDF, each rounded. ComfyUI drops
    the timesteps its rounding repeats; here they move to the nearest free timesteps, so there are always S."""
    quantiles = beta_quantile(1 - np.arange(num_inference_steps, dtype=np.float64) / num_inference_steps, 0.6, 0.6)
    return _on_timestep_axis(quantiles * (num_train_timesteps - 1), num_train_timesteps)


# name -> strategy; the config's timestep_spacing options (config validation lists these keys).
SPACINGS: dict[str, Spacing] = {
    "leading": leading,
    "trailing": trailing,
    "linspace": linspace,
    "quad": quad,
    "karras": karras,
    "exponential": exponential,
    "beta": beta,
    "logsnr": logsnr,
    "kl_optimal": kl_optimal,
    "linear_quadratic": linear_quadratic,
    "ays_sd15": ays_sd15,
    "ays_sdxl": ays_sdxl,
    "simple": simple,
    "normal": normal,
    "sgm_uniform": sgm_uniform,
    "beta_timesteps": beta_timesteps,
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


# ------------------------------------------------------------------ k-diffusion sigmas -> timesteps

# How far beyond the table's smallest or largest finite σ a requested level may lie (relative) and still
# be taken as that end level: published lists round σ_max (SD: 14.6146 listed as 14.615).
SIGMA_RANGE_RTOL = 1e-2


def _float_array(values: object, name: str) -> np.ndarray:
    """A 1-D float64 copy of a sequence, numpy array or tensor of real numbers."""
    if isinstance(values, torch.Tensor):
        if values.is_complex() or values.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers; got a tensor of dtype {values.dtype}")
        array = values.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a sequence of real numbers; got {values!r}") from err
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence; got shape {tuple(array.shape)}")
    return array


def nearest_timesteps(sigmas: object, alpha_bar: object, *, name: str = "sigmas") -> np.ndarray:
    """The training timestep of each k-diffusion noise level σ = √((1 − ᾱ)/ᾱ): the nearest in log σ.

    Nearest, not interpolated: a DDIM timestep is an integer that indexes the ᾱ table (and the model is
    called with it), so a level between two timesteps is taken at the nearer one, at most half a step
    away in log σ. A level within :data:`SIGMA_RANGE_RTOL` beyond the table's end is its end timestep;
    σ = +∞ (ᾱ = 0) is the first timestep with ᾱ = 0 (zero terminal SNR).

    Args:
        sigmas: σ values > 0, any order (a list, numpy array or tensor).
        alpha_bar: The ᾱ table [T] (float64 preferred), decreasing.
        name: The argument's name, for messages.

    Returns:
        int64 array, one timestep in [0, T) per σ.

    Raises:
        TypeError: sigmas are not real numbers.
        ValueError: A σ that is NaN, <= 0, outside the table's noise range, or +∞ on a table without ᾱ = 0.
    """
    values = _float_array(sigmas, name)
    log_table = np.log(_sigmas_from_alpha_bar(alpha_bar))
    finite = int(np.isfinite(log_table).sum())
    if finite == 0:
        raise ValueError("alpha_bar has no timestep with alpha_bar > 0")
    lo, hi = float(np.exp(log_table[0])), float(np.exp(log_table[finite - 1]))
    infinite = np.isposinf(values)
    with np.errstate(invalid="ignore"):
        nonpositive = np.isnan(values) | (values <= 0)
        in_range = (values >= lo / (1 + SIGMA_RANGE_RTOL)) & (values <= hi * (1 + SIGMA_RANGE_RTOL))
    refused = nonpositive | ~(in_range | infinite) | (infinite & (finite == len(log_table)))
    if refused.any():  # the first offence, in index order
        i = int(np.flatnonzero(refused)[0])
        sigma = float(values[i])
        if nonpositive[i]:
            raise ValueError(f"{name}[{i}] = {sigma!r}: noise levels must be > 0 (only a last 0 ends a schedule)")
        if infinite[i]:
            raise ValueError(
                f"{name}[{i}] = inf (alpha_bar = 0) but this alpha_bar table has no zero-SNR timestep; "
                f"its largest sigma is {hi:.6g}"
            )
        raise ValueError(
            f"{name}[{i}] = {sigma:.6g} lies outside this alpha_bar table's noise levels "
            f"[{lo:.6g}, {hi:.6g}] (sigma = sqrt((1 - alpha_bar) / alpha_bar))"
        )
    out = np.full(values.size, finite, dtype=np.int64)  # σ = ∞: the first timestep with ᾱ = 0
    levels = ~infinite
    # Each level's fractional timestep, linear in log σ between neighbouring integer timesteps, rounded.
    positions = np.interp(np.log(values[levels]), log_table[:finite], np.arange(finite, dtype=np.float64))
    out[levels] = np.rint(positions).astype(np.int64)
    return out


def timesteps_from_sigmas(
    sigmas: object, alpha_bar: object, *, final_alpha_bar: float | None = None, name: str = "sigmas"
) -> np.ndarray:
    """The timesteps a DDIM scheduler visits for a k-diffusion schedule in diffusers' ``sigmas=`` convention:
    S + 1 levels, strictly decreasing, the S visited and then the level the last step lands on (which may
    equal the last visited one when that is the final level: σ_0 then σ of ᾱ_0 with ``set_alpha_to_one=False``).

    Each visited σ is mapped by :func:`nearest_timesteps`. A DDIM step always lands on the next visited
    timestep and the last step on the scheduler's final level (ᾱ = 1 with ``set_alpha_to_one``, else ᾱ_0),
    so the last entry must be 0, which stands for that final level whatever it is, or σ of
    ``final_alpha_bar`` itself (to 1e-3 relative).

    Args:
        sigmas: S + 1 >= 2 levels σ = √((1 − ᾱ)/ᾱ), strictly decreasing, a list, numpy array or tensor;
            +∞ (ᾱ = 0) allowed on a zero-terminal-SNR table.
        alpha_bar: The ᾱ table [T].
        final_alpha_bar: ᾱ after the last step, to accept its σ as the last entry.
        name: The argument's name, for messages.

    Returns:
        int64 array [S], strictly decreasing, in [0, T).

    Raises:
        TypeError: sigmas are not real numbers.
        ValueError: Fewer than 2 levels, not strictly decreasing, a last level that is not the final one,
            a visited level :func:`nearest_timesteps` refuses, or two levels on the same timestep.
    """
    values = _float_array(sigmas, name)
    if values.size < 2:
        raise ValueError(
            f"{name} must hold S + 1 >= 2 levels (the S visited, then where the last step lands, usually 0); "
            f"got {values.tolist()}"
        )
    steps = np.diff(values)
    decreasing = steps < 0
    # The last step may stay put when it lands on the final level (checked below): a schedule that visits
    # timestep 0 and ends on ᾱ_0 (set_alpha_to_one=False), as the scheduler's own ``sigmas`` lists it.
    decreasing[-1] |= bool(steps[-1] == 0 and values[-1] != 0)
    if not np.all(decreasing):
        i = int(np.flatnonzero(~decreasing)[0])
        raise ValueError(
            f"{name} must be strictly decreasing; got {float(values[i])!r} then {float(values[i + 1])!r} "
            f"at position {i}"
        )
    last = float(values[-1])
    final_sigma = None
    if final_alpha_bar is not None:
        final_sigma = math.sqrt(max(1.0 - final_alpha_bar, 0.0) / final_alpha_bar) if final_alpha_bar > 0 else math.inf
    if last != 0.0 and not (final_sigma is not None and math.isclose(last, final_sigma, rel_tol=1e-3)):
        where = "" if not final_sigma else f" or {final_sigma:.6g}, the sigma of final_alpha_bar"
        raise ValueError(
            f"the last of {name} is where the last step lands, which for DDIM is the scheduler's final level: "
            f"it must be 0{where}; got {last!r}"
        )
    visited = nearest_timesteps(values[:-1], alpha_bar, name=name)
    same = np.flatnonzero(np.diff(visited) == 0)
    if same.size:
        i = int(same[0])
        raise ValueError(
            f"{name}[{i}] = {values[i]:.6g} and {name}[{i + 1}] = {values[i + 1]:.6g} are both nearest to "
            f"timestep {int(visited[i])}: the alpha_bar table has no distinct timestep for each level"
        )
    return visited
