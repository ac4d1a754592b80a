"""The comparison loop: the candidate's, the reference's and the exact trajectory, step by step.

Used by :func:`ddim_sched.testing.compare_schedulers`, which validates the arguments, compares the
timesteps and builds the exact reference; this module steps and classifies.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from .exact import ExactReference, direction_rounding, landing, private_copy, relative_error, step_output
from .report import MatchReport, StepError

Model = Callable[[torch.Tensor, Any], torch.Tensor]

# A float32 evaluation of √(1 − ᾱ_prev − σ²) further than this fraction of rtol from float64 is a cancellation.
_ROUNDING_FRACTION = 0.1
_HALF_DTYPES = (torch.float16, torch.bfloat16)


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


def _step_with_noise(
    scheduler: Any, model_output: torch.Tensor, t: Any, sample: torch.Tensor, eta: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """``scheduler.step`` with explicit η-noise; the prev_sample."""
    kwargs: dict[str, Any] = {"eta": eta} if eta != 0 else {}
    if eta != 0:
        kwargs["variance_noise"] = noise
    prev = step_output(scheduler.step(model_output, t, sample, **kwargs), "prev_sample", 0)
    if prev is None:
        raise TypeError("step returned no prev_sample")
    return prev


class ComparisonLoop:
    """One comparison: the candidate's, the reference's and the exact trajectory, and what explains differences.

    Classification state: ``diverged`` (the two landed on different timesteps at some step so far),
    ``rounding`` (the reference's float32 direction term cancelled at some step so far) and
    ``origin`` (the cause found at the first explained step, carried by the steps after it).
    """

    def __init__(
        self,
        report: MatchReport,
        candidate: Any,
        reference: Any,
        exact: ExactReference | None,
        model: Model,
        options: dict[str, Any],
    ) -> None:
        self.report, self.candidate, self.reference, self.exact, self.model = report, candidate, reference, exact, model
        self.shape, self.dtype, self.eta = options["shape"], options["dtype"], options["eta"]
        self.seed, self.device, self.allow_nonfinite = options["seed"], options["device"], options["allow_nonfinite"]
        self.probe = private_copy(reference) if exact is not None else None
        self.diverged = self.rounding = False
        self.origin: str | None = None
        noise = torch.randn(self.shape, generator=torch.Generator().manual_seed(self.seed), dtype=torch.float32)
        self.x = {
            role: (noise * float(getattr(s, "init_noise_sigma", 1.0))).to(device=self.device, dtype=self.dtype)
            for role, s in (("candidate", candidate), ("reference", reference))
        }
        self.x_exact = self.x["reference"].detach().to("cpu", torch.float64)

    def run(self) -> None:
        with torch.no_grad():
            for index, t in enumerate(list(self.reference.timesteps)[: len(self.report.timesteps)]):
                if not self._step(index, t):
                    break

    def _step(self, index: int, t: Any) -> bool:
        """One step of all three; False when the reference raised."""
        x_in = self.x["reference"]
        outputs = {}
        for role, scheduler in (("candidate", self.candidate), ("reference", self.reference)):
            model_output = self.model(self.x[role], t)
            kwargs = _step_kwargs(scheduler, role, self.eta, self.seed, index)
            try:
                result = scheduler.step(model_output, t, self.x[role], **kwargs)
            except Exception as err:
                if role == "candidate":
                    raise
                self.report.reference_error = (
                    f"the reference's step raised {type(err).__name__} at step {index} (timestep {int(t)}): {err}"
                )
                return False
            prev = step_output(result, "prev_sample", 0)
            if prev is None:
                raise TypeError(f"the {role}'s step returned no prev_sample")
            self.x[role] = prev
            outputs[role] = (model_output, step_output(result, "pred_original_sample", 1))
        landings = (landing(self.candidate, int(t)), landing(self.reference, int(t)))
        lands_on = landings[0] if landings[0] is not None else landings[1]
        noise = None
        if self.eta != 0:
            # What the schedulers' fresh generators draw (as diffusers' randn_tensor does), for the exact step.
            generator = torch.Generator().manual_seed(self.seed + 1 + index)
            noise = torch.randn(self.shape, generator=generator, dtype=self.dtype)
        exact = self._exact_step(index, t, noise, lands_on)
        self._observe(t, landings)
        self.report.steps.append(self._measure(index, t, landings, exact, outputs, x_in, noise))
        return True

    def _exact_step(self, index: int, t: Any, noise: torch.Tensor | None, lands_on: int | None) -> torch.Tensor | None:
        if self.exact is None:
            return None
        try:
            model_output = self.model(self.x_exact.to(self.device), t).detach().to("cpu", torch.float64)
            noise64 = None if noise is None else noise.to(torch.float64)
            self.x_exact, _ = self.exact.step(model_output, int(t), self.x_exact, self.eta, noise64, lands_on)
        except Exception as err:
            self.report.exact = f"{self.exact.describe()} raised {type(err).__name__} at step {index}: {err}"
            self.report.exact_available = False
            self.exact = None
            return None
        return self.x_exact

    def _observe(self, t: Any, landings: tuple[int | None, int | None]) -> None:
        """Record, before classifying this step, whether it lands apart or its direction term cancels."""
        lc, lr = landings
        if lc is not None and lr is not None and lc != lr:
            self.diverged = True
        if self.eta != 0 and lr is not None:
            rounding = direction_rounding(self.reference, int(t), lr, self.eta)
            if rounding is not None and rounding >= _ROUNDING_FRACTION * self.report.rtol:
                self.rounding = True

    def _measure(
        self,
        index: int,
        t: Any,
        landings: tuple[int | None, int | None],
        exact: torch.Tensor | None,
        outputs: dict[str, Any],
        x_in: torch.Tensor,
        noise: torch.Tensor | None,
    ) -> StepError:
        c, r = self.x["candidate"], self.x["reference"]
        prev_error, note = relative_error(c, r, self.allow_nonfinite)
        x0_error = None
        x0_c, x0_r = outputs["candidate"][1], outputs["reference"][1]
        if x0_c is not None and x0_r is not None:
            x0_error, x0_note = relative_error(x0_c, x0_r, self.allow_nonfinite)
            note = note or x0_note
        c_exact = r_exact = None
        if exact is not None:
            c_exact, r_exact = relative_error(c, exact)[0], relative_error(r, exact)[0]
        lc, lr = landings
        both = (lc, lr) if lc is not None and lr is not None else None
        step = StepError(index, int(t), prev_error, x0_error, note, c_exact, r_exact, landings=both)
        wins = step.closer == "candidate" and c_exact is not None and c_exact <= self.report.rtol
        if not (self.report.differs(step) and wins):
            return step
        cause, why = self._cause(t, outputs["reference"][0], x_in, r, noise, landings)
        return StepError(index, int(t), prev_error, x0_error, note or why, c_exact, r_exact, cause, both)

    def _cause(
        self,
        t: Any,
        model_output: torch.Tensor,
        x_in: torch.Tensor,
        r_out: torch.Tensor,
        noise: torch.Tensor | None,
        landings: tuple[int | None, int | None],
    ) -> tuple[str | None, str]:
        """The deliberate difference behind a step the candidate wins, verified; (None, why) when none is."""
        if self.diverged:
            return "successor_rule", ""
        if self.origin is not None:
            return self.origin, ""
        try:
            if noise is not None:
                redrawn = _step_with_noise(self.probe, model_output, t, x_in, self.eta, noise)
                if relative_error(redrawn, r_out, allow_nonfinite=True)[0] > 1e-6:
                    return None, "the reference does not draw its noise as torch.randn with the step's generator"
            if self.rounding:
                self.origin = "zero_snr_rounding"
            elif self.dtype in _HALF_DTYPES and self._half_precision_verified(
                t, model_output, x_in, r_out, noise, landings
            ):
                self.origin = "half_precision"
            else:
                self.origin = "float64_tables"
        except Exception as err:
            return None, f"could not verify the cause: {type(err).__name__}: {err}"
        return self.origin, ""

    def _half_precision_verified(
        self,
        t: Any,
        model_output: torch.Tensor,
        x_in: torch.Tensor,
        r_out: torch.Tensor,
        noise: torch.Tensor | None,
        landings: tuple[int | None, int | None],
    ) -> bool:
        """Whether the reference's own step, fed the same inputs in float32, is closer to exact than in half."""
        if self.exact is None:
            return False
        in_float = _step_with_noise(
            self.probe, model_output.float(), t, x_in.float(), self.eta, None if noise is None else noise.float()
        )
        lands_on = landings[0] if landings[0] is not None else landings[1]
        local, _ = self.exact.step(
            model_output.to("cpu", torch.float64),
            int(t),
            x_in.to("cpu", torch.float64),
            self.eta,
            None if noise is None else noise.to(torch.float64),
            lands_on,
        )
        return relative_error(in_float, local)[0] < relative_error(r_out, local)[0]
