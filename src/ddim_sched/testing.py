"""Check that one scheduler reproduces another: a helper for your own test suite.

:func:`assert_schedulers_match` runs two schedulers — any objects with diffusers' scheduler
interface (``set_timesteps``, ``timesteps``, ``step``), e.g. ddim_sched's and diffusers'
``DDIMScheduler`` — through the same deterministic sampling loop and compares them step by step:

>>> from ddim_sched import DDIMScheduler
>>> from ddim_sched.testing import assert_schedulers_match
>>> config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
...               clip_sample=False, set_alpha_to_one=False, steps_offset=1)
>>> report = assert_schedulers_match(DDIMScheduler(**config), DDIMScheduler.from_config(config),
...                                  num_inference_steps=10, shape=(2, 4, 8, 8))
>>> report.max_error
0.0

It raises ``AssertionError`` with a per-step report (and the config keys that differ) when the
largest per-step error of the sample exceeds ``rtol``. This module does not import diffusers.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["MatchReport", "StepError", "assert_schedulers_match", "default_model"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Rows of the per-step table shown in full; longer runs show the first, the failing and the worst.
_MAX_ROWS = 24


def default_model(sample: torch.Tensor, timestep: int | torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for a denoiser: m(x, t) = x · t/(t+1) + 0.1 · sin(3x).

    The first term is diffusers' own dummy model for DDIM tests; the second makes the output a
    non-linear function of x, so errors in the sample propagate into the next model output.
    Computed in float32 (float64 for float64 samples) and returned in the sample's dtype.
    """
    dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
    x = sample.to(dtype)
    t = torch.as_tensor(timestep, device=sample.device).to(dtype)
    t = t.reshape(t.shape + (1,) * (x.dim() - t.dim())) if t.dim() else t
    return (x * (t / (t + 1)) + 0.1 * torch.sin(3 * x)).to(sample.dtype)


@dataclass(frozen=True)
class StepError:
    """The relative L2 errors ||candidate − reference|| / ||reference|| after one step.

    Attributes:
        index: Position of the step in the schedule (0 = first, noisiest).
        timestep: The timestep stepped from.
        prev_sample: Error of the step's result x_prev: the trajectory so far.
        pred_original_sample: Error of x̂0, or None when either scheduler returns none.
        note: Why an error is infinite (non-finite values in one output), else "".
    """

    index: int
    timestep: int
    prev_sample: float
    pred_original_sample: float | None = None
    note: str = ""


def _finite_or_inf(value: float | None) -> float:
    return 0.0 if value is None else math.inf if math.isnan(value) else value


@dataclass
class MatchReport:
    """What :func:`assert_schedulers_match` measured; ``str(report)`` is the per-step table.

    Attributes:
        candidate, reference: Descriptions of the two schedulers (class and module).
        timesteps: The schedule both visited.
        steps: One :class:`StepError` per step, in order.
        rtol: The bound on every step's ``prev_sample`` error.
        x0_rtol: The bound on every step's ``pred_original_sample`` error, or None (not checked).
        settings: num_inference_steps, shape, dtype, eta, seed, device, model.
        config_differences: Lines naming the config keys whose values differ, and keys only one has.
    """

    candidate: str
    reference: str
    timesteps: list[int]
    steps: list[StepError]
    rtol: float
    x0_rtol: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    config_differences: list[str] = field(default_factory=list)

    @property
    def max_error(self) -> float:
        """The largest per-step ``prev_sample`` error (NaN counts as inf; 0.0 for an empty run)."""
        return max((_finite_or_inf(s.prev_sample) for s in self.steps), default=0.0)

    @property
    def max_x0_error(self) -> float:
        """The largest per-step ``pred_original_sample`` error (0.0 when not available)."""
        return max((_finite_or_inf(s.pred_original_sample) for s in self.steps), default=0.0)

    @property
    def worst_step(self) -> StepError | None:
        """The step with the largest ``prev_sample`` error (the first on ties), or None for an empty run."""
        return max(self.steps, key=lambda s: _finite_or_inf(s.prev_sample), default=None)

    def _over(self, step: StepError) -> bool:
        over = _finite_or_inf(step.prev_sample) > self.rtol
        return over or (self.x0_rtol is not None and _finite_or_inf(step.pred_original_sample) > self.x0_rtol)

    @property
    def passed(self) -> bool:
        """Whether every step is within rtol (and x0_rtol, when set)."""
        return not any(self._over(s) for s in self.steps)

    def __str__(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        lines = [f"candidate {self.candidate} vs reference {self.reference}", settings]
        lines.append(f"{'step':>4}  {'timestep':>8}  {'prev_sample':>12}  {'pred_original_sample':>20}")
        failing = [s.index for s in self.steps if self._over(s)]
        worst = self.worst_step
        show = set(range(len(self.steps)))
        if len(self.steps) > _MAX_ROWS:
            show = set(range(5)) | set(failing[:10]) | {len(self.steps) - 1} | ({worst.index} if worst else set())
        previous = -1
        for s in self.steps:
            if s.index not in show:
                continue
            if s.index != previous + 1:
                lines.append(f"{'...':>4}")
            x0 = "-" if s.pred_original_sample is None else f"{s.pred_original_sample:.2e}"
            mark = "  *" if self._over(s) else ""
            note = f"  ({s.note})" if s.note else ""
            lines.append(f"{s.index:>4}  {s.timestep:>8}  {s.prev_sample:>12.2e}  {x0:>20}{mark}{note}")
            previous = s.index
        bounds = f"rtol {self.rtol:.0e}" + ("" if self.x0_rtol is None else f", x0_rtol {self.x0_rtol:.0e}")
        if worst is None:
            lines.append("no steps")
        else:
            summary = (
                f"max relative error of prev_sample {self.max_error:.2e} at step {worst.index} "
                f"(timestep {worst.timestep}); of pred_original_sample {self.max_x0_error:.2e}"
            )
            if self.passed:
                lines.append(f"{summary}: within {bounds}")
            else:
                lines.append(f"{summary}: over {bounds} first at step {failing[0]}; * marks steps over")
        if self.config_differences:
            lines.append("config differences:")
            lines.extend(f"  {d}" for d in self.config_differences)
        return "\n".join(lines)


def _describe(scheduler: Any) -> str:
    cls = type(scheduler)
    return f"{cls.__name__} ({cls.__module__})"


def _config_differences(candidate: Any, reference: Any) -> list[str]:
    """Config keys whose values differ, then keys only one scheduler has (``_`` metadata excluded)."""
    a, b = getattr(candidate, "config", None), getattr(reference, "config", None)
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        return []
    out = []
    for key in sorted(set(a) & set(b), key=str):
        va, vb = a[key], b[key]
        same = list(va) == list(vb) if isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)) else va == vb
        if not str(key).startswith("_") and not same:
            out.append(f"{key}: candidate={va!r}, reference={vb!r}")
    for role, mine, other in (("candidate", a, b), ("reference", b, a)):
        only = [f"{k}={mine[k]!r}" for k in sorted(set(mine) - set(other), key=str) if not str(k).startswith("_")]
        if only:
            out.append(f"only in {role}: {', '.join(only)}")
    return out


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, str]:
    """(||actual − expected|| / ||expected|| in float64, note); inf when non-finite values differ."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if a.shape != e.shape:
        return math.inf, f"shapes differ: {tuple(a.shape)} vs {tuple(e.shape)}"
    finite_a, finite_e = torch.isfinite(a), torch.isfinite(e)
    if not (finite_a.all() and finite_e.all()):
        same = torch.equal(finite_a, finite_e) and torch.equal(a[~finite_a].nan_to_num(), e[~finite_e].nan_to_num())
        if not same:
            who = [name for name, ok in (("candidate", finite_a), ("reference", finite_e)) if not ok.all()]
            return math.inf, f"NaN/Inf in {' and '.join(who)}"
        a, e = a[finite_a], e[finite_e]
    diff = float((a - e).norm())
    return (0.0 if diff == 0 else diff / max(float(e.norm()), 1e-30)), ""


def _excerpt(values: list[int], around: int, radius: int = 6) -> str:
    """The list, or for long lists the entries within ``radius`` of index ``around``."""
    if len(values) <= 4 * radius:
        return str(values)
    start, stop = max(around - radius, 0), min(around + radius + 1, len(values))
    inner = ", ".join(str(v) for v in values[start:stop])
    return f"[{'..., ' if start else ''}{inner}{', ...' if stop < len(values) else ''}] (indices {start}..{stop - 1})"


def _output(result: Any, name: str, index: int) -> torch.Tensor | None:
    """A field of a step result: an output object's attribute, or a tuple's element."""
    if hasattr(result, name):
        return getattr(result, name)
    if isinstance(result, (tuple, list)) and len(result) > index:
        return result[index]
    return None


def _step_kwargs(scheduler: Any, role: str, eta: float, seed: int, index: int) -> dict[str, Any]:
    """eta and a fresh generator (seeded by the step index) for schedulers whose step takes them."""
    parameters = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in parameters:
        kwargs["eta"] = eta
    elif eta != 0:
        raise TypeError(f"eta={eta!r} was given but the {role}'s step() takes no eta")
    if eta != 0 and "generator" in parameters:
        kwargs["generator"] = torch.Generator().manual_seed(seed + 1 + index)
    return kwargs


def assert_schedulers_match(
    candidate: Any,
    reference: Any,
    num_inference_steps: int,
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    eta: float = 0.0,
    seed: int = 0,
    rtol: float = 1e-4,
    device: str | torch.device | None = None,
    model: Model | None = None,
    verbose: bool = False,
    x0_rtol: float | None = None,
) -> MatchReport:
    """Run two schedulers through the same deterministic loop; fail if any step differs by more than rtol.

    Both get ``set_timesteps(num_inference_steps, device=device)`` and must produce the same
    timesteps. Each then samples its own trajectory from the same x_T (seeded standard normal
    times ``init_noise_sigma``): at every timestep t, m = model(x, t), x = step(m, t, x, ...). For
    η > 0 both draw their noise from a fresh ``torch.Generator`` seeded ``seed + 1 + step index``,
    so schedulers that draw noise as diffusers' ``randn_tensor`` does get identical noise. After
    each step the relative L2 errors of ``prev_sample`` and ``pred_original_sample`` are recorded.

    Args:
        candidate: The scheduler under test (e.g. ``ddim_sched.DDIMScheduler``).
        reference: The scheduler it should reproduce (e.g. diffusers' ``DDIMScheduler``).
        num_inference_steps: S, passed to both ``set_timesteps``.
        shape: The sample's shape [B, ...].
        dtype: The sample's (and model output's) dtype. ``rtol`` = 1e-4 suits float32 and float64;
            half precision needs a looser bound (see docs/numerics.md).
        eta: η, passed to ``step`` (only if nonzero to a scheduler whose step takes no ``eta``, an error).
        seed: Seeds x_T and the per-step noise generators.
        rtol: The largest allowed relative L2 error of ``prev_sample`` at any step.
        device: Where to sample (default: CPU).
        model: ``model(sample, timestep) -> model_output`` of the sample's shape; default
            :func:`default_model`, a deterministic function of (x, t).
        verbose: Also print the report.
        x0_rtol: If set, also bound every step's ``pred_original_sample`` error. Off by default:
            at high noise x̂0 = (x − √(1−ᾱ)·ε)/√ᾱ is a small difference of large terms, so its
            relative error is amplified by the parameterisation, not by a scheduler's fault.

    Returns:
        A :class:`MatchReport` (``report.max_error``, ``report.steps``, ``str(report)``).

    Raises:
        AssertionError: The timesteps differ, or a step's error exceeds rtol / x0_rtol (the
            message is the per-step report, with the config keys that differ).
        TypeError: eta != 0 for a scheduler whose step takes no eta.
    """
    model = default_model if model is None else model
    device = torch.device("cpu" if device is None else device)
    shape = tuple(int(n) for n in shape)
    settings = {
        "num_inference_steps": num_inference_steps,
        "shape": shape,
        "dtype": dtype,
        "eta": eta,
        "seed": seed,
        "device": device,
        "model": getattr(model, "__name__", type(model).__name__),
    }
    differences = _config_differences(candidate, reference)
    schedulers = {"candidate": candidate, "reference": reference}
    for scheduler in schedulers.values():
        scheduler.set_timesteps(num_inference_steps, device=device)
    schedules = {role: [int(t) for t in s.timesteps] for role, s in schedulers.items()}
    if schedules["candidate"] != schedules["reference"]:
        a, b = schedules["candidate"], schedules["reference"]
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        message = [
            f"timesteps differ between candidate {_describe(candidate)} and reference {_describe(reference)} "
            f"(num_inference_steps={num_inference_steps}), first at index {first}:",
            f"  candidate ({len(a)}): {_excerpt(a, first)}",
            f"  reference ({len(b)}): {_excerpt(b, first)}",
        ]
        if differences:
            message += ["config differences:"] + [f"  {d}" for d in differences]
        raise AssertionError("\n".join(message))

    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    samples = {
        role: (noise * float(getattr(s, "init_noise_sigma", 1.0))).to(device=device, dtype=dtype)
        for role, s in schedulers.items()
    }
    steps: list[StepError] = []
    with torch.no_grad():
        for index, t in enumerate(reference.timesteps):
            outputs = {}
            for role, scheduler in schedulers.items():
                model_output = model(samples[role], t)
                result = scheduler.step(
                    model_output, t, samples[role], **_step_kwargs(scheduler, role, eta, seed, index)
                )
                samples[role] = _output(result, "prev_sample", 0)
                outputs[role] = _output(result, "pred_original_sample", 1)
            prev_error, note = _relative_error(samples["candidate"], samples["reference"])
            x0_error = None
            if outputs["candidate"] is not None and outputs["reference"] is not None:
                x0_error, x0_note = _relative_error(outputs["candidate"], outputs["reference"])
                note = note or x0_note
            steps.append(StepError(index, int(t), prev_error, x0_error, note))

    report = MatchReport(
        _describe(candidate), _describe(reference), schedules["reference"], steps, rtol, x0_rtol, settings, differences
    )
    if verbose:
        print(report)
    if not report.passed:
        raise AssertionError(f"schedulers differ\n{report}")
    return report
