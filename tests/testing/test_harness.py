"""ddim_sched.testing: passes when schedulers agree, says who is closer to exact and why when they don't.

What diffusers itself does (its rounding, a NaN) varies across CPUs and releases, so no test here
asserts it: tests that run diffusers assert only what holds whatever diffusers did, and the
deliberate differences are exercised with references built for the test whose defects are known.
"""

from __future__ import annotations

import json
import math

import diffusers
import pytest
import torch

from ddim_sched import DDIMScheduler, DDIMSchedulerOutput
from ddim_sched.testing import (
    DEFAULT_RTOL,
    DIFFERENCES,
    MatchReport,
    StepError,
    assert_schedulers_match,
    compare_schedulers,
    default_model,
    mixture_model,
)
from ddim_sched.testing.exact import direction_rounding
from ddim_sched.toy import GaussianMixture

SD = dict(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)
ZERO_SNR = dict(SD, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")
SHAPE = (2, 4, 8, 8)
# Small tensors: one torch thread is faster than handing each op to a second one.
pytestmark = pytest.mark.usefixtures("one_thread")


class TupleScheduler:
    """A duck-typed scheduler: wraps ours, returns tuples, and scales x̂0 by ``x0_scale``; no tables."""

    def __init__(self, inner, x0_scale: float = 1.0):
        self.inner, self.x0_scale = inner, x0_scale

    def set_timesteps(self, num_inference_steps, device=None):
        self.inner.set_timesteps(num_inference_steps, device=device)

    @property
    def timesteps(self):
        return self.inner.timesteps

    def step(self, model_output, timestep, sample, eta=0.0, generator=None):
        prev, x0 = self.inner.step(model_output, timestep, sample, eta=eta, generator=generator, return_dict=False)
        return prev, x0 * self.x0_scale


class NoEtaScheduler(TupleScheduler):
    def step(self, model_output, timestep, sample):
        return super().step(model_output, timestep, sample)


class _FixedEta(TupleScheduler):
    def __init__(self, inner, eta):
        super().__init__(inner)
        self.fixed_eta = eta

    def step(self, model_output, timestep, sample, eta=0.0, generator=None):
        return super().step(model_output, timestep, sample, eta=self.fixed_eta, generator=generator)


class Defective(DDIMScheduler):
    """A reference with a defect of known shape, for the explanations (our scheduler, so its tables are exact).

    ``poison_timestep``: that step returns NaN in every dtype (a real NaN, exact result included).
    ``defect_dtypes``: in these sample dtypes, every step's x_prev is scaled by (1 + ``defect``), as
    rounding would; float64 (the exact result) is clean. ``flip_generator_noise``: noise drawn
    from a generator is negated (variance_noise is used as given).
    """

    poison_timestep: int | None = None
    defect_dtypes: tuple = ()
    defect = 0.0
    flip_generator_noise = False

    def step(
        self,
        model_output,
        timestep,
        sample,
        eta=0.0,
        use_clipped_model_output=False,
        generator=None,
        variance_noise=None,
        return_dict=True,
        prev_timestep=None,
        out=None,
    ):
        if self.flip_generator_noise and generator is not None and eta != 0:
            variance_noise = -torch.randn(sample.shape, generator=generator, dtype=sample.dtype)
            generator = None
        prev, x0 = super().step(
            model_output,
            timestep,
            sample,
            eta=eta,
            generator=generator,
            variance_noise=variance_noise,
            return_dict=False,
            prev_timestep=prev_timestep,
        )
        if sample.dtype in self.defect_dtypes:
            prev = (prev.float() * (1 + self.defect)).to(prev.dtype)
        if self.poison_timestep is not None and int(timestep) == self.poison_timestep:
            prev = torch.full_like(prev, math.nan)
        return DDIMSchedulerOutput(prev, x0) if return_dict else (prev, x0)


def defective(config, **defects):
    scheduler = Defective(**config)
    for name, value in defects.items():
        setattr(scheduler, name, value)
    return scheduler


# ---------------------------------------------------------------------- agreement


def test_equal_configs_match_exactly():
    report = assert_schedulers_match(DDIMScheduler(**SD), DDIMScheduler.from_config(SD), 10, SHAPE)
    assert isinstance(report, MatchReport) and report.passed and report.verdict == "MATCH"
    assert report.max_error == 0.0 and report.max_x0_error == 0.0
    assert report.timesteps == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert [s.timestep for s in report.steps] == report.timesteps
    assert report.exact_available and all(s.candidate_exact <= 1e-5 for s in report.steps)
    assert "within rtol 1e-04" in str(report) and "verdict MATCH" in str(report)


@pytest.mark.parametrize(
    "config, eta",
    [(SD, 0.0), (SD, 1.0), (ZERO_SNR, 0.0), (ZERO_SNR, 0.5), (ZERO_SNR, 1.0), ({}, 0.0), ({}, 1.0)],
    ids=["sd-eta0", "sd-eta1", "zero_snr-eta0", "zero_snr-eta0.5", "zero_snr-eta1", "defaults-eta0", "defaults-eta1"],
)
def test_against_diffusers_ddim_sched_is_exact_and_every_difference_is_explained(config, eta, record_property):
    # Whatever diffusers' float32 arithmetic gives on this CPU (zero SNR at eta=1: NaN on some, a 2e-4
    # error on others, exact on yet others), ddim_sched is within rtol of the exact float64 result at
    # every step, and any difference from diffusers is explained in its favour.
    report = assert_schedulers_match(
        DDIMScheduler(**config), diffusers.DDIMScheduler(**config), 20, SHAPE, eta=eta, accept_explained=True
    )
    assert report.exact_available and len(report.steps) == 20
    assert all(s.candidate_exact <= report.rtol for s in report.steps)
    if config is ZERO_SNR and eta == 1.0 and report.verdict == "EXPLAINED":
        # diffusers differs here only through the cancellation of 1 - alpha_bar_prev - sigma^2 at alpha_bar_t = 0.
        assert report.causes == ["zero_snr_rounding"]
    record_property("diffusers", f"verdict {report.verdict}, causes {report.causes}, max error {report.max_error:.2e}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_against_diffusers(dtype, record_property):
    report = assert_schedulers_match(
        DDIMScheduler(**SD), diffusers.DDIMScheduler(**SD), 10, SHAPE, dtype=dtype, accept_explained=True
    )
    assert report.rtol == DEFAULT_RTOL[dtype]
    assert all(s.candidate_exact <= DEFAULT_RTOL[dtype] for s in report.steps)
    record_property("diffusers", f"verdict {report.verdict}, max error {report.max_error:.2e}")


# ---------------------------------------------------------------------- real differences


def test_different_configs_fail_and_the_reference_is_closer():
    with pytest.raises(AssertionError) as failure:
        assert_schedulers_match(
            DDIMScheduler(**SD), diffusers.DDIMScheduler(**dict(SD, beta_end=0.02)), 10, SHAPE, accept_explained=True
        )
    message = str(failure.value)
    assert "beta_end: candidate=0.012, reference=0.02" in message
    assert "over rtol 1e-04 at 10 step(s), first at step 0" in message and "verdict DIFFER" in message
    rows = [line for line in message.splitlines() if line.strip().split(" ")[0].isdigit()]
    # The exact result follows the reference's config, so the reference is closer at every step.
    assert len(rows) == 10 and all(row.split()[6] == "reference" and row.rstrip().endswith("*") for row in rows)


def test_the_error_is_relative_and_bounded_by_rtol():
    # A 1e-3 change of beta_end fails at rtol 1e-6 and passes at a rtol above its measured error.
    candidate, reference = DDIMScheduler(**SD), DDIMScheduler(**dict(SD, beta_end=0.012 * 1.001))
    with pytest.raises(AssertionError):
        assert_schedulers_match(candidate, reference, 10, SHAPE, rtol=1e-6)
    report = assert_schedulers_match(candidate, reference, 10, SHAPE, rtol=1.0)
    assert 1e-6 < report.max_error < 1.0
    assert assert_schedulers_match(candidate, reference, 10, SHAPE, rtol=report.max_error).passed


def test_other_timestep_lists_fail_before_sampling():
    with pytest.raises(AssertionError, match=r"timesteps differ, first at index 0") as failure:
        assert_schedulers_match(
            DDIMScheduler(timestep_spacing="linspace"),
            DDIMScheduler(timestep_spacing="leading"),
            10,
            SHAPE,
            accept_explained=True,
        )
    assert "candidate (10): [999, 888" in str(failure.value) and "verdict DIFFER" in str(failure.value)


def test_a_wrong_candidate_is_not_explained():
    # The candidate is the defective one: further from exact than the reference, so nothing is explained.
    candidate = defective(SD, defect_dtypes=(torch.float32,), defect=1e-3)
    report = compare_schedulers(candidate, DDIMScheduler(**SD), 10, SHAPE, accept_explained=True)
    assert report.verdict == "DIFFER" and not report.passed
    assert all(s.closer == "reference" and s.cause is None for s in report.steps)


# ---------------------------------------------------------------------- explained differences


def test_a_float32_defect_of_the_reference_is_explained_by_precision():
    reference = defective(SD, defect_dtypes=(torch.float32,), defect=1e-3)  # clean in float64
    with pytest.raises(AssertionError, match="verdict EXPLAINED") as failure:
        assert_schedulers_match(DDIMScheduler(**SD), reference, 10, SHAPE)
    assert "* marks unexplained" in str(failure.value)
    report = assert_schedulers_match(DDIMScheduler(**SD), reference, 10, SHAPE, accept_explained=True)
    assert report.verdict == "EXPLAINED" and report.causes == ["float64_tables"]
    assert all(s.closer == "candidate" and s.cause == "float64_tables" for s in report.steps)
    assert DIFFERENCES["float64_tables"].section in str(report)


def test_a_half_precision_defect_is_named_as_such():
    reference = defective(SD, defect_dtypes=(torch.float16,), defect=2e-2)  # clean in float32 and float64
    report = compare_schedulers(DDIMScheduler(**SD), reference, 10, SHAPE, dtype=torch.float16, accept_explained=True)
    assert report.passed and report.causes == ["half_precision"]


def test_the_successor_rule_is_explained_against_diffusers_and_ddim_sched_references():
    # ddim_sched lands on the next visited timestep; the exact result is computed landing there too
    # (diffusers: its table entry for t - T//S replaced; ddim_sched: prev_timestep=), so the candidate
    # must equal it at every step.
    candidate = DDIMScheduler(timestep_spacing="linspace", prev_timestep_rule="schedule")
    for reference in (diffusers.DDIMScheduler(timestep_spacing="linspace"), DDIMScheduler(timestep_spacing="linspace")):
        report = compare_schedulers(candidate, reference, 10, SHAPE, eta=0.5, accept_explained=True)
        assert report.passed and report.causes == ["successor_rule"], str(report)
        assert report.steps[0].landings == (888, 899)
        assert all(s.candidate_exact <= 1e-5 for s in report.steps)


def test_the_trailing_extra_timestep_is_set_aside():
    # diffusers' trailing S=61 (documented in docs/migration.md): the common 61 steps are compared.
    candidate = DDIMScheduler(timestep_spacing="trailing")
    reference = diffusers.DDIMScheduler(timestep_spacing="trailing")
    with pytest.raises(AssertionError, match="verdict EXPLAINED"):
        assert_schedulers_match(candidate, reference, 61, SHAPE)
    report = assert_schedulers_match(candidate, reference, 61, SHAPE, accept_explained=True)
    assert report.extra_reference_timesteps == [-1] and len(report.steps) == 61
    assert report.causes == ["trailing_extra_step"] and "alphas_cumprod[-1]" in str(report)


def test_a_reference_drawing_other_noise_is_not_explained():
    reference = defective(SD, flip_generator_noise=True)
    report = compare_schedulers(DDIMScheduler(**SD), reference, 5, SHAPE, eta=1.0, accept_explained=True)
    assert report.verdict == "DIFFER"
    assert "does not draw its noise" in report.steps[0].note


def test_direction_rounding_is_float32_rounding_away_from_cancellation():
    reference = diffusers.DDIMScheduler(**SD)
    reference.set_timesteps(10)
    for t, lands_on in [(901, 801), (501, 401), (101, 1), (1, -1)]:
        for eta in (0.0, 0.5, 1.0):
            assert direction_rounding(reference, t, lands_on, eta) <= 1e-6
    assert direction_rounding(TupleScheduler(DDIMScheduler()), 901, 801, 1.0) is None


# ---------------------------------------------------------------------- NaN, errors, arguments


def test_nan_in_the_reference_is_reported():
    reference = defective(SD, poison_timestep=601)  # NaN in every dtype: the exact result is NaN too
    with pytest.raises(AssertionError, match=r"NaN/Inf in reference") as failure:
        assert_schedulers_match(DDIMScheduler(**SD), reference, 10, SHAPE, accept_explained=True)
    report_text = str(failure.value)
    assert "verdict DIFFER" in report_text
    rows = {int(line.split()[1]): line for line in report_text.splitlines() if line.strip()[:1].isdigit()}
    assert rows[701].split()[2] == "0.00e+00" and rows[601].split()[2] == "inf"


def test_nan_in_both_is_a_mismatch_unless_allowed():
    nan_both = [defective(SD, poison_timestep=601) for _ in range(2)]
    with pytest.raises(AssertionError, match=r"NaN/Inf in candidate and reference"):
        assert_schedulers_match(*nan_both, 10, SHAPE)
    assert assert_schedulers_match(*nan_both, 10, SHAPE, allow_nonfinite=True).passed


def test_a_reference_that_raises_is_reported():
    class Raises(DDIMScheduler):
        def step(self, model_output, timestep, sample, **kwargs):
            if int(timestep) < 500:
                raise RuntimeError("boom")
            return super().step(model_output, timestep, sample, **kwargs)

    report = compare_schedulers(DDIMScheduler(**SD), Raises(**SD), 10, SHAPE)
    assert report.verdict == "DIFFER" and len(report.steps) == 5
    assert "raised RuntimeError at step 5 (timestep 401): boom" in report.reference_error in str(report)


@pytest.mark.parametrize("name", ["rtol", "x0_rtol"])
@pytest.mark.parametrize(
    "value, error",
    [(math.nan, ValueError), (-1e-4, ValueError), (math.inf, ValueError), ("1e-4", TypeError), (True, TypeError)],
)
def test_bad_tolerances_are_rejected(name, value, error):
    with pytest.raises(error, match=rf"{name} must be .*got {value!r}"):
        assert_schedulers_match(DDIMScheduler(**SD), DDIMScheduler(**SD), 3, SHAPE, **{name: value})


def test_a_nan_rtol_cannot_pass_a_wrong_candidate():
    with pytest.raises(ValueError, match="rtol"):
        assert_schedulers_match(DDIMScheduler(**SD), DDIMScheduler(**dict(SD, beta_end=0.02)), 3, SHAPE, rtol=math.nan)


def test_x0_errors_are_reported_and_checked_on_request():
    candidate = TupleScheduler(DDIMScheduler(**SD), x0_scale=1.01)
    report = assert_schedulers_match(candidate, DDIMScheduler(**SD), 5, SHAPE)
    assert report.max_error == 0.0
    assert report.max_x0_error == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(AssertionError, match="x0_rtol 1e-04"):
        assert_schedulers_match(TupleScheduler(DDIMScheduler(**SD), 1.01), DDIMScheduler(**SD), 5, SHAPE, x0_rtol=1e-4)


# ---------------------------------------------------------------------- duck typing, noise, model


def test_duck_typed_schedulers_and_eta_checks():
    report = assert_schedulers_match(TupleScheduler(DDIMScheduler(**SD)), DDIMScheduler(**SD), 5, SHAPE, eta=1.0)
    assert report.max_error == 0.0
    assert assert_schedulers_match(NoEtaScheduler(DDIMScheduler(**SD)), DDIMScheduler(**SD), 5, SHAPE).passed
    with pytest.raises(TypeError, match="candidate's step"):
        assert_schedulers_match(NoEtaScheduler(DDIMScheduler(**SD)), DDIMScheduler(**SD), 5, SHAPE, eta=0.5)


def test_a_reference_without_tables_has_no_exact_result():
    report = compare_schedulers(DDIMScheduler(**SD), TupleScheduler(DDIMScheduler(**SD)), 5, SHAPE)
    assert report.verdict == "MATCH" and not report.exact_available
    assert "no exact reference: the reference has no config mapping" in str(report)
    assert all(s.candidate_exact is None and s.closer == "-" for s in report.steps)


def test_eta_noise_is_shared_and_depends_on_the_seed():
    a = assert_schedulers_match(DDIMScheduler(**SD), DDIMScheduler(**SD), 5, SHAPE, eta=1.0, seed=3)
    assert a.max_error == 0.0
    with pytest.raises(AssertionError):
        assert_schedulers_match(
            TupleScheduler(DDIMScheduler(**SD)), _FixedEta(DDIMScheduler(**SD), eta=0.5), 5, SHAPE, eta=1.0
        )


def test_a_user_model_is_called_for_both_schedulers_and_the_exact_result():
    calls = []

    def model(sample, timestep):
        calls.append((int(timestep), sample.dtype))
        return torch.tanh(sample)

    report = assert_schedulers_match(DDIMScheduler(**SD), DDIMScheduler(**SD), 4, SHAPE, model=model)
    expected = [(t, dtype) for t in report.timesteps for dtype in (torch.float32, torch.float32, torch.float64)]
    assert calls == expected
    assert report.settings["model"] == "model"


def test_default_model_is_deterministic_and_depends_on_t():
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(default_model(x, torch.tensor(500)), default_model(x, 500))
    assert not torch.equal(default_model(x, 500), default_model(x, 10))
    assert default_model(x.half(), 500).dtype == torch.float16


def test_mixture_model_is_the_exact_denoiser_of_its_mixture():
    scheduler = DDIMScheduler(**SD)
    model = mixture_model((3, 2, 2), "v_prediction", alpha_bar=scheduler, seed=5)
    x = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    means = 0.5 * torch.randn(4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = GaussianMixture(means, 0.5, alpha_bar=scheduler).v(x, 700)
    torch.testing.assert_close(model(x, 700), expected, rtol=1e-12, atol=1e-12)
    assert model(x.half(), 700).dtype == torch.float16
    with pytest.raises(ValueError, match="shape"):
        mixture_model((4,))


# ---------------------------------------------------------------------- the report


def test_verbose_prints_the_report(capsys):
    report = assert_schedulers_match(DDIMScheduler(**SD), DDIMScheduler(**SD), 3, SHAPE, verbose=True)
    assert capsys.readouterr().out.strip() == str(report)


def test_long_reports_are_abridged():
    with pytest.raises(AssertionError) as failure:
        assert_schedulers_match(DDIMScheduler(**SD), DDIMScheduler(**dict(SD, beta_end=0.013)), 100, SHAPE)
    lines = str(failure.value).splitlines()
    assert len(lines) < 40 and any(line.strip() == "..." for line in lines)


def test_step_error_fields():
    step = StepError(index=0, timestep=999, prev_sample=float("nan"))
    report = MatchReport("a", "b", [999], [step], rtol=1e-4)
    assert report.max_error == float("inf") and not report.passed and report.verdict == "DIFFER"
    assert step.closer == "-"
    assert StepError(0, 9, 1.0, candidate_exact=1e-8, reference_exact=float("nan")).closer == "candidate"


def test_the_report_is_json_ready():
    reference = defective(SD, poison_timestep=601)
    data = compare_schedulers(DDIMScheduler(**SD), reference, 10, SHAPE).to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["verdict"] == "DIFFER"
    assert data["steps"][3]["prev_sample"] == "inf" and data["steps"][3]["differs"] is True
