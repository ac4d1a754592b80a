"""ddim_sched.testing.assert_schedulers_match: passes when schedulers agree, explains when they don't."""

from __future__ import annotations

import diffusers
import pytest
import torch

from ddim_sched import DDIMScheduler
from ddim_sched.testing import MatchReport, StepError, assert_schedulers_match, default_model
from tests.tolerances import PARITY_RTOL

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


class TupleScheduler:
    """A duck-typed scheduler: wraps ours, returns tuples, and scales x̂0 by ``x0_scale``."""

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


def test_equal_configs_match_exactly():
    report = assert_schedulers_match(DDIMScheduler(**SD), DDIMScheduler.from_config(SD), 10, SHAPE)
    assert isinstance(report, MatchReport) and report.passed
    assert report.max_error == 0.0 and report.max_x0_error == 0.0
    assert report.timesteps == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert [s.timestep for s in report.steps] == report.timesteps
    assert "within rtol 1e-04" in str(report)


# Zero SNR with η = 1 is left out: diffusers gives NaN there (#5969), see test_nan_in_the_reference_is_reported.
@pytest.mark.parametrize(
    "config, eta",
    [(SD, 0.0), (SD, 1.0), (ZERO_SNR, 0.0), (ZERO_SNR, 0.5), ({}, 0.0), ({}, 1.0)],
    ids=["sd-eta0", "sd-eta1", "zero_snr-eta0", "zero_snr-eta0.5", "diffusers_default-eta0", "diffusers_default-eta1"],
)
def test_matches_diffusers_as_reference(config, eta):
    report = assert_schedulers_match(DDIMScheduler(**config), diffusers.DDIMScheduler(**config), 20, SHAPE, eta=eta)
    # Two independent implementations: equal within the tolerance, but not bit for bit.
    assert 0 < report.max_error <= PARITY_RTOL[torch.float32]
    assert len(report.steps) == 20


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_other_dtypes_against_diffusers(dtype):
    report = assert_schedulers_match(
        DDIMScheduler(**SD), diffusers.DDIMScheduler(**SD), 10, SHAPE, dtype=dtype, rtol=PARITY_RTOL[dtype]
    )
    assert report.max_error <= PARITY_RTOL[dtype]


def test_different_configs_fail_with_a_per_step_report():
    with pytest.raises(AssertionError) as failure:
        assert_schedulers_match(DDIMScheduler(**SD), diffusers.DDIMScheduler(**dict(SD, beta_end=0.02)), 10, SHAPE)
    message = str(failure.value)
    assert "beta_end: candidate=0.012, reference=0.02" in message
    assert "over rtol 1e-04 first at step 0" in message
    rows = [line for line in message.splitlines() if line.strip().split(" ")[0].isdigit()]
    assert len(rows) == 10 and all(row.endswith("*") for row in rows)


def test_the_error_is_relative_and_bounded_by_rtol():
    # A 1e-3 change of beta_end fails at rtol 1e-4 and passes at a rtol above its measured error.
    candidate, reference = DDIMScheduler(**SD), DDIMScheduler(**dict(SD, beta_end=0.012 * 1.001))
    with pytest.raises(AssertionError):
        assert_schedulers_match(candidate, reference, 10, SHAPE, rtol=1e-6)
    report = assert_schedulers_match(candidate, reference, 10, SHAPE, rtol=1.0)
    assert 1e-6 < report.max_error < 1.0
    assert assert_schedulers_match(candidate, reference, 10, SHAPE, rtol=report.max_error).passed


def test_different_timesteps_fail_before_sampling():
    # Trailing S=61: diffusers yields 62 timesteps ending at -1; ddim_sched yields exactly 61.
    with pytest.raises(AssertionError, match=r"timesteps differ .*first at index 61") as failure:
        assert_schedulers_match(
            DDIMScheduler(timestep_spacing="trailing"), diffusers.DDIMScheduler(timestep_spacing="trailing"), 61, SHAPE
        )
    assert "reference (62)" in str(failure.value) and "15, -1]" in str(failure.value)


def test_nan_in_the_reference_is_reported():
    with pytest.raises(AssertionError, match=r"NaN/Inf in reference"):
        assert_schedulers_match(DDIMScheduler(**ZERO_SNR), diffusers.DDIMScheduler(**ZERO_SNR), 10, SHAPE, eta=1.0)


def test_x0_errors_are_reported_and_checked_on_request():
    candidate = TupleScheduler(DDIMScheduler(**SD), x0_scale=1.01)
    report = assert_schedulers_match(candidate, DDIMScheduler(**SD), 5, SHAPE)
    assert report.max_error == 0.0
    assert report.max_x0_error == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(AssertionError, match="x0_rtol 1e-04"):
        assert_schedulers_match(TupleScheduler(DDIMScheduler(**SD), 1.01), DDIMScheduler(**SD), 5, SHAPE, x0_rtol=1e-4)


def test_duck_typed_schedulers_and_eta_checks():
    report = assert_schedulers_match(TupleScheduler(DDIMScheduler(**SD)), DDIMScheduler(**SD), 5, SHAPE, eta=1.0)
    assert report.max_error == 0.0
    assert assert_schedulers_match(NoEtaScheduler(DDIMScheduler(**SD)), DDIMScheduler(**SD), 5, SHAPE).passed
    with pytest.raises(TypeError, match="candidate's step"):
        assert_schedulers_match(NoEtaScheduler(DDIMScheduler(**SD)), DDIMScheduler(**SD), 5, SHAPE, eta=0.5)


def test_eta_noise_is_shared_and_depends_on_the_seed():
    # Same seed: identical noise in both; different η changes the result.
    a = assert_schedulers_match(DDIMScheduler(**SD), DDIMScheduler(**SD), 5, SHAPE, eta=1.0, seed=3)
    assert a.max_error == 0.0
    with pytest.raises(AssertionError):
        assert_schedulers_match(
            TupleScheduler(DDIMScheduler(**SD)), _FixedEta(DDIMScheduler(**SD), eta=0.5), 5, SHAPE, eta=1.0
        )


class _FixedEta(TupleScheduler):
    def __init__(self, inner, eta):
        super().__init__(inner)
        self.fixed_eta = eta

    def step(self, model_output, timestep, sample, eta=0.0, generator=None):
        return super().step(model_output, timestep, sample, eta=self.fixed_eta, generator=generator)


def test_a_user_model_is_called_for_both_schedulers():
    calls = []

    def model(sample, timestep):
        calls.append(int(timestep))
        return torch.tanh(sample)

    report = assert_schedulers_match(DDIMScheduler(**SD), DDIMScheduler(**SD), 4, SHAPE, model=model)
    assert calls == [t for t in report.timesteps for _ in range(2)]
    assert report.settings["model"] == "model"


def test_default_model_is_deterministic_and_depends_on_t():
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(default_model(x, torch.tensor(500)), default_model(x, 500))
    assert not torch.equal(default_model(x, 500), default_model(x, 10))
    assert default_model(x.half(), 500).dtype == torch.float16


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
    assert report.max_error == float("inf") and not report.passed
