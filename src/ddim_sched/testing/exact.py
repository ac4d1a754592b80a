"""The exact float64 result of a reference scheduler's step, and the checks that name why two schedulers differ.

The exact result is the reference's *own* ``step``, run on float64 inputs with its noise tables
(``betas``, ``alphas``, ``alphas_cumprod``, ``final_alpha_cumprod``) replaced by float64 ones built
from its config. It is the reference's formula without its rounding: where the candidate is within
tolerance of it and the reference is not, the difference is the reference's precision (or, when the
two land on different timesteps, the successor rule). Nothing here imports diffusers: the reference
is duck-typed.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch

from ..ddim.config import DDIMConfig
from ..tables.betas import betas_from_alpha_bar

__all__ = ["ExactReference", "direction_rounding", "landing", "private_copy", "relative_error", "step_output"]

# The float64 table built from the reference's config must reproduce its float32 table this closely.
_TABLE_ATOL = 1e-5


def relative_error(actual: torch.Tensor, expected: torch.Tensor, allow_nonfinite: bool = False) -> tuple[float, str]:
    """(||actual − expected|| / ||expected|| in float64, note); inf with a note for NaN/Inf or a shape mismatch.

    With ``allow_nonfinite``, NaN/Inf at the same positions with the same values count as equal and
    the finite parts are compared.
    """
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if a.shape != e.shape:
        return math.inf, f"shapes differ: {tuple(a.shape)} vs {tuple(e.shape)}"
    finite_a, finite_e = torch.isfinite(a), torch.isfinite(e)
    if not (finite_a.all() and finite_e.all()):
        who = " and ".join(name for name, ok in (("candidate", finite_a), ("reference", finite_e)) if not ok.all())
        same = torch.equal(finite_a, finite_e) and torch.equal(a[~finite_a].nan_to_num(), e[~finite_e].nan_to_num())
        if not (allow_nonfinite and same):
            return math.inf, f"NaN/Inf in {who}"
        a, e = a[finite_a], e[finite_e]
    diff = float((a - e).norm())
    return (0.0 if diff == 0 else diff / max(float(e.norm()), 1e-30)), ""


def step_output(result: Any, name: str, index: int) -> torch.Tensor | None:
    """A field of a step result: an output object's attribute, or a tuple's element."""
    if hasattr(result, name):
        return getattr(result, name)
    if isinstance(result, (tuple, list)) and len(result) > index:
        return result[index]
    return None


def landing(scheduler: Any, timestep: int) -> int | None:
    """Where a step from ``timestep`` lands: ``previous_timestep(t)``, else diffusers' t − T // S; None if unknown.

    Every landing past the end (the final ᾱ) is −1.
    """
    previous = getattr(scheduler, "previous_timestep", None)
    config = getattr(scheduler, "config", None)
    steps = getattr(scheduler, "num_inference_steps", None)
    total = config.get("num_train_timesteps") if isinstance(config, Mapping) else None
    if callable(previous):
        lands_on = int(previous(int(timestep)))
    elif isinstance(total, int) and isinstance(steps, int) and steps > 0:
        lands_on = int(timestep) - total // steps
    else:
        return None
    return max(lands_on, -1)


def private_copy(scheduler: Any) -> Any:
    """A copy to step and modify without touching ``scheduler``: deep, or shallow when it holds uncopyable state.

    A shallow copy is safe for attribute assignment (the tables are replaced, not modified in place).
    """
    try:
        return copy.deepcopy(scheduler)
    except (TypeError, copy.Error):  # e.g. a lock guarding a cache
        return copy.copy(scheduler)


def _takes(scheduler: Any, name: str) -> bool:
    return name in inspect.signature(scheduler.step).parameters


def _float64_tables(reference: Any, candidate: Any) -> tuple[torch.Tensor, torch.Tensor, float] | str:
    """(float64 betas, ᾱ, final ᾱ) that round to the reference's float32 tables, or why there are none.

    Built from the reference's config; failing that, the candidate's public float64 ``alpha_bar``
    when it reproduces the reference's table (the configs agree).
    """
    config = getattr(reference, "config", None)
    table32 = getattr(reference, "alphas_cumprod", None)
    final32 = getattr(reference, "final_alpha_cumprod", None)
    if not isinstance(config, Mapping) or not isinstance(table32, torch.Tensor) or final32 is None:
        return "the reference has no config mapping, alphas_cumprod and final_alpha_cumprod"
    table = table32.detach().to("cpu", torch.float64)
    final = float(final32)
    fields = set(DDIMConfig.field_names())
    try:
        parsed = DDIMConfig.from_mapping({k: v for k, v in config.items() if k in fields})
    except (TypeError, ValueError) as err:
        reason = f"the reference's config is not a DDIM config ({err})"
    else:
        betas, alpha_bar, final64 = parsed.noise_tables()
        if _reproduces(table, final, alpha_bar, final64):
            return betas, alpha_bar, final64
        reason = "the float64 table built from the reference's config does not reproduce its alphas_cumprod"
    own = getattr(candidate, "alpha_bar", None)
    if isinstance(own, torch.Tensor) and own.dtype == torch.float64 and own.dim() == 1 and own.numel() > 0:
        alpha_bar = own.detach().to("cpu")
        final64 = 1.0 if final == 1.0 else float(alpha_bar[0])
        if _reproduces(table, final, alpha_bar, final64):
            return betas_from_alpha_bar(alpha_bar), alpha_bar, final64
    return reason


def _reproduces(table: torch.Tensor, final: float, alpha_bar: torch.Tensor, final64: float) -> bool:
    """Whether float64 ᾱ and final ᾱ agree with the reference's float32 ones to float32 rounding."""
    if table.shape != alpha_bar.shape or abs(final - final64) > _TABLE_ATOL:
        return False
    return float((table - alpha_bar).abs().max()) <= _TABLE_ATOL


class ExactReference:
    """The reference's own step on float64 inputs with float64 noise tables, landing where asked.

    Build it with :meth:`build` after the reference's ``set_timesteps``. :meth:`step` runs on the
    CPU in float64; where the requested landing timestep differs from the reference's own, the
    landing is passed as ``prev_timestep`` when the reference's step takes it, else the table
    entry the reference reads for its landing is set to ᾱ of the requested one for that call.
    """

    def __init__(self, scheduler: Any, reference: Any, alpha_bar: torch.Tensor, final_alpha_bar: float) -> None:
        self.scheduler = scheduler
        self.reference = reference
        self.alpha_bar = alpha_bar
        self.final_alpha_bar = final_alpha_bar
        self.takes_prev_timestep = _takes(scheduler, "prev_timestep")
        self.takes_variance_noise = _takes(scheduler, "variance_noise")

    @classmethod
    def build(cls, reference: Any, candidate: Any) -> ExactReference | str:
        """The exact reference for ``reference``, or a sentence saying why there is none."""
        tables = _float64_tables(reference, candidate)
        if isinstance(tables, str):
            return tables
        betas, alpha_bar, final = tables
        exact = private_copy(reference)
        try:
            exact.betas = betas
            exact.alphas = 1.0 - betas
            exact.alphas_cumprod = alpha_bar
            exact.final_alpha_cumprod = torch.tensor(final, dtype=torch.float64)
        except AttributeError:
            own = getattr(reference, "alpha_bar", None)
            if not (isinstance(own, torch.Tensor) and own.dtype == torch.float64):
                return "the reference's noise tables cannot be replaced"
            # Its tables are read-only, but already float64: on float64 inputs it computes in float64.
        return cls(exact, reference, alpha_bar, final)

    def describe(self) -> str:
        """One line: what the exact result is."""
        name = type(self.reference).__name__
        return f"{name}'s own step on float64 inputs with float64 noise tables (CPU)"

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float,
        noise: torch.Tensor | None,
        lands_on: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x_prev, x̂0) in float64 for float64 CPU inputs, landing on ``lands_on`` (None: the reference's own)."""
        kwargs: dict[str, Any] = {}
        if _takes(self.scheduler, "eta"):
            kwargs["eta"] = eta
        if eta != 0:
            if not self.takes_variance_noise:
                raise TypeError("the reference's step takes no variance_noise")
            kwargs["variance_noise"] = noise
        own = landing(self.reference, timestep)
        if lands_on is None or own is None or lands_on == own:
            return self._step(model_output, timestep, sample, kwargs)
        if self.takes_prev_timestep:
            return self._step(model_output, timestep, sample, {**kwargs, "prev_timestep": lands_on})
        table = self.alpha_bar.clone()
        final = self.final_alpha_bar
        value = float(table[lands_on]) if lands_on >= 0 else self.final_alpha_bar
        if own >= 0:
            table[own] = value
        else:
            final = value
        try:
            self.scheduler.alphas_cumprod = table
            self.scheduler.final_alpha_cumprod = torch.tensor(final, dtype=torch.float64)
            return self._step(model_output, timestep, sample, kwargs)
        finally:
            self.scheduler.alphas_cumprod = self.alpha_bar
            self.scheduler.final_alpha_cumprod = torch.tensor(self.final_alpha_bar, dtype=torch.float64)

    def _step(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        result = self.scheduler.step(model_output, timestep, sample, **kwargs)
        prev = step_output(result, "prev_sample", 0)
        if prev is None:
            raise TypeError("the reference's step returned no prev_sample")
        return prev.to(torch.float64), step_output(result, "pred_original_sample", 1)


def direction_rounding(reference: Any, timestep: int, lands_on: int, eta: float) -> float | None:
    """How far the reference's float32 √(1 − ᾱ_prev − σ²) is from its float64 value (inf: negative, NaN).

    Evaluated as diffusers writes it, σ = η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev)), on the reference's
    float32 ``alphas_cumprod``/``final_alpha_cumprod``; the float64 value uses the same ᾱ in the
    cancellation-free form (1−ᾱ_prev)/(1−ᾱ_t)·((1−η²)(1−ᾱ_t/ᾱ_prev) + ᾱ_t/ᾱ_prev·(1−ᾱ_prev)).
    None when the reference has no such tables.
    """
    table = getattr(reference, "alphas_cumprod", None)
    final = getattr(reference, "final_alpha_cumprod", None)
    if not isinstance(table, torch.Tensor) or final is None:
        return None
    a_t = table.detach().to("cpu", torch.float32)[int(timestep)]
    a_p = table.detach().to("cpu", torch.float32)[lands_on] if lands_on >= 0 else torch.as_tensor(final).cpu().float()
    variance = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
    std = eta * variance**0.5
    rounded = float(1 - a_p - std**2)
    t64, p64 = float(a_t), float(a_p)
    ratio = t64 / p64
    exact = (1 - p64) / (1 - t64) * ((1 - eta**2) * (1 - ratio) + ratio * (1 - p64))
    if not rounded >= 0:
        return math.inf
    return abs(math.sqrt(rounded) - math.sqrt(max(exact, 0.0)))
