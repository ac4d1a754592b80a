"""What a scheduler comparison measured: per-step errors, who is closer to the exact result, and why.

A step *differs* when the candidate's ``prev_sample`` is further than ``rtol`` from the reference's
(or its x̂0 further than ``x0_rtol``). A difference is *explained in the candidate's favour* when,
at that step, the candidate is within ``rtol`` of the exact float64 result and closer to it than
the reference, and one of the documented deliberate differences in :data:`DIFFERENCES` was
verified to cause it (see :mod:`ddim_sched.testing.exact`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DIFFERENCES", "MIGRATION_DOC", "Difference", "MatchReport", "StepError"]

MIGRATION_DOC = "docs/migration.md"

# Rows of the per-step table shown by default; longer runs show the first, the differing and the worst.
_MAX_ROWS = 24


@dataclass(frozen=True)
class Difference:
    """A documented deliberate difference between ddim_sched and diffusers that a comparison recognises.

    Attributes:
        key: Its name in :data:`DIFFERENCES` and in :attr:`StepError.cause`.
        summary: One sentence: what each library does.
        section: The title of the section of docs/migration.md that documents it.
    """

    key: str
    summary: str
    section: str

    def describe(self) -> str:
        """``summary (see docs/migration.md, section '...')``."""
        return f"{self.summary} (see {MIGRATION_DOC}, section '{self.section}')"


DIFFERENCES: dict[str, Difference] = {
    d.key: d
    for d in (
        Difference(
            "trailing_extra_step",
            "diffusers' trailing spacing returns S + 1 timesteps ending at -1 and takes an extra step from "
            "t = -1, which indexes the noisiest alpha_bar; ddim_sched visits exactly S timesteps",
            "Trailing spacing yields exactly S timesteps",
        ),
        Difference(
            "successor_rule",
            "ddim_sched (prev_timestep_rule='schedule') lands each step on the next visited timestep, "
            "diffusers on t - T // S",
            "`prev_timestep` and `prev_timestep_rule`: where a step lands",
        ),
        Difference(
            "zero_snr_rounding",
            "diffusers' float32 1 - alpha_bar_prev - sigma^2 cancels (slightly negative: NaN, or off by about "
            "sqrt(float32 eps)) where ddim_sched equals the float64 result",
            "η = 1 with zero terminal SNR stays finite",
        ),
        Difference(
            "half_precision",
            "diffusers steps half-precision samples in half precision, ddim_sched in float32",
            "Half precision is stepped in float32",
        ),
        Difference(
            "float64_tables",
            "the reference's own step with float64 noise tables agrees with ddim_sched: the reference's float32 "
            "tables and arithmetic round",
            "Noise tables in float64",
        ),
    )
}


def _finite_or_inf(value: float | None) -> float:
    return 0.0 if value is None else math.inf if math.isnan(value) else value


def _json_number(value: float | None) -> float | str | None:
    """JSON has no NaN or infinity: those are written as the strings "nan" and "inf"."""
    if value is None or math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else "inf"


@dataclass(frozen=True)
class StepError:
    """The errors after one step, relative L2: ||a − b|| / ||b||.

    Attributes:
        index: Position of the step in the schedule (0 = first, noisiest).
        timestep: The timestep stepped from.
        prev_sample: Candidate against reference, for the step's result x_prev (the trajectory so far).
        pred_original_sample: The same for x̂0, or None when either scheduler returns none.
        note: Why an error is infinite (non-finite values in one output), else "".
        candidate_exact: Candidate's ``prev_sample`` against the exact float64 result, or None
            when no exact result is available.
        reference_exact: Reference's ``prev_sample`` against the exact float64 result, or None.
        cause: For a step that differs: the key in :data:`DIFFERENCES` of the deliberate difference
            verified to cause it, set only when the candidate is within rtol of the exact result and
            closer to it than the reference; else None.
        landings: (candidate, reference) timestep each step lands on, when both are known.
    """

    index: int
    timestep: int
    prev_sample: float
    pred_original_sample: float | None = None
    note: str = ""
    candidate_exact: float | None = None
    reference_exact: float | None = None
    cause: str | None = None
    landings: tuple[int, int] | None = None

    @property
    def closer(self) -> str:
        """Which scheduler is closer to the exact result: "candidate", "reference", "tie" or "-" (unknown)."""
        if self.candidate_exact is None or self.reference_exact is None:
            return "-"
        c, r = _finite_or_inf(self.candidate_exact), _finite_or_inf(self.reference_exact)
        return "tie" if c == r else "candidate" if c < r else "reference"


@dataclass
class MatchReport:
    """What :func:`~ddim_sched.testing.compare_schedulers` measured; ``str(report)`` is the per-step table.

    Attributes:
        candidate, reference: Descriptions of the two schedulers (class and module).
        timesteps: The timesteps both visited and that were compared.
        steps: One :class:`StepError` per compared step, in order.
        rtol: The bound on every step's ``prev_sample`` error.
        x0_rtol: The bound on every step's ``pred_original_sample`` error, or None (not checked).
        settings: num_inference_steps, shape, dtype, eta, seed, device, model.
        config_differences: Lines naming the config keys whose values differ, and keys only one has.
        accept_explained: Whether :attr:`passed` accepts differences explained in the candidate's favour.
        exact: How the exact float64 result was obtained, or why it is not available.
        exact_available: Whether ``candidate_exact``/``reference_exact`` were measured.
        extra_reference_timesteps: Timesteps the reference visits after the common ones (diffusers'
            trailing -1); not compared.
        schedule_note: What the extra reference timesteps read (diffusers' −1: the noisiest ᾱ).
        schedule_error: Why the timesteps could not be compared ("" when they could).
        reference_error: What the reference raised, and where ("" when it did not raise).
    """

    candidate: str
    reference: str
    timesteps: list[int]
    steps: list[StepError]
    rtol: float
    x0_rtol: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    config_differences: list[str] = field(default_factory=list)
    accept_explained: bool = False
    exact: str = ""
    exact_available: bool = False
    extra_reference_timesteps: list[int] = field(default_factory=list)
    schedule_note: str = ""
    schedule_error: str = ""
    reference_error: str = ""

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

    def differs(self, step: StepError) -> bool:
        """Whether ``step`` is over rtol (or over x0_rtol, when set)."""
        over = _finite_or_inf(step.prev_sample) > self.rtol
        return over or (self.x0_rtol is not None and _finite_or_inf(step.pred_original_sample) > self.x0_rtol)

    def explained(self, step: StepError) -> bool:
        """Whether ``step`` differs only by a deliberate difference, in the candidate's favour.

        An x0_rtol violation alone is never explained: the causes are verified on ``prev_sample``.
        """
        x0_over = self.x0_rtol is not None and _finite_or_inf(step.pred_original_sample) > self.x0_rtol
        return self.differs(step) and step.cause is not None and not x0_over

    @property
    def unexplained_steps(self) -> list[StepError]:
        """The steps that differ without an explanation in the candidate's favour."""
        return [s for s in self.steps if self.differs(s) and not self.explained(s)]

    @property
    def causes(self) -> list[str]:
        """Keys of :data:`DIFFERENCES` that explain differences here, in the table's order."""
        found = {s.cause for s in self.steps if self.explained(s)}
        if self.extra_reference_timesteps:
            found.add("trailing_extra_step")
        return [key for key in DIFFERENCES if key in found]

    @property
    def matched(self) -> bool:
        """No step differs, the timesteps are identical and the reference did not raise."""
        clean = not (self.schedule_error or self.reference_error or self.extra_reference_timesteps)
        return clean and not any(self.differs(s) for s in self.steps)

    @property
    def verdict(self) -> str:
        """ "MATCH", "EXPLAINED" (every difference explained in the candidate's favour) or "DIFFER"."""
        if self.matched:
            return "MATCH"
        if self.schedule_error or self.reference_error or self.unexplained_steps:
            return "DIFFER"
        return "EXPLAINED"

    @property
    def passed(self) -> bool:
        """MATCH, or EXPLAINED when ``accept_explained`` is set."""
        return self.verdict == "MATCH" or (self.accept_explained and self.verdict == "EXPLAINED")

    def format(self, max_rows: int | None = _MAX_ROWS) -> str:
        """The report as text; runs longer than ``max_rows`` steps (None: no limit) are abridged."""
        lines = [f"candidate {self.candidate} vs reference {self.reference}"]
        lines.append(", ".join(f"{k}={v}" for k, v in self.settings.items()))
        if self.schedule_error:
            lines.append(self.schedule_error)
        if self.steps:
            lines += self._table(max_rows)
        lines += self._summary()
        if self.config_differences:
            lines.append("config differences:")
            lines.extend(f"  {d}" for d in self.config_differences)
        return "\n".join(lines + self._verdict_lines())

    def __str__(self) -> str:
        return self.format()

    def _table(self, max_rows: int | None) -> list[str]:
        lines = [
            f"{'step':>4}  {'timestep':>8}  {'prev_sample':>11}  {'x0':>9}  {'cand-exact':>10}  {'ref-exact':>9}"
            f"  {'closer':>9}"
        ]
        differing = [s.index for s in self.steps if self.differs(s)]
        worst = self.worst_step
        show = set(range(len(self.steps)))
        if max_rows is not None and len(self.steps) > max_rows:
            show = set(range(5)) | set(differing[:10]) | {len(self.steps) - 1} | ({worst.index} if worst else set())
        previous = -1
        for s in self.steps:
            if s.index not in show:
                continue
            if s.index != previous + 1:
                lines.append(f"{'...':>4}")
            x0 = "-" if s.pred_original_sample is None else f"{s.pred_original_sample:.2e}"
            c_e = "-" if s.candidate_exact is None else f"{s.candidate_exact:.2e}"
            r_e = "-" if s.reference_exact is None else f"{s.reference_exact:.2e}"
            mark = ""
            if self.differs(s):
                mark = f"  ~ {s.cause}" if self.explained(s) else "  *"
            note = f"  ({s.note})" if s.note else ""
            landing = ""
            if s.landings is not None and s.landings[0] != s.landings[1]:
                landing = f"  lands on {s.landings[0]} vs {s.landings[1]}"
            lines.append(
                f"{s.index:>4}  {s.timestep:>8}  {s.prev_sample:>11.2e}  {x0:>9}  {c_e:>10}  {r_e:>9}  "
                f"{s.closer:>9}{mark}{landing}{note}"
            )
            previous = s.index
        return lines

    def _summary(self) -> list[str]:
        lines = []
        bounds = f"rtol {self.rtol:.0e}" + ("" if self.x0_rtol is None else f", x0_rtol {self.x0_rtol:.0e}")
        worst = self.worst_step
        if worst is not None:
            summary = (
                f"max relative error of prev_sample {self.max_error:.2e} at step {worst.index} "
                f"(timestep {worst.timestep}); of pred_original_sample {self.max_x0_error:.2e}"
            )
            differing = [s.index for s in self.steps if self.differs(s)]
            if not differing:
                lines.append(f"{summary}: within {bounds}")
            else:
                lines.append(
                    f"{summary}: over {bounds} at {len(differing)} step(s), first at step {differing[0]}; "
                    "* marks unexplained steps, ~ steps explained in the candidate's favour"
                )
        elif not self.schedule_error:
            lines.append("no steps")
        if self.extra_reference_timesteps:
            lines.append(
                f"the reference visits {self.extra_reference_timesteps} after the {len(self.timesteps)} common "
                "timesteps (not compared)" + (f"; {self.schedule_note}" if self.schedule_note else "")
            )
        if self.reference_error:
            lines.append(self.reference_error)
        lines.append(("exact reference: " if self.exact_available else "no exact reference: ") + self.exact)
        return lines

    def _verdict_lines(self) -> list[str]:
        """What the verdict means, in words."""
        if self.verdict == "MATCH":
            return ["verdict MATCH: the timesteps are identical and every step is within the bounds"]
        if self.verdict == "EXPLAINED":
            lines = [
                "verdict EXPLAINED: every difference is a documented deliberate difference in the candidate's "
                "favour (within rtol of the exact float64 result and closer to it than the reference):"
            ]
            return lines + [f"  {key}: {DIFFERENCES[key].describe()}" for key in self.causes]
        unexplained = len(self.unexplained_steps)
        if self.reference_error or self.schedule_error:
            reason = "the reference raised" if self.reference_error else "the timesteps differ"
        else:
            reason = (
                f"{unexplained} step(s) differ without a deliberate difference in the candidate's favour to "
                "explain them (marked *)"
            )
        return [f"verdict DIFFER: {reason}"]

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (non-finite errors as the strings "nan"/"inf")."""
        steps = []
        for s in self.steps:
            row = asdict(s)
            for key in ("prev_sample", "pred_original_sample", "candidate_exact", "reference_exact"):
                row[key] = _json_number(row[key])
            row["closer"] = s.closer
            row["differs"] = self.differs(s)
            row["explained"] = self.explained(s)
            steps.append(row)
        return {
            "candidate": self.candidate,
            "reference": self.reference,
            "verdict": self.verdict,
            "passed": self.passed,
            "causes": self.causes,
            "timesteps": self.timesteps,
            "extra_reference_timesteps": self.extra_reference_timesteps,
            "schedule_note": self.schedule_note,
            "rtol": self.rtol,
            "x0_rtol": self.x0_rtol,
            "max_error": _json_number(self.max_error),
            "settings": {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in self.settings.items()},
            "exact": self.exact,
            "exact_available": self.exact_available,
            "schedule_error": self.schedule_error,
            "reference_error": self.reference_error,
            "config_differences": self.config_differences,
            "steps": steps,
        }
