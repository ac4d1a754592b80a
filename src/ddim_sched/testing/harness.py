"""The comparison loop: two schedulers and the exact float64 result, step by step, from one x_T."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..toy import GaussianMixture
from .exact import ExactReference
from .lockstep import ComparisonLoop, Model
from .report import MatchReport

__all__ = ["DEFAULT_RTOL", "assert_schedulers_match", "compare_schedulers", "default_model", "mixture_model"]

# The default bound on each step's relative L2 error of prev_sample, per sample dtype. diffusers keeps
# its tables in float32 and steps half-precision samples in half precision: docs/numerics.md.
DEFAULT_RTOL: dict[torch.dtype, float] = {
    torch.float64: 1e-4,
    torch.float32: 1e-4,
    torch.float16: 5e-3,
    torch.bfloat16: 4e-2,
}


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


def mixture_model(
    shape: Sequence[int], prediction_type: str = "epsilon", alpha_bar: Any = None, seed: int = 0, components: int = 4
) -> Model:
    """The exact denoiser of a seeded Gaussian mixture: a model whose right answer is known.

    The mixture has ``components`` isotropic components (std 0.5, means 0.5·N(0, I) drawn from
    ``seed``) in prod(shape[1:]) dimensions; see :class:`ddim_sched.toy.GaussianMixture`.

    Args:
        shape: The sample shape [B, ...] the model will be called with.
        prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
        alpha_bar: The noise schedule: a scheduler or a 1-D ᾱ table (see ``GaussianMixture``).
        seed: Seeds the component means.
        components: Number of mixture components, >= 1.

    Returns:
        ``model(sample, timestep)``, computed in float32 (float64 for float64 samples) and returned
        in the sample's dtype.

    Raises:
        ValueError: An unknown prediction_type, a shape without sample dimensions, a bad table.
    """
    dims = tuple(int(n) for n in shape)
    if len(dims) < 2 or math.prod(dims[1:]) < 1:
        raise ValueError(f"shape must be [B, ...] with at least one value per sample; got {tuple(shape)!r}")
    generator = torch.Generator().manual_seed(seed)
    means = 0.5 * torch.randn(components, math.prod(dims[1:]), generator=generator, dtype=torch.float64)
    predict = GaussianMixture(means, 0.5, alpha_bar=alpha_bar).model(prediction_type)

    def model(sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        compute = torch.float64 if sample.dtype == torch.float64 else torch.float32
        return predict(sample.to(compute), timestep).to(sample.dtype)

    model.__name__ = f"mixture_model({prediction_type!r})"
    return model


def _tolerance(name: str, value: Any) -> float:
    """``value`` as a finite float >= 0, else a TypeError/ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r} of type {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return number


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


def _excerpt(values: list[int], around: int, radius: int = 6) -> str:
    """The list, or for long lists the entries within ``radius`` of index ``around``."""
    if len(values) <= 4 * radius:
        return str(values)
    start, stop = max(around - radius, 0), min(around + radius + 1, len(values))
    inner = ", ".join(str(v) for v in values[start:stop])
    return f"[{'..., ' if start else ''}{inner}{', ...' if stop < len(values) else ''}] (indices {start}..{stop - 1})"


def _common_timesteps(report: MatchReport, candidate: Any, reference: Any) -> None:
    """Fill in the timesteps to compare; diffusers' trailing extra −1 is set aside, any other difference reported."""
    a, b = [int(t) for t in candidate.timesteps], [int(t) for t in reference.timesteps]
    report.timesteps = a
    if a == b:
        return
    if b[: len(a)] == a and b[len(a) :] == [-1]:
        report.extra_reference_timesteps = [-1]
        table = getattr(reference, "alphas_cumprod", None)
        if isinstance(table, torch.Tensor) and table.dim() == 1 and table.numel() > 0:
            noisiest = float(table.detach().cpu()[-1])
            report.schedule_note = (
                f"its step from t = -1 reads alphas_cumprod[-1] = {noisiest:.6g} = alpha_bar at t = "
                f"{table.numel() - 1}, the noisiest level"
            )
        return
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    report.timesteps = []
    report.schedule_error = "\n".join(
        [
            f"timesteps differ, first at index {first}:",
            f"  candidate ({len(a)}): {_excerpt(a, first)}",
            f"  reference ({len(b)}): {_excerpt(b, first)}",
        ]
    )


def compare_schedulers(
    candidate: Any,
    reference: Any,
    num_inference_steps: int,
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    eta: float = 0.0,
    seed: int = 0,
    rtol: float | None = None,
    device: str | torch.device | None = None,
    model: Model | None = None,
    x0_rtol: float | None = None,
    *,
    accept_explained: bool = False,
    allow_nonfinite: bool = False,
) -> MatchReport:
    """Run two schedulers and the exact float64 result through the same loop; report every step.

    Both schedulers get ``set_timesteps(num_inference_steps, device=device)``. Each then samples its
    own trajectory from the same x_T (seeded standard normal times ``init_noise_sigma``): at every
    timestep t, m = model(x, t), x = step(m, t, x, ...). For η > 0 both draw their noise from a
    fresh ``torch.Generator`` seeded ``seed + 1 + step index``, as diffusers' ``randn_tensor``
    does. A third trajectory is the exact result: the reference's own ``step`` on float64 inputs
    with float64 noise tables (:class:`~ddim_sched.testing.exact.ExactReference`), fed the same
    noise and, where the two land on different timesteps, landing where the candidate does.
    After each step the relative L2 errors of ``prev_sample`` (and x̂0) are recorded, with each
    scheduler's error against the exact result. Where diffusers' trailing spacing adds a last
    timestep −1, the common timesteps are compared and the extra one is reported. Nothing is raised
    for a difference: see :attr:`MatchReport.verdict`.

    Args:
        candidate: The scheduler under test (e.g. ``ddim_sched.DDIMScheduler``).
        reference: The scheduler it should reproduce (e.g. diffusers' ``DDIMScheduler``): anything
            with ``set_timesteps``, ``timesteps`` and ``step``. The exact result needs its
            ``config``, ``alphas_cumprod`` and ``final_alpha_cumprod`` (diffusers' names), and for
            η > 0 a ``variance_noise`` argument of its step; without them it is reported missing.
        num_inference_steps: S, passed to both ``set_timesteps``.
        shape: The sample's shape [B, ...].
        dtype: The sample's (and model output's) dtype.
        eta: η, passed to ``step`` (only if nonzero to a scheduler whose step takes no ``eta``, an error).
        seed: Seeds x_T and the per-step noise generators.
        rtol: The largest allowed relative L2 error of ``prev_sample`` at any step, finite and >= 0;
            None: ``DEFAULT_RTOL[dtype]``.
        device: Where to sample (default: CPU). The exact result is computed on the CPU.
        model: ``model(sample, timestep) -> model_output`` of the sample's shape; default
            :func:`default_model`. It is also called with float64 samples, for the exact result.
        x0_rtol: If set (finite, >= 0), also bound every step's ``pred_original_sample`` error.
            Off by default: at high noise x̂0 = (x − √(1−ᾱ)·ε)/√ᾱ is a small difference of large
            terms, so its relative error is amplified by the parameterisation.
        accept_explained: Let :attr:`MatchReport.passed` accept differences explained in the
            candidate's favour (see :mod:`ddim_sched.testing.report`).
        allow_nonfinite: Count NaN/Inf at the same positions in both outputs as equal. Off: any
            NaN/Inf is a mismatch.

    Returns:
        A :class:`MatchReport`.

    Raises:
        TypeError: eta != 0 for a scheduler whose step takes no eta; rtol/x0_rtol not a real number.
        ValueError: rtol or x0_rtol negative, NaN or infinite; rtol None for a dtype without a default.
        Whatever the candidate's ``set_timesteps`` or ``step`` raises. What the reference raises is
        reported instead (``reference_error``).
    """
    if rtol is None and dtype not in DEFAULT_RTOL:
        raise ValueError(f"no default rtol for dtype={dtype}; pass rtol")
    rtol = _tolerance("rtol", DEFAULT_RTOL[dtype] if rtol is None else rtol)
    x0_rtol = None if x0_rtol is None else _tolerance("x0_rtol", x0_rtol)
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
    report = MatchReport(
        _describe(candidate),
        _describe(reference),
        [],
        [],
        rtol,
        x0_rtol,
        settings,
        _config_differences(candidate, reference),
        accept_explained,
    )
    candidate.set_timesteps(num_inference_steps, device=device)
    try:
        reference.set_timesteps(num_inference_steps, device=device)
    except Exception as err:
        report.reference_error = f"the reference's set_timesteps raised {type(err).__name__}: {err}"
        report.exact = "not attempted"
        return report
    _common_timesteps(report, candidate, reference)
    if report.schedule_error:
        report.exact = "not attempted"
        return report
    exact = ExactReference.build(reference, candidate)
    if isinstance(exact, ExactReference) and eta != 0 and not exact.takes_variance_noise:
        exact = "the reference's step takes no variance_noise, so the exact result cannot share its noise"
    report.exact = exact.describe() if isinstance(exact, ExactReference) else exact
    report.exact_available = isinstance(exact, ExactReference)
    options = {
        "shape": shape,
        "dtype": dtype,
        "eta": eta,
        "seed": seed,
        "device": device,
        "allow_nonfinite": allow_nonfinite,
    }
    ComparisonLoop(
        report, candidate, reference, exact if isinstance(exact, ExactReference) else None, model, options
    ).run()
    return report


def assert_schedulers_match(
    candidate: Any,
    reference: Any,
    num_inference_steps: int,
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    eta: float = 0.0,
    seed: int = 0,
    rtol: float | None = None,
    device: str | torch.device | None = None,
    model: Model | None = None,
    verbose: bool = False,
    x0_rtol: float | None = None,
    *,
    accept_explained: bool = False,
    allow_nonfinite: bool = False,
) -> MatchReport:
    """Run :func:`compare_schedulers`; fail unless every step is within rtol (or explained, on request).

    Args:
        candidate, reference, num_inference_steps, shape, dtype, eta, seed, rtol, device, model,
            x0_rtol, allow_nonfinite: As for :func:`compare_schedulers`.
        verbose: Also print the report.
        accept_explained: Pass when every difference is a documented deliberate difference in the
            candidate's favour (:data:`~ddim_sched.testing.DIFFERENCES`). Off by default: any
            difference fails, and the report says who is closer to the exact result and why.

    Returns:
        The :class:`MatchReport` (``report.max_error``, ``report.steps``, ``str(report)``).

    Raises:
        AssertionError: The report's verdict is not MATCH (or EXPLAINED with ``accept_explained``):
            the timesteps differ, a step's error exceeds rtol / x0_rtol, NaN/Inf appeared, or the
            reference raised. The message is the per-step report.
        TypeError, ValueError: As for :func:`compare_schedulers`.
    """
    report = compare_schedulers(
        candidate,
        reference,
        num_inference_steps,
        shape,
        dtype,
        eta,
        seed,
        rtol,
        device,
        model,
        x0_rtol,
        accept_explained=accept_explained,
        allow_nonfinite=allow_nonfinite,
    )
    if verbose:
        print(report)
    if not report.passed:
        raise AssertionError(f"schedulers differ ({report.verdict})\n{report}")
    return report
