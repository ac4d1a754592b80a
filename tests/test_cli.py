"""The ddim-sched command: each subcommand end to end on small sizes, its numbers, and its errors."""

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ddim_sched
from ddim_sched import DDIMScheduler, cli
from ddim_sched.toy import GaussianMixture
from tests.tolerances import EXACT_RTOL

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib (the demo extra) is not installed")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(capsys, *argv):
    """main(argv) in-process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_png(path):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    from matplotlib.image import imread

    image = imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert float(image[..., :3].std()) > 0.01  # not a blank canvas


def block_imports(monkeypatch, *names):
    """Make ``import name`` raise ImportError, as if the package were not installed."""
    for name in list(sys.modules):
        if name.split(".")[0] in names:
            monkeypatch.delitem(sys.modules, name)
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


# ---------------------------------------------------------------------- demo (a): the exact W2 table


def test_step_coefficients_are_eq_12_and_16():
    # x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ²)·ε̂ + σz with x̂0 = (x − √(1−ᾱ_t)ε̂)/√ᾱ_t (REFERENCE.md §1).
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    alpha_bar = scheduler.alpha_bar
    for t, prev, eta in [(900, 800, 0.0), (500, 400, 0.5), (100, 0, 1.0)]:
        a_t, a_p = alpha_bar[t], alpha_bar[prev]
        sigma = eta * math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
        direction = math.sqrt(1 - a_p - sigma**2)
        expected = (math.sqrt(a_p / a_t), -math.sqrt(a_p) * math.sqrt(1 - a_t) / math.sqrt(a_t) + direction, sigma)
        got = cli.step_coefficients(scheduler, t, eta, torch.device("cpu"), torch.float64)
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_exact_output_law_matches_sampling_the_real_loop(eta):
    # The linear propagation of mean and variance against the scheduler's own loop run on samples.
    d, n = 3, 200_000
    mean, std = torch.tensor([0.5, -0.3, 0.1], dtype=torch.float64), torch.tensor([0.05, 0.3, 0.8], dtype=torch.float64)
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    m, v = cli.gaussian_output_law(scheduler, mean, std, eta)
    model = GaussianMixture.gaussian(mean, std, alpha_bar=scheduler)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = ddim_sched.sample(model.model("epsilon"), x_T, scheduler, eta=eta, generator=g)
    se_mean = (v / n).sqrt()
    se_var = v * math.sqrt(2 / n)
    assert ((x.mean(dim=0) - m).abs() < 5 * se_mean).all()
    assert ((x.var(dim=0) - v).abs() < 5 * se_var).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_gaussian_w2_reproduces_the_papers_ordering(dtype):
    # DDIM paper Table 1 trends (REFERENCE.md §6): error falls with S; eta=0 < 0.2 < 0.5 < 1 at every S.
    table = cli.gaussian_table(cli.PAPER_STEPS, cli.PAPER_ETAS, 3072, 0, torch.device("cpu"), dtype, progress=False)
    for S in cli.PAPER_STEPS:
        row = [table[(eta, S)] for eta in cli.PAPER_ETAS]
        assert row == sorted(row) and len(set(row)) == len(row), (S, row)
    for eta in cli.PAPER_ETAS:
        column = [table[(eta, S)] for S in cli.PAPER_STEPS]
        assert column == sorted(column, reverse=True), (eta, column)


def test_gaussian_w2_is_the_closed_form():
    m1, v1 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 4.0])
    m2, v2 = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0])
    # W2² = Σ (m1−m2)² + (√v1 − √v2)² = 9 + 1.
    assert cli.gaussian_w2(m1, v1, m2, v2) == pytest.approx(math.sqrt(10.0))


# ---------------------------------------------------------------------- demo end to end


def test_demo_quick_end_to_end(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "--quick", "--seed", "1", "--out", str(tmp_path / "figs"))
    assert code == 0, err
    if HAVE_MATPLOTLIB:
        assert_png(tmp_path / "figs" / "ddim-sched-demo.png")
    else:  # the core install: tables only, and how to get the figure
        assert "figure skipped: matplotlib is not installed" in out
    assert "eta=0 < 0.2 < 0.5 < 1 at every S: yes" in out
    assert "W2 falls with S at every eta: yes" in out
    for fid in ("13.36", "41.07", "4.04"):  # the paper's Table 1 beside the measurements
        assert fid in out
    assert "Noise floor" in out and "Sliced W2" in out
    assert "(c) Encode -> decode round trip" in out and "1.40e-02" in out  # paper Table 2, S=10
    assert out.count("    wall time: ") == 3 and "total wall time: " in out
    # The progress bar goes to stderr, not stdout.
    assert "(a) exact Gaussian" in err and "4720/4720" in err
    assert "[####" not in out


def test_demo_round_trip_error_falls_with_steps(capsys):
    table = cli.roundtrip_table((10, 50, 200), (0,), 32, 0, torch.device("cpu"), torch.float64, progress=False)
    assert table is not None
    errors = [table[(0, S)] for S in (10, 50, 200)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 10


def test_demo_out_is_a_png_path_or_a_directory(tmp_path):
    assert cli._figure_path(str(tmp_path / "a" / "demo.png"), "d.png") == tmp_path / "a" / "demo.png"
    assert cli._figure_path(str(tmp_path / "b"), "d.png") == tmp_path / "b" / "d.png"
    assert (tmp_path / "a").is_dir() and (tmp_path / "b").is_dir()


def test_demo_without_matplotlib_still_prints_the_tables(capsys, tmp_path, monkeypatch):
    block_imports(monkeypatch, "matplotlib")
    code, out, err = run(capsys, "demo", "--quick", "--no-progress", "--out", str(tmp_path / "b.png"))
    assert code == 0, err
    assert "figure skipped: matplotlib is not installed" in out and "ddim_sched[demo]" in out
    assert "eta=0 < 0.2 < 0.5 < 1 at every S: yes" in out  # the tables are still printed
    assert not (tmp_path / "b.png").exists()
    assert err == ""  # --no-progress


def test_core_imports_without_optional_packages():
    code = (
        "import sys\n"
        "for name in ('matplotlib', 'diffusers', 'tqdm', 'scipy'):\n"
        "    sys.modules[name] = None\n"
        "import ddim_sched, ddim_sched.toy, ddim_sched.cli\n"
        "print(ddim_sched.toy.GaussianMixture.ring().dim)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": SRC})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"


# ---------------------------------------------------------------------- schedule


def test_schedule_table_marks_the_stride_rule_on_linspace(capsys):
    # REFERENCE.md §3-4: linspace S=10 visits 999, 888, ... but diffusers' stride rule steps 999 -> 899.
    code, out, _ = run(capsys, "schedule", "--timestep-spacing", "linspace", "--steps", "10")
    assert code == 0
    first = next(line for line in out.splitlines() if line.split()[:2] == ["0", "999"])
    assert first.split()[2:4] == ["899", "888"] and first.endswith("*")
    assert "9 step(s) land on a timestep other than the next one visited" in out
    code, out, _ = run(capsys, "schedule", "--timestep-spacing", "linspace", "--steps", "10", "--prev-timestep-rule", "schedule")
    assert code == 0 and "*" not in out


@pytest.mark.parametrize(
    "flags, timesteps",
    [
        (["--steps-offset", "1", "--steps", "5"], [801, 601, 401, 201, 1]),
        (["--timestep-spacing", "trailing", "--steps", "10"], [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
    ],
)
def test_schedule_json_timesteps_are_the_reference_values(capsys, flags, timesteps):
    code, out, _ = run(capsys, "schedule", "--format", "json", *flags)
    assert code == 0
    assert [row["t"] for row in json.loads(out)["steps"]] == timesteps


def test_schedule_sigma_is_diffusers_variance(capsys):
    # REFERENCE.md §5: diffusers' _get_variance(980, 960) = 0.32460 and (420, 400) = 0.14771; sigma(eta=1)².
    code, out, _ = run(capsys, "schedule", "--format", "csv", "--steps", "50", "--eta", "1")
    assert code == 0
    lines = out.strip().splitlines()
    header = lines[0].split(",")
    rows = {int(r[header.index("t")]): r for r in (line.split(",") for line in lines[1:])}
    sigma = header.index("sigma_step")
    assert float(rows[980][sigma]) ** 2 == pytest.approx(0.32460, abs=1e-5)
    assert float(rows[420][sigma]) ** 2 == pytest.approx(0.14771, abs=1e-5)


def test_schedule_zero_snr_from_a_config_file_with_overrides(capsys, tmp_path):
    # A Stable-Diffusion-style config of another scheduler class (REFERENCE.md §4: foreign keys load).
    config = {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.6.0",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "num_train_timesteps": 1000,
        "skip_prk_steps": True,
        "steps_offset": 1,
    }
    folder = tmp_path / "scheduler"
    folder.mkdir()
    (folder / "scheduler_config.json").write_text(json.dumps(config))
    code, out, _ = run(capsys, "schedule", "--config", str(folder), "--format", "json", "--steps", "5")
    assert code == 0
    data = json.loads(out)
    assert [row["t"] for row in data["steps"]] == [801, 601, 401, 201, 1]
    # Lin et al. Table 1 (REFERENCE.md §2): SD's terminal sqrt(alpha_bar) is 0.068265 before rescaling.
    code, out, _ = run(capsys, "schedule", "--config", str(folder / "scheduler_config.json"), "--steps", "5")
    sqrt_terminal = float(re.search(r"\(sqrt ([0-9.e-]+)", out).group(1))
    assert sqrt_terminal == pytest.approx(0.068265, abs=5e-7)
    code, out, _ = run(
        capsys, "schedule", "--config", str(folder), "--rescale-betas-zero-snr", "--timestep-spacing", "trailing",
        "--prediction-type", "v_prediction", "--format", "json", "--steps", "5",
    )
    assert code == 0
    first = json.loads(out)["steps"][0]
    assert first["t"] == 999 and first["alpha_bar"] == 0.0 and first["snr"] == 0.0 and first["sigma_noise"] is None


@needs_matplotlib
def test_schedule_plot_writes_a_png(capsys, tmp_path):
    path = tmp_path / "plots" / "schedule.png"
    code, out, _ = run(capsys, "schedule", "--beta-schedule", "squaredcos_cap_v2", "--steps", "20", "--plot", str(path))
    assert code == 0 and str(path) in out
    assert_png(path)


def test_schedule_plot_without_matplotlib_says_how_to_install(capsys, tmp_path, monkeypatch):
    block_imports(monkeypatch, "matplotlib")
    code, _, err = run(capsys, "schedule", "--plot", str(tmp_path / "x.png"))
    assert code == 2 and "--plot" in err and "ddim_sched[demo]" in err


# ---------------------------------------------------------------------- compare


def test_compare_matches_diffusers_and_writes_a_report(capsys, tmp_path):
    pytest.importorskip("diffusers")
    report = tmp_path / "report.json"
    code, out, err = run(capsys, "compare", "--steps", "10", "--eta", "0.5", "--shape", "2,3,4,4", "--out", str(report))
    assert code == 0, out + err
    assert "MATCH" in out and "timesteps identical: [900, 800" in out
    data = json.loads(report.read_text())
    assert data["match"] is True and len(data["steps"]) == 10
    assert max(row["rel_l2_prev_sample"] for row in data["steps"]) < data["rtol"]


def test_compare_reports_a_difference(capsys, tmp_path):
    pytest.importorskip("diffusers")
    # ddim_sched's "schedule" successor rule fixes diffusers' linspace stride (REFERENCE.md §4), so the
    # two must differ; compare must say so and exit 1.
    code, out, _ = run(capsys, "compare", "--steps", "10", "--timestep-spacing", "linspace", "--prev-timestep-rule", "schedule")
    assert code == 1
    assert "DIFFER" in out and "--prev-timestep-rule 'schedule'" in out


def test_compare_reports_differing_timesteps(capsys):
    pytest.importorskip("diffusers")
    # REFERENCE.md / spacing.trailing: diffusers' trailing S=61 yields 62 timesteps ending at -1.
    code, out, _ = run(capsys, "compare", "--steps", "61", "--timestep-spacing", "trailing")
    assert code == 1 and "timesteps DIFFER" in out


def test_compare_without_diffusers(capsys, monkeypatch):
    block_imports(monkeypatch, "diffusers")
    code, _, err = run(capsys, "compare", "--steps", "5")
    assert code == 2 and "pip install diffusers" in err


# ---------------------------------------------------------------------- usage errors


def _bad_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    return str(path)


def _bad_value(tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps({"beta_schedule": "quadratic"}))
    return str(path)


def _text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("x")
    return str(path)


@pytest.mark.parametrize(
    "argv, names",
    [
        (["schedule", "--steps", "0"], ["--steps"]),
        (["schedule", "--steps", "many"], ["--steps"]),
        (["schedule", "--steps", "2000"], ["--steps 2000", "num_train_timesteps=1000"]),
        (["schedule", "--beta-start", "2"], ["--beta-start", "(0, 1)"]),
        (["schedule", "--beta-start", "0.5", "--beta-end", "0.1"], ["beta_start must not exceed beta_end"]),
        (["schedule", "--timestep-spacing", "cubic"], ["--timestep-spacing", "cubic", "'trailing'"]),
        (["schedule", "--steps-offset", "200", "--steps", "5"], ["--steps-offset 200"]),
        (["schedule", "--rescale-betas-zero-snr", "--timestep-spacing", "trailing"], ["--prediction-type epsilon", "v_prediction"]),
        (["schedule", "--config", "{tmp}/missing/scheduler_config.json"], ["--config", "missing"]),
        (["schedule", "--config", "{bad_json}"], ["--config", "not valid JSON"]),
        (["schedule", "--config", "{bad_value}"], ["--config", "'beta_schedule'", "quadratic"]),
        (["schedule", "--eta", "-1"], ["--eta"]),
        (["schedule", "--plot", "{tmp}"], ["--plot", "is a directory"]),
        (["demo", "--dtype", "float16"], ["--dtype", "float16"]),
        (["demo", "--device", "gpu0"], ["--device", "gpu0"]),
        (["demo", "--out", "{text_file}"], ["--out", "notes.txt"]),
        (["demo", "--seed", "x"], ["--seed"]),
        (["compare", "--shape", "a,b"], ["--shape"]),
        (["compare", "--dtype", "int8"], ["--dtype"]),
        (["compare", "--config", "{tmp}/nope"], ["--config", "nope"]),
        (["demo", "--unknown-flag"], ["--unknown-flag"]),
        (["frobnicate"], ["frobnicate"]),
        ([], ["demo,schedule,compare"]),
    ],
)
def test_usage_errors_exit_2_and_name_the_flag(capsys, tmp_path, argv, names):
    values = {"tmp": str(tmp_path), "bad_json": _bad_json(tmp_path), "bad_value": _bad_value(tmp_path),
              "text_file": _text_file(tmp_path)}
    code, out, err = run(capsys, *[a.format(**values) for a in argv])
    assert code == 2
    for name in names:
        assert name in err, err
    assert "Traceback" not in err and out == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_usage_error(capsys):
    code, _, err = run(capsys, "demo", "--device", "cuda")
    assert code == 2 and "--device cuda: CUDA is not available" in err


@pytest.mark.parametrize("command, flags", [("demo", ["--quick", "--out"]), ("schedule", ["--config", "--plot"]),
                                             ("compare", ["--config", "--rtol"])])
def test_help_for_each_subcommand(capsys, command, flags):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "{demo,schedule,compare}" in out
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    for flag in ("--device", "--seed") if command != "schedule" else ("--steps", "--eta"):
        assert flag in out
    for flag in flags:
        assert flag in out


def test_python_dash_m_exit_code():
    env = {"PYTHONPATH": SRC}
    bad = subprocess.run([sys.executable, "-m", "ddim_sched", "schedule", "--config", "/nonexistent/x.json"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "ddim-sched schedule: error: --config" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_float32_step_coefficients_agree_with_float64():
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(20)
    for t in scheduler.timesteps.tolist()[::5]:
        c32 = cli.step_coefficients(scheduler, t, 0.5, torch.device("cpu"), torch.float32)
        c64 = cli.step_coefficients(scheduler, t, 0.5, torch.device("cpu"), torch.float64)
        assert c32 == pytest.approx(c64, rel=10 * EXACT_RTOL[torch.float32], abs=1e-7)


def test_importing_main_module_runs_nothing():
    # Tools that walk the package (doctest collection, pkgutil) import ddim_sched.__main__.
    module = importlib.import_module("ddim_sched.__main__")
    assert module.main is cli.main
