"""The digits section's text: tables with the paper's numbers in brackets, the FID floor, which
differences exceed the split-half spread, and a one-line verdict on the paper's pattern.

A difference between two FIDs counts as resolved when it exceeds twice its paired split-half standard
deviation; everything else is reported as within the noise.
"""

from __future__ import annotations

from collections.abc import Sequence

from .common import DIVERGENCE_DOCS, demo_scheduler
from .digits_editing import EXACT_METHODS, EXACT_MSE, ITERATIONS, EditingCell, fixed_point_label
from .digits_experiments import consistency
from .digits_result import DigitsResult
from .paper import PAPER_TABLE2_MSE, paper_fid

Label = tuple[float, int] | str
"""A quality cell (η, S) or the name of a sampler that should score worse."""

RESOLVE = 2.0
"""A difference is resolved when |Δ| > RESOLVE × its paired split-half sd."""


def _fid(result: DigitsResult, label: Label) -> float:
    """The FID of a quality cell (η, S) or of a named worse sampler."""
    return result.worse_fid[label] if isinstance(label, str) else result.quality.fid[label]


def _difference(result: DigitsResult, a: Label, b: Label) -> tuple[float, float, bool]:
    """(FID(a) − FID(b), its paired split-half sd, resolved?)."""
    delta = _fid(result, a) - _fid(result, b)
    sd = result.spread.difference_sd(a, b)
    return delta, sd, abs(delta) > RESOLVE * sd


def _gap_change_sd(result: DigitsResult, first: int, last: int) -> float:
    """Split-half sd of [FID(1, first) − FID(0, first)] − [FID(1, last) − FID(0, last)]."""
    spread, low, high = result.spread, min(result.quality.etas), max(result.quality.etas)
    column = {label: spread.replicates[:, i] for i, label in enumerate(spread.labels)}
    change = (column[(high, first)] - column[(low, first)]) - (column[(high, last)] - column[(low, last)])
    return float(change.std(ddof=1))


def _header(result: DigitsResult) -> list[str]:
    data, model, sizes = result.data, result.model, result.sizes
    config = demo_scheduler().ddim_config
    head = sum(model.losses[:100]) / max(len(model.losses[:100]), 1)
    tail = sum(model.losses[-100:]) / max(len(model.losses[-100:]), 1)
    return [
        f"(d) A learned model: scikit-learn's 8x8 handwritten digits, {len(data.train)} training / "
        f"{len(data.held_out)} held-out images scaled to [-1, 1] (seed {result.seed}).",
        f"    eps-model: residual MLP, width {sizes.width}, {model.network.blocks} residual SiLU blocks with biases "
        "from a sinusoidal embedding of t;",
        f"    {model.steps} Adam steps of batch {model.batch_size} on dequantized digits, moving-average weights; loss "
        f"{head:.3f} -> {tail:.3f} (first / last 100 steps);",
        f"    trained in {model.seconds:.1f} s on {model.threads} thread(s). Scheduler: {config.beta_schedule} betas "
        f"{config.beta_start:g}..{config.beta_end:g}, T={config.num_train_timesteps}, {config.timestep_spacing} "
        f"spacing, clip_sample={config.clip_sample}.",
    ]


def _quality_lines(result: DigitsResult) -> list[str]:
    quality, floor, sizes = result.quality, result.floor, result.sizes
    lines = [
        "(d1) Sample quality. FID: Frechet distance between Gaussian fits to the features of "
        f"{sizes.samples} samples (clamped to [-1, 1])",
        f"     and of the {len(result.data.held_out)} held-out digits, in the 64-unit last hidden layer of a "
        "64-128-64-10 ReLU classifier",
        f"     trained on the training split (held-out accuracy {100 * result.classifier_accuracy:.1f}%). All cells "
        "start from the same x_T.",
        f"     +-: split-half sd ({sizes.halves} random halves of the samples, the same rows in every cell). Floor "
        f"({sizes.samples} real",
        f"     training digits vs held-out, {len(floor)} draws): {floor.mean():.2f} +- {floor.std(ddof=1):.2f} "
        f"(range {floor.min():.2f}..{floor.max():.2f}); '~': a cell within that range.",
        "     In brackets: the paper's Table 1 (CIFAR10 FID, another model and feature space: compare trends only).",
        "     eta " + "".join(f"S={S}".rjust(20) for S in quality.steps),
    ]
    for eta in quality.etas:
        cells = ""
        for S in quality.steps:
            value, paper = quality.fid[(eta, S)], paper_fid(eta, S)
            mark = "~" if value <= floor.max() else " "
            bracket = f"[{paper:>5.2f}]" if paper else " " * 7
            cells += f"{value:>7.1f}+-{result.spread.sd((eta, S)):<4.1f}{mark}{bracket}"
        lines.append(f"     {eta:<4g}" + cells.rstrip())
    return lines


def _worse_lines(result: DigitsResult) -> list[str]:
    best = min(result.quality.fid, key=lambda cell: result.quality.fid[cell])
    best_fid = result.quality.fid[best]
    lines = [f"     Must score worse than the best cell (eta={best[0]:g}, S={best[1]}: {best_fid:.1f}):"]
    for label, value in result.worse_fid.items():
        delta, sd, resolved = _difference(result, label, best)
        worse = resolved and delta > 0
        verdict = f"yes, by {delta:.1f} +- {sd:.1f}" if worse else f"NO (difference {delta:.1f} +- {sd:.1f})"
        lines.append(f"       {label:<38} {value:>8.1f}   {verdict}")
    return lines


def _eta_lines(result: DigitsResult) -> tuple[list[str], dict[str, str]]:
    """Per S, FID(η=max) − FID(η=0); and the verdicts on the paper's η pattern."""
    quality = result.quality
    low, high = min(quality.etas), max(quality.etas)
    gaps = {S: _difference(result, (high, S), (low, S)) for S in quality.steps}
    text = "   ".join(f"S={S}: {d:+.1f} +- {sd:.1f}{'*' if ok else ''}" for S, (d, sd, ok) in gaps.items())
    lines = [f"     FID(eta={high:g}) - FID(eta={low:g}) per S ('*': beyond {RESOLVE:g} sd): {text}"]
    better = [S for S, (d, _, ok) in gaps.items() if ok and d > 0]
    worse = [S for S, (d, _, ok) in gaps.items() if ok and d < 0]
    first, last = quality.steps[0], quality.steps[-1]
    verdicts = {
        f"eta={low:g} better than eta={high:g} at few steps": f"seen (S={_join(better)})"
        if first in better
        else f"NOT seen at S={first}"
    }
    if len(quality.steps) > 1:
        shrink = gaps[first][0] - gaps[last][0]
        change_sd = _gap_change_sd(result, first, last)
        closes = shrink > RESOLVE * change_sd
        if worse:
            reverses = f", reversed (resolved) at S={_join(worse)}"
        elif gaps[last][0] < 0:
            reverses = ", its sign reversed but within the spread"
        else:
            reverses = ""
        verdicts["the gap closes at many steps"] = (
            f"{'seen' if closes else 'NOT seen'} ({gaps[first][0]:+.1f} at S={first} -> {gaps[last][0]:+.1f} at "
            f"S={last}{reverses})"
        )
    return lines, verdicts


def _steps_lines(result: DigitsResult) -> tuple[list[str], dict[str, str]]:
    """Per η, FID(S=first) − FID(S=last), the best S, and the verdict on quality improving with S."""
    quality = result.quality
    first, last = quality.steps[0], quality.steps[-1]
    improves: list[str] = []
    flat: list[str] = []
    parts = []
    for eta in quality.etas:
        delta, sd, resolved = _difference(result, (eta, first), (eta, last))
        best = min(quality.steps, key=lambda S: quality.fid[(eta, S)])
        parts.append(f"eta={eta:g}: {delta:+.1f} +- {sd:.1f}{'*' if resolved else ''} (best S={best})")
        (improves if resolved and delta > 0 else flat).append(f"{eta:g}")
    lines = [f"     FID(S={first}) - FID(S={last}) per eta: " + "; ".join(parts)]
    same = ", ".join(f"eta={eta:g}: {value:.3f}" for eta, value in consistency(quality).items())
    lines += [
        f"     Consistency (paper Sec. 5.2), MSE per pixel between the S={first} and S={last} samples of one x_T:",
        f"     {same} (random pairs of held-out digits: {result.roundtrip_scale:.3f}).",
    ]
    verdict = f"seen for eta={_join(improves)}" if improves else "NOT seen"
    if flat and improves:
        verdict += f", NOT for eta={_join(flat)}"
    return lines, {"quality improves with S": verdict}


def _roundtrip_lines(result: DigitsResult) -> tuple[list[str], dict[str, str]]:
    sizes, table, scale = result.sizes, result.roundtrip, result.roundtrip_scale
    steps, iterations = sizes.roundtrip_steps, sizes.roundtrip_iterations
    lines = [
        f"(d2) Encode -> decode: {sizes.roundtrip_images} held-out digits encoded with ddim_sched.invert (k "
        "fixed-point iterations per step)",
        "     and decoded with the eta=0 loop, S steps each way. MSE per pixel on the [0, 1] scale (random pairs of",
        f"     held-out digits: {scale:.3f}); the paper's Table 2 (CIFAR10, k=0) in the last row.",
        "     " + "".ljust(14) + "".join(f"S={S}".rjust(11) for S in steps),
    ]
    for k in iterations:
        cells = "".join(f"{'diverged' if table[(k, S)] > scale else format(table[(k, S)], '.2e'):>10} " for S in steps)
        lines.append("     " + f"k={k}".ljust(14) + cells.rstrip())
    lines.append(
        "     "
        + "paper Table 2".ljust(14)
        + "".join(f"{PAPER_TABLE2_MSE[S]:>10.2e} " if S in PAPER_TABLE2_MSE else " " * 11 for S in steps).rstrip()
    )
    diverged = {k: [S for S in steps if table[(k, S)] > scale] for k in iterations}
    if any(diverged.values()):
        failed = [table[(k, S)] for k in iterations for S in diverged[k]]
        span = f"{min(failed):.1e}" if len(failed) == 1 else f"{min(failed):.1e} to {max(failed):.1e}"
        lines += [
            f"     diverged: the round trip ends further from the digit than a random other digit does (MSE {span}",
            "     per pixel): the fixed-point iteration does not contract at these step sizes on this model (expected;",
            f"     see the note at the end and {DIVERGENCE_DOCS}).",
        ]
    verdicts = []
    for k in iterations:
        valid = [S for S in steps if S not in diverged[k]]
        errors = [table[(k, S)] for S in valid]
        falling = len(errors) > 1 and all(a > b for a, b in zip(errors, errors[1:], strict=False))
        verdict = f"{'seen' if falling else 'NOT seen'} for k={k}"
        if len(valid) > 1:
            verdict += f" ({errors[0]:.1e} at S={valid[0]} -> {errors[-1]:.1e} at S={valid[-1]})"
        if diverged[k]:
            verdict += f", which diverged at S={_join(diverged[k])}"
        verdicts.append(verdict)
    if len(iterations) > 1:
        k0, k1 = iterations[0], iterations[-1]
        lower = [S for S in steps if table[(k1, S)] < table[(k0, S)]]
        lines.append(f"     k={k1} below k={k0} at {'S=' + _join(lower) if lower else 'no S'}.")
    return lines, {"round-trip error falls with S": "; ".join(verdicts)}


def _calls(cell: EditingCell) -> str:
    """Model calls per step as 'encode + decode' (BDIA decodes (S - 1)/S: its pair holds step 0)."""
    encode, decode = cell.calls_per_step
    return f"{encode:.2g} + {decode:.2g}"


def _k_cells(cells: dict[int, list[int]]) -> str:
    """'k=1 (S=50), k=2 (S=10, 50)' for the non-empty entries of {k: [S, ...]}."""
    return ", ".join(f"k={k} (S={_join(steps)})" for k, steps in cells.items() if steps)


def _editing_lines(result: DigitsResult) -> list[str]:
    """The editing table: MSE and counted model calls per step of every method, and what it shows."""
    table, scale = result.editing, result.roundtrip_scale
    reused = {k: [S for S, cell in table.rows[fixed_point_label(k)].items() if cell.reused] for k in ITERATIONS}
    parts = [f"k={k}" if len(s) == len(table.steps) else f"k={k} (S={_join(s)})" for k, s in reused.items() if s]
    source = f"; the {', '.join(parts)} cells are the round trips above (not recomputed)" if parts else ""
    lines = [
        f"     Editing methods side by side (docs/editing.md), the same {table.images} digits in float32: MSE per "
        "pixel as above and",
        f"     model calls per step, encode + decode, counted{source}.",
        "     " + "method".ljust(27) + "".join(f"S={S}".rjust(10) + "calls/step".rjust(12) for S in table.steps),
    ]
    for label, cells in table.rows.items():
        row = "".join(f"{cells[S].mse:>10.2e}{_calls(cells[S]):>12}" for S in table.steps)
        lines.append("     " + label.ljust(27) + row)
    exact = [cell.mse for label in EXACT_METHODS for cell in table.rows[label].values()]
    inexact = {label: [S for S, c in table.rows[label].items() if not c.mse < EXACT_MSE] for label in EXACT_METHODS}
    if any(inexact.values()):
        missed = "; ".join(f"{label} at S={_join(steps)}" for label, steps in inexact.items() if steps)
        exact_text = f"The exact methods do NOT all reach float rounding (MSE >= {EXACT_MSE:g}): {missed}"
    else:
        exact_text = (
            f"The exact methods (BDIA, EDICT, noise maps) return the digits to float rounding: MSE {min(exact):.1e} "
            f"to {max(exact):.1e}"
        )
    base = table.rows[fixed_point_label(0)]
    refined = {k: table.rows[fixed_point_label(k)] for k in ITERATIONS if k > 0}
    better = {k: [S for S, c in cells.items() if c.mse < base[S].mse] for k, cells in refined.items()}
    diverged = {k: [S for S, c in cells.items() if not c.mse <= scale] for k, cells in refined.items()}
    refined_text = f"Fixed-point refinement beats k=0 at {_k_cells(better) or 'no S'}"
    if any(diverged.values()):
        refined_text += f"; it diverges (worse than a random other digit) at {_k_cells(diverged)}"
    lines += [f"     {exact_text}.", f"     {refined_text}."]
    return lines


def _interpolation_lines(result: DigitsResult) -> list[str]:
    interp = result.interpolation
    paths = " | ".join(" ".join(str(c) for c in path) for path in result.path_labels)
    return [
        f"(d3) Interpolation (the paper's Fig. 6, with real digits at the ends): pairs of held-out digits encoded "
        f"(invert, S={interp.steps},",
        f"     k={interp.fixed_point_iterations}), latents joined by ddim_sched.slerp at {len(interp.alphas)} points, "
        f"decoded with eta=0. The ends decode back to the digits",
        f"     with MSE {interp.endpoint_mse:.1e} per pixel. Classifier's label along each path: {paths}",
        f"     Classifier's mean confidence on the interior points: decoded slerp {result.slerp_confidence:.2f}, "
        f"pixel crossfade {result.crossfade_confidence:.2f}.",
    ]


def _join(items: Sequence[object]) -> str:
    return ", ".join(str(i) for i in items)


def format_digits(result: DigitsResult) -> str:
    """The digits section as printed by ``ddim-sched demo``: tables, floor, resolved differences, verdict.

    Args:
        result: What :func:`~ddim_sched.demo.digits.run_digits` returned.

    Returns:
        Multi-line text (no trailing newline).
    """
    eta_lines, eta_verdicts = _eta_lines(result)
    steps_lines, steps_verdicts = _steps_lines(result)
    roundtrip_lines, roundtrip_verdicts = _roundtrip_lines(result)
    lines = _header(result) + _quality_lines(result) + _worse_lines(result) + eta_lines + steps_lines
    lines += roundtrip_lines + _editing_lines(result) + _interpolation_lines(result)
    verdicts = {**eta_verdicts, **steps_verdicts, **roundtrip_verdicts}
    summary = "; ".join(f"{claim}: {seen}" for claim, seen in verdicts.items())
    lines.append(f"     The paper's pattern here: {summary}.")
    if result.figure_note:
        lines.append(f"     {result.figure_note}")
    timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.seconds.items())
    lines.append(f"     wall time: {timings}")
    return "\n".join(lines)
