"""The ddim-sched command: each subcommand end to end on small sizes, its exit codes and its errors.

The science the commands print is tested in tests/integration/test_demo.py and tests/testing/test_harness.py.
"""

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddim_sched import DDIMScheduler
from ddim_sched.cli import commands as cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib (the demo extra) is not installed")
needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
# Small tensors: one torch thread is faster than handing each op to a second one.
pytestmark = pytest.mark.usefixtures("one_thread")
SRC = str(Path(__file__).resolve().parents[2] / "src")
ZERO_SNR_FLAGS = [
    "--rescale-betas-zero-snr",
    "--prediction-type",
    "v_prediction",
    "--timestep-spacing",
    "trailing",
    "--beta-schedule",
    "scaled_linear",
    "--beta-start",
    "0.00085",
    "--beta-end",
    "0.012",
    "--no-clip-sample",
    "--no-set-alpha-to-one",
]


def run(capsys, *argv):
    """main(argv) in-process: (exit code, stdout, stderr)."""
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_process(*argv, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "ddim_sched", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        **kwargs,
    )


def verdict(out):
    """compare's verdict: its one line that starts with 'verdict ' (any explanations follow, indented)."""
    (line,) = [line for line in out.splitlines() if line.startswith("verdict ")]
    return line


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


def never_sample(monkeypatch):
    """Fail the test if the demo starts its sections."""
    monkeypatch.setattr(cli.demo, "run", lambda *a, **k: pytest.fail("the demo sampled before failing"))


# ---------------------------------------------------------------------- demo


def test_demo_quick_end_to_end(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "demo", "--quick", "--seed", "1")
    assert code == 0, err
    lines = out.strip().splitlines()
    if HAVE_MATPLOTLIB:  # every file it wrote, in the current directory, named at the end
        assert lines[-5:-1] == [
            "files written:",
            "  ddim-sched-demo.png",
            "  ddim-sched-digits-samples.png",
            "  ddim-sched-digits-interpolation.png",
        ]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(line.strip() for line in lines[-4:-1])
        assert_png(tmp_path / "ddim-sched-demo.png")
    else:
        assert lines[-2].startswith("figure skipped: matplotlib is not installed")
    assert lines[-1].startswith("total wall time: ")
    # invert's per-step divergence warnings are held back (summarised in the output: tests/integration/test_demo.py).
    assert "invert:" not in err
    assert "eta=0 < 0.2 < 0.5 < 1 at every S: yes" in out and "W2 falls with S at every eta: yes" in out
    for fid in ("13.36", "41.07", "4.04"):  # the paper's Table 1 beside the measurements
        assert fid in out
    assert "Noise floor" in out and "(c) Encode -> decode round trip" in out and "1.40e-02" in out
    assert out.count("\n    wall time: ") == 3
    # (d), the learned model: its tables, and its two PNGs beside the mixture figure.
    assert "(d) A learned model: scikit-learn's 8x8 handwritten digits" in out and "(d3) Interpolation" in out
    assert out.count("\n     wall time: train eps-model") == 1
    if HAVE_MATPLOTLIB:
        assert_png(tmp_path / "ddim-sched-digits-samples.png")
        assert_png(tmp_path / "ddim-sched-digits-interpolation.png")
    # The progress bars go to stderr, not stdout.
    assert "(a) exact Gaussian" in err and "4720/4720" in err and "[####" not in out
    assert "(d) digits: train eps-model" in err


def test_every_file_the_demo_writes_is_ignored_by_git():
    from ddim_sched.demo.digits import FIGURE_PREFIX

    root = Path(SRC).parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs git and a git checkout")
    for name in (cli.DEMO_FIGURE, f"{FIGURE_PREFIX}-samples.png", f"{FIGURE_PREFIX}-interpolation.png"):
        for path in (name, f"some/dir/{name}"):
            ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "--no-index", "-q", path])
            assert ignored.returncode == 0, f"{path} is not ignored by .gitignore"


def test_demo_out_is_a_png_path_or_a_directory(capsys, tmp_path, monkeypatch):
    assert cli._figure_path(str(tmp_path / "a" / "demo.png")) == tmp_path / "a" / "demo.png"
    assert cli._figure_path(str(tmp_path / "b")) == tmp_path / "b" / "ddim-sched-demo.png"
    assert (tmp_path / "a").is_dir() and (tmp_path / "b").is_dir() and not (tmp_path / "a" / "demo.png").exists()


def test_demo_checks_its_destination_before_sampling(capsys, tmp_path, monkeypatch):
    never_sample(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = run(capsys, "demo", "--quick", "--out", str(blocker / "x.png"))
    assert code == 2 and out == "" and err.startswith("ddim-sched demo: error: --out:")
    if Path("/proc").is_dir():
        code, out, err = run(capsys, "demo", "--quick", "--out", "/proc/x.png")
        assert (
            code == 2
            and out == ""
            and err.strip().splitlines()
            == ["ddim-sched demo: error: --out: cannot write '/proc/x.png': No such file or directory"]
        )


def test_demo_without_matplotlib_still_prints_the_tables(capsys, tmp_path, monkeypatch):
    block_imports(monkeypatch, "matplotlib")
    code, out, err = run(capsys, "demo", "--quick", "--no-progress", "--out", str(tmp_path / "b.png"))
    assert code == 0, err
    assert "figure skipped: matplotlib is not installed" in out and "ddim_sched[demo]" in out
    assert "eta=0 < 0.2 < 0.5 < 1 at every S: yes" in out
    assert "figures skipped: matplotlib is not installed" in out  # the digits section's note
    assert not (tmp_path / "b.png").exists() and not list(tmp_path.glob("*.png"))
    assert err == ""  # --no-progress


def test_demo_figure_write_failure_is_an_environment_error(capsys, tmp_path, monkeypatch):
    if not HAVE_MATPLOTLIB:
        pytest.skip("matplotlib is not installed")

    def full(self, data):
        raise OSError(28, "No space left on device")

    run_demo = cli.demo.run
    monkeypatch.setattr(cli.demo, "run", lambda *a, **k: run_demo(*a, **{**k, "sections": ["mixture"]}))
    monkeypatch.setattr(Path, "write_bytes", full)
    code, _, err = run(capsys, "demo", "--quick", "--no-progress", "--out", str(tmp_path / "f.png"))
    assert code == 2 and "error: --out: cannot write" in err and "No space left on device" in err
    assert "Traceback" not in err


def test_core_imports_without_optional_packages():
    code = (
        "import sys\n"
        "for name in ('matplotlib', 'diffusers', 'tqdm', 'scipy'):\n"
        "    sys.modules[name] = None\n"
        "import ddim_sched, ddim_sched.toy, ddim_sched.cli, ddim_sched.demo, ddim_sched.testing\n"
        "print(ddim_sched.demo.figures.matplotlib_available())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": SRC})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# ---------------------------------------------------------------------- schedule


def test_schedule_table_marks_the_stride_rule_on_linspace(capsys):
    # docs/migration.md: linspace S=10 visits 999, 888, ... but diffusers' stride rule steps 999 -> 899.
    code, out, _ = run(capsys, "schedule", "--timestep-spacing", "linspace", "--steps", "10")
    assert code == 0
    first = next(line for line in out.splitlines() if line.split()[:2] == ["0", "999"])
    assert first.split()[2:4] == ["899", "888"] and first.endswith("*")
    assert "9 step(s) land on a timestep other than the next one visited" in out
    code, out, _ = run(
        capsys, "schedule", "--timestep-spacing", "linspace", "--steps", "10", "--prev-timestep-rule", "schedule"
    )
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
    # diffusers' _get_variance(980, 960) = 0.32460 and (420, 400) = 0.14771 at its defaults; sigma(eta=1)².
    code, out, _ = run(capsys, "schedule", "--format", "csv", "--steps", "50", "--eta", "1")
    assert code == 0
    lines = out.strip().splitlines()
    header = lines[0].split(",")
    rows = {int(r[header.index("t")]): r for r in (line.split(",") for line in lines[1:])}
    sigma = header.index("sigma_step")
    assert float(rows[980][sigma]) ** 2 == pytest.approx(0.32460, abs=1e-5)
    assert float(rows[420][sigma]) ** 2 == pytest.approx(0.14771, abs=1e-5)


def test_schedule_zero_snr_from_a_config_file_with_overrides(capsys, tmp_path):
    # A Stable-Diffusion-style config of another scheduler class (foreign keys load).
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
    assert [row["t"] for row in json.loads(out)["steps"]] == [801, 601, 401, 201, 1]
    # Lin et al. 2023, Table 1: SD's terminal sqrt(alpha_bar) is 0.068265 before rescaling.
    code, out, _ = run(capsys, "schedule", "--config", str(folder / "scheduler_config.json"), "--steps", "5")
    sqrt_terminal = float(re.search(r"\(sqrt ([0-9.e-]+)", out).group(1))
    assert sqrt_terminal == pytest.approx(0.068265, abs=5e-7)
    code, out, _ = run(
        capsys,
        "schedule",
        "--config",
        str(folder),
        "--rescale-betas-zero-snr",
        "--timestep-spacing",
        "trailing",
        "--prediction-type",
        "v_prediction",
        "--format",
        "json",
        "--steps",
        "5",
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


@needs_matplotlib
@needs_dev_full
def test_schedule_plot_to_a_full_device_is_an_environment_error(capsys):
    code, out, err = run(capsys, "schedule", "--plot", "/dev/full")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "ddim-sched schedule: error: --plot: cannot write '/dev/full': No space left on device"
    ]


@needs_dev_full
def test_output_to_a_full_device_is_an_environment_error():
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "ddim_sched", "schedule", "--steps", "1000"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": SRC},
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "ddim-sched schedule: error: cannot write the output: No space left on device"
    ]


# ---------------------------------------------------------------------- compare


def test_compare_matches_diffusers_and_writes_a_report(capsys, tmp_path):
    pytest.importorskip("diffusers")
    report = tmp_path / "report.json"
    code, out, err = run(capsys, "compare", "--steps", "10", "--eta", "0.5", "--shape", "2,3,4,4", "--out", str(report))
    assert code == 0, out + err
    assert "timesteps identical: [900, 800" in out and verdict(out).startswith(("verdict MATCH", "verdict EXPLAINED"))
    data = json.loads(report.read_text())
    assert data["passed"] is True and len(data["steps"]) == 10 and data["config"]["num_train_timesteps"] == 1000
    assert all(row["candidate_exact"] <= data["rtol"] for row in data["steps"])


def test_compare_zero_snr_eta_1_passes_whatever_diffusers_rounds(capsys, tmp_path, record_property):
    # The reproducer of docs/migration.md's "η = 1 with zero terminal SNR": ddim_sched equals the exact
    # result; diffusers' float32 cancellation varies by CPU (NaN, ~2e-4, or exact). Exit 0 either way.
    pytest.importorskip("diffusers")
    report = tmp_path / "r.json"
    code, out, _ = run(capsys, "compare", *ZERO_SNR_FLAGS, "--eta", "1", "--out", str(report))
    data = json.loads(report.read_text())
    record_property("diffusers", f"verdict {data['verdict']}, causes {data['causes']}, max error {data['max_error']}")
    assert code == 0 and data["verdict"] in ("MATCH", "EXPLAINED"), out
    assert all(row["candidate_exact"] <= data["rtol"] for row in data["steps"])
    if data["verdict"] == "EXPLAINED":
        assert data["causes"] == ["zero_snr_rounding"] and "docs/migration.md" in out


def test_compare_explains_the_trailing_extra_timestep(capsys):
    pytest.importorskip("diffusers")
    # docs/migration.md: diffusers' trailing S=61 yields 62 timesteps ending at -1.
    code, out, _ = run(capsys, "compare", "--steps", "61", "--timestep-spacing", "trailing")
    assert code == 0, out
    assert "timesteps: diffusers visits ddim_sched's 61 then [-1]" in out and "trailing_extra_step" in out
    rows = [line for line in out.splitlines() if re.match(r"\s+\d+\s+\d+\s", line)]
    assert len(rows) == 61 and verdict(out).startswith("verdict EXPLAINED")


def test_compare_explains_the_successor_rule(capsys):
    pytest.importorskip("diffusers")
    code, out, _ = run(
        capsys, "compare", "--steps", "10", "--timestep-spacing", "linspace", "--prev-timestep-rule", "schedule"
    )
    assert code == 0, out
    assert "--prev-timestep-rule 'schedule'" in out and "lands on 888 vs 899" in out
    assert "successor_rule" in out and "docs/migration.md" in out
    assert verdict(out).startswith("verdict EXPLAINED")


def test_compare_exits_1_for_an_unexplained_difference(capsys, monkeypatch):
    pytest.importorskip("diffusers")
    original = DDIMScheduler.step

    def off_by_a_little(self, *args, **kwargs):  # a broken ddim_sched: 1e-3 off at every step
        prev, x0 = original(self, *args, **{**kwargs, "return_dict": False})
        return type(original(self, *args, **kwargs))(prev * 1.001, x0)

    monkeypatch.setattr(cli.DDIMScheduler, "step", off_by_a_little)
    code, out, err = run(capsys, "compare", "--steps", "5")
    assert code == 1 and err == ""
    assert verdict(out).startswith("verdict DIFFER: 5 step(s) differ")


def test_compare_reports_a_reference_that_raises(capsys, monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    original = diffusers.DDIMScheduler.step

    def fails_late(self, model_output, timestep, sample, *args, **kwargs):
        if int(timestep) < 300:
            raise IndexError("index -1 is out of bounds")
        return original(self, model_output, timestep, sample, *args, **kwargs)

    monkeypatch.setattr(diffusers.DDIMScheduler, "step", fails_late)
    code, out, err = run(capsys, "compare", "--steps", "10")
    assert code == 1 and "Traceback" not in err
    assert "the reference's step raised IndexError at step 7 (timestep 200)" in out
    assert verdict(out).startswith("verdict DIFFER")


@needs_dev_full
def test_compare_report_to_a_full_device_is_an_environment_error(capsys):
    pytest.importorskip("diffusers")
    code, out, err = run(capsys, "compare", "--steps", "5", "--out", "/dev/full")
    assert code == 2 and out == "" and "MATCH" not in out
    assert err.strip().splitlines() == [
        "ddim-sched compare: error: --out: cannot write '/dev/full': No space left on device"
    ]


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
        (["schedule", "--beta-start", "2"], ["--beta-start 2.0:", "(0, 1)"]),
        (
            ["schedule", "--beta-start", "0.5", "--beta-end", "0.1"],
            ["--beta-start 0.5 --beta-end 0.1:", "beta_end=0.1"],
        ),
        (["schedule", "--timestep-spacing", "cubic"], ["--timestep-spacing", "cubic", "'trailing'"]),
        (["schedule", "--steps-offset", "200", "--steps", "5"], ["--steps 5", "steps_offset=200"]),
        (["schedule", "--rescale-betas-zero-snr", "--timestep-spacing", "trailing"], ["--steps 10", "v_prediction"]),
        (["schedule", "--config", "{tmp}/missing/scheduler_config.json"], ["--config", "missing"]),
        (["schedule", "--config", "{bad_json}"], ["--config", "not valid JSON"]),
        (["schedule", "--config", "{bad_value}"], ["--config {bad_value}:", "beta_schedule", "quadratic"]),
        (["schedule", "--eta", "-1"], ["--eta"]),
        (["schedule", "--plot", "{tmp}"], ["--plot", "is a directory"]),
        (["demo", "--dtype", "float16"], ["--dtype", "float16"]),
        (["demo", "--device", "gpu0"], ["--device", "gpu0"]),
        (["demo", "--out", "{text_file}"], ["--out", "notes.txt"]),
        (["demo", "--seed", "x"], ["--seed"]),
        (["demo", "--seed", "-1"], ["--seed", "[0, 2**32)"]),
        (["compare", "--shape", "a,b"], ["--shape"]),
        (["compare", "--shape", "4"], ["--shape", "batch size"]),
        (["compare", "--dtype", "int8"], ["--dtype"]),
        (["compare", "--rtol", "nan"], ["--rtol", "'nan'"]),
        (["compare", "--rtol", "-1e-4"], ["--rtol"]),
        (["compare", "--config", "{tmp}/nope"], ["--config", "nope"]),
        (["compare", "--out", "{tmp}"], ["--out", "is a directory"]),
        (["demo", "--unknown-flag"], ["--unknown-flag"]),
        (["frobnicate"], ["frobnicate"]),
        ([], ["demo,schedule,compare"]),
    ],
)
def test_usage_errors_exit_2_and_name_the_flag(capsys, tmp_path, monkeypatch, argv, names):
    never_sample(monkeypatch)
    values = {
        "tmp": str(tmp_path),
        "bad_json": _bad_json(tmp_path),
        "bad_value": _bad_value(tmp_path),
        "text_file": _text_file(tmp_path),
    }
    code, out, err = run(capsys, *[a.format(**values) for a in argv])
    assert code == 2
    for name in names:
        assert name.format(**values) in err, err
    assert "Traceback" not in err and out == ""
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


def test_a_valid_combination_of_flags_is_not_blamed_on_one_of_them(capsys):
    # --beta-start 0.03 alone exceeds the default beta_end (0.02); with --beta-end 0.04 it is valid.
    code, out, err = run(capsys, "schedule", "--beta-start", "0.03", "--beta-end", "0.04", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["config"]["beta_start"] == 0.03


def test_a_config_file_error_is_blamed_on_the_file_and_a_flag_error_on_the_flag(capsys, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"beta_start": 0.001, "beta_end": 0.002}))
    code, _, err = run(capsys, "schedule", "--config", str(path), "--beta-end", "0.0005")
    assert code == 2 and "error: --beta-end 0.0005: beta_start must not exceed beta_end" in err
    path.write_text(json.dumps({"beta_start": 0.001, "beta_end": 0.0005}))
    code, _, err = run(capsys, "schedule", "--config", str(path), "--beta-end", "0.002")
    assert code == 0  # the flag fixes the file
    code, _, err = run(capsys, "schedule", "--config", str(path), "--steps", "5")
    assert code == 2 and f"error: --config {path}: beta_start must not exceed beta_end" in err


def test_a_combination_error_quotes_the_flags_given_with_their_values(capsys, tmp_path):
    # Neither flag is wrong alone against the other; the error names both and quotes the user's beta_end.
    code, out, err = run(capsys, "schedule", "--beta-start", "0.15", "--beta-end", "0.1")
    assert code == 2 and out == ""
    assert err.strip() == (
        "ddim-sched schedule: error: --beta-start 0.15 --beta-end 0.1: beta_start must not exceed beta_end; "
        "got beta_start=0.15 > beta_end=0.1"
    )
    # A flag against a value the user did not give: the error says where that value comes from.
    code, _, err = run(capsys, "schedule", "--beta-start", "0.15")
    assert code == 2 and "--beta-start 0.15: " in err and "(beta_end is the default; --beta-end sets it)" in err
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"num_train_timesteps": 1}))
    code, _, err = run(capsys, "schedule", "--config", str(path), "--rescale-betas-zero-snr")
    assert code == 2 and "error: --rescale-betas-zero-snr: rescale_betas_zero_snr needs num_train_timesteps" in err
    assert f"(num_train_timesteps is from --config {path})" in err


def test_eta_defaults_to_0_in_every_subcommand(capsys):
    parser = cli.build_parser()
    assert parser.parse_args(["schedule"]).eta == parser.parse_args(["compare"]).eta == 0.0
    code, out, _ = run(capsys, "schedule", "--format", "json", "--steps", "5")
    assert code == 0 and json.loads(out)["eta"] == 0.0
    assert [row["sigma_step"] for row in json.loads(out)["steps"]] == [0.0] * 5
    for command in ("schedule", "compare"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and re.search(r"--eta ETA\s+eta.*\(default 0\)", out), out


def test_a_config_file_is_read_as_a_file_whatever_its_name(capsys, tmp_path):
    path = tmp_path / "cfg.txt"
    path.write_text(json.dumps({"steps_offset": 1, "beta_schedule": "scaled_linear"}))
    code, out, err = run(capsys, "schedule", "--config", str(path), "--format", "json", "--steps", "5")
    assert code == 0, err
    data = json.loads(out)
    assert [row["t"] for row in data["steps"]] == [801, 601, 401, 201, 1]
    assert data["config"]["beta_schedule"] == "scaled_linear"
    path.write_text("steps_offset: 1")  # a file that is not JSON is named as such
    code, _, err = run(capsys, "schedule", "--config", str(path))
    assert code == 2 and "cfg.txt" in err and "not valid JSON" in err


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--timestep-spacing", "quad"], "--timestep-spacing quad: diffusers' DDIMScheduler has no 'quad' spacing"),
        (["--timestep-spacing", "karras"], "--timestep-spacing karras: diffusers' DDIMScheduler has no 'karras'"),
        (["--snr-shift-scale", "3"], "--snr-shift-scale 3.0: diffusers' DDIMScheduler has no SNR shift"),
    ],
)
def test_compare_an_option_diffusers_lacks_is_a_usage_error(capsys, argv, named):
    code, out, err = run(capsys, "compare", "--steps", "5", *argv)
    assert code == 2 and out == ""
    assert err.startswith(f"ddim-sched compare: error: {named}") and "nothing to compare" in err


@pytest.mark.parametrize("command", ["demo", "schedule", "compare"])
def test_an_unknown_flag_prints_the_subcommands_own_usage(capsys, monkeypatch, command):
    never_sample(monkeypatch)
    code, out, err = run(capsys, command, "--stepz", "3")
    assert code == 2 and out == ""
    assert err.startswith(f"usage: ddim-sched {command} ")
    assert err.strip().endswith(f"ddim-sched {command}: error: unrecognized arguments: --stepz 3")
    code, _, err = run(capsys, "--stepz", command)  # before the subcommand: the top level's
    assert code == 2 and err.startswith("usage: ddim-sched [-h]") and "ddim-sched: error: " in err


def test_compare_prints_one_verdict_line(capsys):
    pytest.importorskip("diffusers")
    code, out, _ = run(capsys, "compare", "--steps", "5")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[-1].startswith("verdict MATCH: ")
    assert [line for line in lines if "MATCH" in line] == [lines[-1]]


def test_schedule_table_explains_its_columns(capsys):
    code, out, _ = run(capsys, "schedule", "--steps", "5")
    assert code == 0
    assert "t_prev: the timestep it lands on, where alpha_bar_prev is read (-1: past the end)" in out
    assert "next: the timestep the loop visits next (-1: none)" in out
    assert "sigma_step: the noise the step adds, DDIM's eq. 16 sigma at eta=0" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_usage_error(capsys):
    code, _, err = run(capsys, "demo", "--device", "cuda")
    assert code == 2 and "--device cuda: CUDA is not available" in err


@pytest.mark.parametrize(
    "command, flags",
    [("demo", ["--quick", "--out"]), ("schedule", ["--config", "--plot"]), ("compare", ["--config", "--rtol"])],
)
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
    bad = run_process("schedule", "--config", "/nonexistent/x.json")
    assert bad.returncode == 2 and "ddim-sched schedule: error: --config" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_importing_main_module_runs_nothing():
    # Tools that walk the package (doctest collection, pkgutil) import ddim_sched.__main__.
    module = importlib.import_module("ddim_sched.__main__")
    assert module.main is cli.main
