"""ddim_sched.demo: the demo's science, its text, its figure and its runner, without the command line."""

from __future__ import annotations

import importlib.util
import io
import math

import pytest
import torch

import ddim_sched
from ddim_sched import DDIMScheduler, demo
from ddim_sched.demo import common, figures, gaussian, mixture, roundtrip, schedule_table
from ddim_sched.demo.common import DemoSettings
from ddim_sched.demo.paper import PAPER_ETAS, PAPER_STEPS
from ddim_sched.demo.progress import Progress
from ddim_sched.toy import GaussianMixture
from tests.tolerances import EXACT_RTOL

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib (the demo extra) is not installed")
CPU = torch.device("cpu")
# Small tensors: one torch thread is faster than handing each op to a second one.
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- (a) exact Gaussian W2


def test_step_coefficients_are_eq_12_and_16():
    # x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ²)·ε̂ + σz with x̂0 = (x − √(1−ᾱ_t)ε̂)/√ᾱ_t (DDIM eqs. 12, 16).
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    alpha_bar = scheduler.alpha_bar
    for t, prev, eta in [(900, 800, 0.0), (500, 400, 0.5), (100, 0, 1.0)]:
        a_t, a_p = alpha_bar[t], alpha_bar[prev]
        sigma = eta * math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
        direction = math.sqrt(1 - a_p - sigma**2)
        expected = (math.sqrt(a_p / a_t), -math.sqrt(a_p) * math.sqrt(1 - a_t) / math.sqrt(a_t) + direction, sigma)
        got = common.step_coefficients(scheduler, t, eta, CPU, torch.float64)
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_float32_step_coefficients_agree_with_float64():
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(20)
    for t in scheduler.timesteps.tolist()[::5]:
        c32 = common.step_coefficients(scheduler, t, 0.5, CPU, torch.float32)
        c64 = common.step_coefficients(scheduler, t, 0.5, CPU, torch.float64)
        assert c32 == pytest.approx(c64, rel=10 * EXACT_RTOL[torch.float32], abs=1e-7)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_exact_output_law_matches_sampling_the_real_loop(eta):
    # The linear propagation of mean and variance against the scheduler's own loop run on samples.
    d, n = 3, 100_000
    mean, std = torch.tensor([0.5, -0.3, 0.1], dtype=torch.float64), torch.tensor([0.05, 0.3, 0.8], dtype=torch.float64)
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    m, v = gaussian.gaussian_output_law(scheduler, mean, std, eta)
    model = GaussianMixture.gaussian(mean, std, alpha_bar=scheduler)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = ddim_sched.sample(model.model("epsilon"), x_T, scheduler, eta=eta, generator=g)
    se_mean = (v / n).sqrt()
    se_var = v * math.sqrt(2 / n)
    assert ((x.mean(dim=0) - m).abs() < 5 * se_mean).all()
    assert ((x.var(dim=0) - v).abs() < 5 * se_var).all()


def test_output_law_needs_a_linear_epsilon_step():
    scheduler = DDIMScheduler()  # clip_sample=True: the step is not linear
    scheduler.set_timesteps(5)
    with pytest.raises(ValueError, match="clip_sample=False"):
        gaussian.gaussian_output_law(scheduler, torch.zeros(2), torch.ones(2), 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_gaussian_w2_reproduces_the_papers_ordering(dtype):
    # DDIM paper Table 1 trends: error falls with S; eta=0 < 0.2 < 0.5 < 1 at every S.
    table = gaussian.gaussian_table(PAPER_STEPS, PAPER_ETAS, 3072, 0, CPU, dtype)
    result = gaussian.GaussianResult(table, PAPER_STEPS, PAPER_ETAS, 3072, 0.0)
    assert result.falls_with_steps and result.ordered_by_eta
    for S in PAPER_STEPS:
        row = [table[(eta, S)] for eta in PAPER_ETAS]
        assert row == sorted(row) and len(set(row)) == len(row), (S, row)


def test_gaussian_w2_is_the_closed_form():
    m1, v1 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 4.0])
    m2, v2 = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0])
    # W2² = Σ (m1−m2)² + (√v1 − √v2)² = 9 + 1.
    assert common.gaussian_w2(m1, v1, m2, v2) == pytest.approx(math.sqrt(10.0))


def test_gaussian_trends_and_text_follow_the_table():
    table = {(0.0, 10): 2.0, (0.0, 20): 1.0, (1.0, 10): 3.0, (1.0, 20): 0.5}
    result = gaussian.GaussianResult(table, (10, 20), (0.0, 1.0), 4, 0.25)
    assert result.falls_with_steps and not result.ordered_by_eta  # at S=20, eta=1 is lower
    assert result.slopes()[0.0] == pytest.approx(-1.0)
    text = result.format()
    assert "W2 falls with S at every eta: yes; eta=0 < 1 at every S: NO" in text
    assert "[ 13.36]" in text and "3.0000" in text and "wall time: 0.2 s" in text


# ---------------------------------------------------------------------- (b) mixture and its floor


def _fake_mixture(values, floor):
    steps, etas = (10, 100), (0.0, 1.0)
    table = dict(zip([(e, S) for e in etas for S in steps], values, strict=True))
    points = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    samples = {key: points for key in table}
    return mixture.MixtureResult(table, floor, samples, points, steps, etas, 50, 0.1, 0.2)


def test_noise_floor_marks_in_the_text():
    result = _fake_mixture([0.30, 0.05, 0.12, 0.10], floor=(0.08, 0.10, 0.09))
    assert [result.within_floor(e, S) for e in (0.0, 1.0) for S in (10, 100)] == [False, True, False, True]
    rows = {line.split()[0]: line for line in result.format().splitlines() if line.strip()[:1].isdigit()}
    assert rows["0"].split()[1:] == ["0.3000", "0.0500~"] and rows["1"].split()[1:] == ["0.1200", "0.1000~"]
    assert "Above the floor's range at every eta: S in [10]; within it at every eta: S in [100]." in result.format()
    assert result.floor_mean == pytest.approx(0.09) and result.floor_sd == pytest.approx(0.01)


def test_mixture_section_samples_the_ring():
    result = mixture.mixture_table((10, 50), (0.0,), 300, DemoSettings(seed=2))
    assert set(result.table) == {(0.0, 10), (0.0, 50)} and len(result.floor) == mixture.FLOOR_REPEATS
    x = result.samples[(0.0, 50)]
    assert x.shape == (300, 2) and x.dtype == torch.float64
    assert abs(float(x.norm(dim=1).mean()) - 1.0) < 0.05  # the samples sit on the unit circle
    assert result.table[(0.0, 50)] < result.table[(0.0, 10)]


def texts(figure):
    """Every non-empty text drawn on a matplotlib figure."""
    from matplotlib.text import Text

    return [t for t in figure.findobj(Text) if t.get_text().strip() and t.get_visible()]


def assert_readable_at_readme_width(figure, smallest=11.0):
    """No wider than 1250 pixels (a README shows about 880, so text shrinks by at most 0.7) and no text under
    ``smallest`` points (11 pt at 100 dpi: 15 pixels before that shrink)."""
    width = figure.get_figwidth() * figure.dpi
    assert width <= 1250, width
    small = [(t.get_text(), t.get_fontsize()) for t in texts(figure) if t.get_fontsize() < smallest]
    assert not small, small


@needs_matplotlib
def test_figure_has_a_legend_and_frames_the_cells_within_the_floor():
    result = _fake_mixture([0.30, 0.05, 0.12, 0.10], floor=(0.08, 0.10, 0.09))
    fig = figures.mixture_figure(result)
    (legend,) = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    labels = [text.get_text() for text in legend.get_texts()]
    assert any("true density" in label for label in labels) and any("DDIM samples" in label for label in labels)
    assert any("data samples" in label for label in labels)
    # The floor as the text table gives it: its range's top and its mean ± sd.
    assert any("noise floor: SW2 <= 0.100 (data vs data: 0.090 ± 0.010)" in label for label in labels)
    framed = [ax.get_title() for ax in fig.axes if ax.spines["top"].get_edgecolor()[:3] != (0.0, 0.0, 0.0)]
    assert framed == ["S = 100\nSW2 0.050 ~", "SW2 0.100 ~"]
    assert figures.png_bytes(fig)[:8] == b"\x89PNG\r\n\x1a\n"


@needs_matplotlib
def test_mixture_figure_shows_the_data_once_and_reads_at_readme_width():
    result = _fake_mixture([0.30, 0.05, 0.12, 0.10], floor=(0.08, 0.10, 0.09))
    fig = figures.mixture_figure(result)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles.count("data\n(the reference)") == 1 and len(fig.axes) == 1 + 4 + 1  # data, 2x2 cells, legend
    assert [t for t in titles if t.startswith("S = ")] == ["S = 10\nSW2 0.300", "S = 100\nSW2 0.050 ~"]
    assert sorted(ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()) == ["η = 0", "η = 1"]
    assert_readable_at_readme_width(fig)


@needs_matplotlib
def test_schedule_plot_marks_zero_snr_at_the_edge_of_its_log_axis():
    scheduler = DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")
    scheduler.set_timesteps(10)
    fig = figures.schedule_figure(scheduler, schedule_table.schedule_rows(scheduler, 0.0), 0.0)
    snr_axis = next(ax for ax in fig.axes if ax.get_title().startswith("SNR"))
    low, high = snr_axis.get_ylim()
    smallest = float((scheduler.alpha_bar / (1 - scheduler.alpha_bar))[scheduler.alpha_bar > 0].min())
    assert snr_axis.get_yscale() == "log" and smallest / 10 < low <= smallest  # the curve's range, not 1e-30
    (marker,) = [line for line in snr_axis.get_lines() if line.get_marker() == "v"]
    assert list(marker.get_xdata()) == [999] and list(marker.get_ydata()) == [0.0]  # at the axis' lower edge
    assert "SNR = 0 at t = 999" in marker.get_label()
    assert_readable_at_readme_width(fig, smallest=10.0)


# ---------------------------------------------------------------------- (c) round trips


def test_round_trip_error_falls_with_steps():
    result = roundtrip.roundtrip_table((10, 50, 200), (0,), 32, DemoSettings(dtype=torch.float64))
    errors = [result.table[(0, S)] for S in (10, 50, 200)]
    assert result.falls_with_steps(0) and errors[-1] < errors[0] / 10
    assert "1.40e-02" in result.format()  # the paper's Table 2 at S=10


# ---------------------------------------------------------------------- runner


def test_run_selected_sections_in_order(monkeypatch):
    seen = []

    class Extra:
        name, wall_time = "extra", 0.0

        def format(self):
            return "(d) an extra section"

    monkeypatch.setitem(demo.SECTIONS, "extra", lambda settings: Extra())
    result = demo.run(quick=True, sections=["extra", "roundtrip"], on_section=lambda r: seen.append(r.name))
    assert seen == ["extra", "roundtrip"] and list(result.sections) == seen
    text = result.format()
    assert text.startswith("ddim-sched demo") and "(d) an extra section" in text and "(c) Encode" in text
    assert result.settings == DemoSettings(quick=True)


def test_digits_section_is_skipped_with_a_hint_without_scikit_learn(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    result = demo.run(quick=True, sections=["digits"])
    text = result.sections["digits"].format()
    assert text.startswith("(d) A learned model: skipped.") and 'pip install "ddim_sched[demo]"' in text


def test_run_rejects_unknown_sections_and_dtypes():
    with pytest.raises(ValueError, match="'gaussian', 'mixture', 'roundtrip'"):
        demo.run(sections=["digits?"])
    with pytest.raises(ValueError, match="dtype"):
        demo.run(dtype=torch.float16)


def test_progress_bar_writes_only_when_enabled():
    stream = io.StringIO()
    bar = Progress("x", 4, enabled=False, stream=stream)
    bar.update(4)
    bar.close()
    assert stream.getvalue() == ""
    bar = Progress("work", 4, stream=stream)  # not a terminal: only the finished bar
    bar.update(3)
    assert stream.getvalue() == ""
    bar.update(1)
    bar.close()
    assert stream.getvalue().startswith("\rwork [") and " 4/4 " in stream.getvalue()


# ---------------------------------------------------------------------- schedule rows


@pytest.mark.parametrize(
    "config",
    [
        dict(clip_sample=False),
        dict(clip_sample=False, timestep_spacing="linspace"),
        dict(
            clip_sample=False, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"
        ),
    ],
)
def test_schedule_sigma_is_the_schedulers_own_noise_coefficient(config):
    # The σ the scheduler's step multiplies its noise by, read with unit inputs, at eta = 0.7.
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(10)
    for row in schedule_table.schedule_rows(scheduler, 0.7):
        eye = torch.eye(3, dtype=torch.float64)
        prev = scheduler.step(eye[:, 1:2], row["t"], eye[:, 0:1], eta=0.7, variance_noise=eye[:, 2:3]).prev_sample
        assert row["sigma_step"] == pytest.approx(float(prev[2]), rel=1e-9, abs=1e-12)
        assert row["t_prev"] == scheduler.previous_timestep(row["t"])


def test_step_sigma_is_zero_where_the_step_does_not_denoise():
    assert schedule_table.step_sigma(0.5, 0.5, 1.0) == 0.0 and schedule_table.step_sigma(0.6, 0.5, 1.0) == 0.0
    assert schedule_table.step_sigma(0.0, 0.36, 1.0) == pytest.approx(0.8)  # zero SNR: σ² = 1 − ᾱ_prev


# ---------------------------------------------------------------------- invert's warnings in the demo


def test_the_demo_holds_back_inverts_warnings_and_reports_them_once(caplog):
    """Section (c) with k = 1: invert's fixed-point iteration diverges for a few samples of the ring at a
    small timestep. The section's calls log nothing; the section returns the divergence, and the demo's
    note names it, says why it is expected and where the docs explain it. Outside the demo invert warns."""
    import logging

    with caplog.at_level(logging.WARNING, logger="ddim_sched"):
        result = demo.run(quick=True, sections=["roundtrip"])
    assert not [r for r in caplog.records if r.funcName == "invert"]
    (divergence,) = result.divergences
    assert divergence.where == "(c) round trips" and divergence.iterations == 1 and divergence.timesteps
    assert divergence.worst >= divergence.median > 0
    note = common.format_divergences(result.divergences)
    assert note is not None and result.format().count(note) == 1
    assert f"(c) round trips, k=1, S={divergence.steps}:" in note and common.DIVERGENCE_DOCS in note
    assert common.format_divergences(()) is None
    # The filter is gone after the demo's calls: an ordinary invert call still warns.
    scheduler = common.demo_scheduler()
    scheduler.set_timesteps(divergence.steps)
    mixture = common.ring_mixture(scheduler)
    x0 = mixture.sample(64, generator=torch.Generator().manual_seed(4))
    with caplog.at_level(logging.WARNING, logger="ddim_sched"):
        ddim_sched.invert(mixture.model("epsilon"), x0, scheduler, fixed_point_iterations=1)
    assert any(r.funcName == "invert" and "diverged" in r.getMessage() for r in caplog.records)
