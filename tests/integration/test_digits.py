"""The digits demo (ddim_sched.demo.digits): training, the metric and the three experiments, in reduced
sizes. Every assertion is a property or a self-consistency check (no golden numbers): a broken sampler,
inverter or metric fails them, a different CPU rounding does not."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from ddim_sched import DDIMScheduler, sample  # noqa: E402
from ddim_sched.demo import digits  # noqa: E402
from ddim_sched.demo.digits import (  # noqa: E402
    QUICK,
    EditingCell,
    FeatureFID,
    Spread,
    format_digits,
    frechet_distance,
    interpolation,
    load_digits_data,
    pick_pairs,
    quality_table,
    roundtrip_table,
    run_digits,
    train_classifier,
    train_eps_model,
)
from ddim_sched.demo.digits_editing import EXACT_METHODS, editing_table  # noqa: E402

TINY = dataclasses.replace(
    QUICK,
    train_steps=300,
    width=64,
    classifier_steps=200,
    samples=100,
    steps=(10, 20),
    floor_draws=4,
    halves=20,
    roundtrip_images=8,
    roundtrip_steps=(5, 10),
    roundtrip_iterations=(0, 2),
    pairs=((0, 6),),
    points=5,
    interpolation_steps=5,
    per_cell=4,
    editing_steps=(10, 20),  # S=10 reuses the round-trip table's k=0 and k=2 cells, S=20 measures them
)


@pytest.fixture(scope="module")
def data():
    return load_digits_data(seed=0)


@pytest.fixture(scope="module")
def trained(data, one_thread):
    """A model and metric trained just enough to tell digits from noise (a few seconds)."""
    model = train_eps_model(data, 1500, seed=0, width=128, threads=1)
    classifier = train_classifier(data, 400, seed=1, threads=1)
    return model, FeatureFID(classifier, data.held_out)


def test_import_ddim_sched_does_not_import_sklearn_or_matplotlib():
    code = (
        "import sys, ddim_sched, ddim_sched.demo.digits\n"
        "assert 'sklearn' not in sys.modules, 'sklearn imported'\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_sklearn_names_the_demo_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "ddim_sched\[demo\]"'):
        load_digits_data()


def test_split_is_seeded_scaled_and_disjoint(data):
    assert data.train.shape == (1297, 64) and data.held_out.shape == (500, 64)
    assert data.train.min() == -1 and data.train.max() == 1
    # Images are 17 grey levels: x = level/8 − 1.
    assert torch.equal(((data.train + 1) * 8).round(), (data.train + 1) * 8)
    again, other = load_digits_data(seed=0), load_digits_data(seed=1)
    assert torch.equal(again.held_out, data.held_out) and not torch.equal(other.held_out, data.held_out)
    rows = {tuple(r) for r in data.train.tolist()} | {tuple(r) for r in data.held_out.tolist()}
    everything = torch.cat([data.train, data.held_out])
    assert len(rows) == len({tuple(r) for r in everything.tolist()})
    with pytest.raises(ValueError, match="held_out"):
        load_digits_data(held_out=0)


def test_training_is_deterministic_reduces_the_loss_and_leaves_global_state(data):
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    runs = [train_eps_model(data, 300, seed=3, width=32, batch_size=64, threads=1) for _ in range(2)]
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng)
    first, second = (r.network.state_dict() for r in runs)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert runs[0].losses == runs[1].losses
    assert np.mean(runs[0].losses[-50:]) < 0.85 * np.mean(runs[0].losses[:50])
    other = train_eps_model(data, 10, seed=4, width=32, batch_size=64, threads=1).network.state_dict()
    assert not torch.equal(first["out.weight"], other["out.weight"])


def test_progress_reports_reach_the_total(data):
    calls = []
    train_eps_model(data, 30, seed=0, width=16, batch_size=16, threads=1, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (30, 30) and all(t == 30 for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    shift = rng.normal(size=5)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # Same covariance: d² = ‖Δμ‖².
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-8)
    # b = 2a: d² = ‖μ‖² + tr Σ (‖μ − 2μ‖² + tr Σ + 4 tr Σ − 2·2 tr Σ).
    cov = np.cov(a, rowvar=False)
    expected = float(a.mean(0) @ a.mean(0) + np.trace(cov))
    assert frechet_distance(a, 2 * a) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, 2 * a) == pytest.approx(frechet_distance(2 * a, a), rel=1e-6)


def test_metric_scores_real_digits_below_noise(data, trained):
    _, metric = trained
    floor = metric.real_floor(data.train, 200, draws=3, seed=0)
    noise = metric(torch.rand(200, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert floor.max() < 0.2 * noise
    assert metric(data.held_out) == pytest.approx(0.0, abs=1e-6)  # the reference against itself


def test_split_halves_pair_the_sets(trained, data):
    _, metric = trained
    features = metric.features(data.train[:200])
    other = metric.features(data.train[200:400])
    halves = metric.half_samples([features, features, other], repeats=20, seed=0)
    assert halves.shape == (20, 3)
    assert np.array_equal(halves[:, 0], halves[:, 1])  # the same rows in every set
    assert halves[:, 2].std() > 0
    with pytest.raises(ValueError, match="same number of rows"):
        metric.half_samples([features, other[:100]], repeats=2, seed=0)


def test_quick_model_samples_are_closer_to_the_data_than_noise_or_a_broken_step(trained):
    model, metric = trained
    table = quality_table(model, metric, steps=(20,), etas=(0.0,), n=200, seed=5)
    good = table.fid[(0.0, 20)]
    noise = metric(torch.randn(200, 64, generator=torch.Generator().manual_seed(1)))
    broken = DDIMScheduler(clip_sample=False, prediction_type="sample")  # reads ε̂ as x̂0
    broken.set_timesteps(20)
    x_T = torch.randn(200, 64, generator=torch.Generator().manual_seed(5))
    assert good < 0.5 * noise
    assert good < 0.5 * metric(sample(model, x_T, broken))


def test_fixed_point_inversion_beats_classic_inversion(trained, data):
    model, _ = trained
    table = roundtrip_table(model, data.held_out[:16], steps=(10,), iterations=(0, 10))
    assert table[(10, 10)] < 0.5 * table[(0, 10)]


def _per_step(cell: EditingCell) -> tuple[float, float]:
    return cell.encode_calls / cell.steps, cell.decode_calls / cell.steps


def test_editing_table_at_the_quick_sizes(trained, data):
    """The editing table at the quick demo's sizes (its digits, S, k) on the briefly trained model: the exact
    methods return the digits to float rounding, every method makes the model calls docs/editing.md states
    (counted), and the cells read from the round-trip table are what measuring them gives."""
    model, _ = trained
    images = data.held_out[: QUICK.roundtrip_images]
    calls: dict = {}
    roundtrip = roundtrip_table(model, images, QUICK.roundtrip_steps, QUICK.roundtrip_iterations, calls=calls)
    reports = []
    table = editing_table(model, images, QUICK.editing_steps, 0, roundtrip, calls, lambda d, t: reports.append((d, t)))
    assert table.steps == QUICK.editing_steps == (10, 50) and table.images == len(images)
    assert list(table.rows) == [
        "DDIM inversion (k=0)",
        "fixed-point invert, k=1",
        "fixed-point invert, k=2",
        "fixed-point invert, k=5",
        "BDIA, gamma=1",
        "EDICT, p=0.93",
        "edit-friendly maps, eta=1",
    ]
    for label in EXACT_METHODS:
        for S in table.steps:
            assert table.rows[label][S].mse < 1e-6, (label, S)
    for S in table.steps:
        assert _per_step(table.rows["DDIM inversion (k=0)"][S]) == (1, 1)
        for k in (1, 2, 5):
            assert _per_step(table.rows[f"fixed-point invert, k={k}"][S]) == (k + 2, 1)  # every iterate measured
        bdia = table.rows["BDIA, gamma=1"][S]
        assert (bdia.encode_calls, bdia.decode_calls) == (S, S - 1)  # the pair already holds step 0
        assert _per_step(table.rows["EDICT, p=0.93"][S]) == (2, 2)
        assert _per_step(table.rows["edit-friendly maps, eta=1"][S]) == (1, 1)
    # Progress counts every model call the table made here (the reused cells cost none).
    made = sum(c.encode_calls + c.decode_calls for cells in table.rows.values() for c in cells.values() if not c.reused)
    assert reports[-1] == (made, made)
    # Reused cells: k=0 and k=2, as the round-trip table measured them; measuring them again gives the same.
    reused = {(label, S) for label, cells in table.rows.items() for S, c in cells.items() if c.reused}
    assert reused == {(label, S) for label in ("DDIM inversion (k=0)", "fixed-point invert, k=2") for S in (10, 50)}
    fresh = editing_table(model, images, (10,), 0)
    assert not any(c.reused for cells in fresh.rows.values() for c in cells.values())
    assert fresh.rows["fixed-point invert, k=2"][10].mse == roundtrip[(2, 10)]
    assert fresh.rows["edit-friendly maps, eta=1"][10].mse == table.rows["edit-friendly maps, eta=1"][10].mse


def test_slerp_path_starts_and_ends_on_the_encoded_digits(trained, data):
    model, _ = trained
    start, end = pick_pairs(data, [(0, 6), (1, 7)])
    path = interpolation(model, start, end, steps=10, points=5, fixed_point_iterations=10)
    assert path.decoded.shape == (2, 5, 64)
    between = float(((start - end) ** 2).mean() / 4)
    assert path.endpoint_mse < 0.05 * between
    middle = path.decoded[:, 2]
    assert float(((middle - start) ** 2).mean() / 4) > 4 * path.endpoint_mse
    assert float(((middle - end) ** 2).mean() / 4) > 4 * path.endpoint_mse


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_thread):
    """run_digits at TINY sizes with figures, and the progress calls it made per phase."""
    phases = {}

    def factory(label, total):
        phases[label] = []
        return lambda done, of: phases[label].append((done, of))

    out_dir = tmp_path_factory.mktemp("digits")
    return run_digits(seed=0, out_dir=out_dir, progress_factory=factory, sizes=TINY, threads=1), phases


def test_run_digits_tiny_end_to_end(tiny_run):
    result, phases = tiny_run
    assert {cell for cell in result.quality.fid} == {(eta, S) for eta in TINY.etas for S in TINY.steps}
    assert len(phases) == 7 and all(calls and calls[-1][0] == calls[-1][1] for calls in phases.values()), phases
    assert result.worse_fid["uniform noise in [-1, 1]"] > result.floor.max()
    assert result.seconds["total"] >= sum(v for k, v in result.seconds.items() if k != "total") - 1e-6
    text = format_digits(result)
    for needle in ("(d1)", "Floor", "(d2)", "Editing methods side by side", "(d3)", "paper's pattern", "wall time"):
        assert needle in text
    # The editing table: every row at every S, the k=0 and k=2 cells at S=10 read from the round-trip table.
    editing = result.editing
    assert editing.steps == TINY.editing_steps and editing.images == TINY.roundtrip_images
    assert len(editing.rows) == 7 and all(set(cells) == set(TINY.editing_steps) for cells in editing.rows.values())
    for k, label in ((0, "DDIM inversion (k=0)"), (2, "fixed-point invert, k=2")):
        assert editing.rows[label][10].reused and editing.rows[label][10].mse == result.roundtrip[(k, 10)]
        assert not editing.rows[label][20].reused
    assert "the k=0 (S=10), k=2 (S=10) cells are the round trips above" in text
    for label in editing.rows:
        (row,) = [line for line in text.splitlines() if line.strip().startswith(label)]
        assert f"{editing.rows[label][20].mse:.2e}" in row
    pytest.importorskip("matplotlib")
    assert set(result.figures) == {"samples", "interpolation"}
    assert all(path.exists() and path.stat().st_size > 1000 for path in result.figures.values())


def _with_fids(result, fids, sd):
    """The result with the quality table's FIDs replaced and split halves of spread ``sd`` around them."""
    labels = tuple(fids) + tuple(result.worse_fid)
    centres = np.array(list(fids.values()) + list(result.worse_fid.values()))
    noise = np.random.default_rng(0).normal(size=(50, len(labels)))
    spread = Spread(labels, centres + sd * (noise - noise.mean(0)) / noise.std(0, ddof=1))
    quality = dataclasses.replace(result.quality, fid=fids)
    return dataclasses.replace(result, quality=quality, spread=spread)


def test_verdicts_call_only_differences_beyond_the_spread(tiny_run):
    result, _ = tiny_run
    clear = {(0.0, 10): 20.0, (1.0, 10): 40.0, (0.0, 20): 15.0, (1.0, 20): 15.5}
    text = format_digits(_with_fids(result, clear, sd=1.0))
    assert "eta=0 better than eta=1 at few steps: seen (S=10)" in text
    assert "the gap closes at many steps: seen" in text
    assert "quality improves with S: seen for eta=0, 1" in text
    # The same pattern, but smaller than its spread: nothing is called.
    text = format_digits(_with_fids(result, clear, sd=20.0))
    assert "eta=0 better than eta=1 at few steps: NOT seen at S=10" in text
    assert "quality improves with S: NOT seen" in text
    # Cells inside the real-vs-real floor's range are marked.
    inside = {cell: float(result.floor.min()) for cell in clear}
    marked = format_digits(_with_fids(result, inside, sd=1.0)).count("~") - text.count("~")
    assert marked == len(inside)


def test_a_diverged_round_trip_is_shown_as_diverged_with_its_error(tiny_run):
    result, _ = tiny_run
    failed = {**result.roundtrip, (2, 5): 2.68e7, (2, 10): 10.7}  # k=2 further off than a random other digit
    text = format_digits(dataclasses.replace(result, roundtrip=failed))
    (row,) = [line for line in text.splitlines() if line.split()[:1] == ["k=2"] and "below" not in line]
    assert row.split()[1:] == ["diverged", "diverged"] and "!" not in text
    assert "(MSE 1.1e+01 to 2.7e+07" in text and "docs/demo.md" in text
    assert "which diverged at S=5, 10" in text


def test_the_editing_summary_follows_the_table(tiny_run):
    result, _ = tiny_run
    text = format_digits(result)
    assert "The exact methods (BDIA, EDICT, noise maps) return the digits to float rounding" in text
    rows = {label: dict(cells) for label, cells in result.editing.rows.items()}
    base = rows["DDIM inversion (k=0)"]
    rows["EDICT, p=0.93"][20] = dataclasses.replace(rows["EDICT, p=0.93"][20], mse=2e-3)
    rows["fixed-point invert, k=5"] = {S: dataclasses.replace(c, mse=1e3) for S, c in base.items()}
    rows["fixed-point invert, k=1"] = {S: dataclasses.replace(c, mse=c.mse / 2) for S, c in base.items()}
    edited = dataclasses.replace(result, editing=dataclasses.replace(result.editing, rows=rows))
    text = format_digits(edited)
    assert "The exact methods do NOT all reach float rounding (MSE >= 1e-06): EDICT, p=0.93 at S=20." in text
    assert "Fixed-point refinement beats k=0 at k=1 (S=10, 20)" in text
    assert "it diverges (worse than a random other digit) at k=5 (S=10, 20)." in text


def test_sample_grid_shows_the_reference_once_and_every_fid_with_its_spread(tiny_run):
    pytest.importorskip("matplotlib")
    from tests.integration.test_demo import assert_readable_at_readme_width, texts

    result, _ = tiny_run
    fig = digits.sample_grid_figure(
        result.quality, result.data.held_out, 4, result.worse_samples, result.worse_fid, result.spread
    )
    titles = [ax.get_title() for ax in fig.axes]
    assert [t for t in titles if t.startswith("real digits")] == ["real digits:\n4 of the 500\nheld out"]
    cells, worse = len(TINY.etas) * len(TINY.steps), len(result.worse_fid)
    assert len(fig.axes) == 1 + cells + worse
    fids = [t for t in titles if "FID" in t]
    assert len(fids) == cells + worse and all(" ± " in t for t in fids)
    eta, S = TINY.etas[0], TINY.steps[0]
    first = f"S = {S}\nFID {result.quality.fid[(eta, S)]:.1f} ± {result.spread.sd((eta, S)):.1f}"
    assert first in titles
    # The worse sets sit in a block of their own, under a heading, not in a column of the grid.
    assert any("must score worse" in t.get_text() for t in texts(fig))
    assert_readable_at_readme_width(fig)


def test_interpolation_figure_labels_alpha_once_and_the_classifiers_readings(tiny_run):
    pytest.importorskip("matplotlib")
    from tests.integration.test_demo import assert_readable_at_readme_width, texts

    result, _ = tiny_run
    fig = digits.interpolation_figure(result.interpolation, result.path_labels)
    words = [t.get_text() for t in texts(fig)]
    points, pairs = TINY.points, len(TINY.pairs)
    assert len([w for w in words if w.startswith("α = ")]) == points  # one header per column
    reads = [w for w in words if w.startswith("reads ")]
    assert reads == [f"reads {label}" for path in result.path_labels for label in path]
    assert not any(w in ("start", "end") for w in words)
    assert any("At α = 0 and 1 the crossfade row shows the two real digits" in w for w in words)
    assert len(fig.axes) == points * (1 + 2 * pairs) + 1  # header row, two rows per pair, the note
    assert_readable_at_readme_width(fig)


def test_figures_are_skipped_with_a_message_without_matplotlib(monkeypatch, tiny_run, tmp_path):
    result, _ = tiny_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert digits.draw_sample_grid(tmp_path / "x.png", result.quality, result.data.held_out) is False
    assert digits.draw_interpolation(tmp_path / "y.png", result.interpolation) is False
    unplotted = dataclasses.replace(result, figures={}, figure_note=None)
    digits._draw(unplotted, tmp_path)
    assert list(tmp_path.iterdir()) == [] and unplotted.figures == {}
    assert 'pip install "ddim_sched[demo]"' in unplotted.figure_note
    assert unplotted.figure_note in format_digits(unplotted)


def test_mosaic_tiles_in_row_major_order():
    images = torch.stack([torch.full((64,), v) for v in (-1.0, 0.0, 1.0)])
    canvas = digits.mosaic(images, columns=2, gap=1)
    assert canvas.shape == (17, 17)
    assert canvas[0, 0] == -1 and canvas[0, 9] == 0 and canvas[9, 0] == 1 and canvas[9, 9] == -1
