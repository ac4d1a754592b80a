"""Differential tests: ddim_sched.DDIMScheduler against diffusers.DDIMScheduler 0.42.1.

Every hypothesis-generated case is run three ways:

* ``ours``: ddim_sched on the inputs in their dtype;
* ``diffusers``: diffusers as shipped, on the same inputs (float32 tables, half arithmetic for half
  inputs);
* ``exact``: the float64 reference on the float64-upcast inputs: diffusers' tables recomputed in
  float64, and DDIM eq. 12 in float64, checked against diffusers' own step on those tables
  (tests/diffusers_oracle.py). add_noise/get_velocity use diffusers' own code on those tables.

ddim_sched must be within ORACLE_RTOL of ``exact`` and within PARITY_RTOL of ``diffusers``, the
latter widened by exactly diffusers' own distance to ``exact`` (where diffusers' float32 tables are
the larger error, e.g. sample prediction at small t, where 1 − ᾱ_t loses digits in float32).
Run with ``-s`` to print the largest errors seen per dtype and the notable cases met.

Known diffusers defects (docs/migration.md (diffusers defects)) are handled explicitly, never silently filtered:
trailing spacing that yields S + 1 timesteps ending at −1; zero terminal SNR with epsilon
prediction on a schedule that visits the last timestep (ddim_sched raises; diffusers returns inf);
NaN from diffusers' η = 1 step at ᾱ_t = 0. Only diffusers' spacings (leading, trailing, linspace)
and its default "stride" rule for the previous timestep are compared here.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddim_sched import DDIMScheduler
from ddim_sched.core.noise import randn as ddim_randn
from tests.diffusers_oracle import (
    closed_form_step,
    diffusers_scheduler,
    dummy_model,
    exact_scheduler,
    exact_step,
    randn_tensor,
)
from tests.tolerances import FORWARD_RTOL, HALF_LOOP_DIFFUSERS_FACTOR, LOOP_RTOL, ORACLE_RTOL, PARITY_RTOL, rel_l2

# Deterministic runs: derandomized example generation, no example database.
HYPOTHESIS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
HALF = (torch.float16, torch.bfloat16)
ITEM_SHAPE = (2, 4, 4)  # per batch element; small tensors keep the suite fast

# Largest relative L2 error seen per (dtype, comparison); printed at the end of the module (-s).
WORST: dict[tuple[str, str], float] = collections.defaultdict(float)
# Counts of notable cases: where diffusers was further than the parity bound from the exact
# reference, returned non-finite values, or where the true result overflows the sample dtype.
EVENTS = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_worst_errors():
    yield
    print("\nlargest relative L2 errors (test_parity):")
    for (dtype, what), err in sorted(WORST.items()):
        print(f"  {dtype:>15} {what:<28} {err:.3e}")
    for event, count in sorted(EVENTS.items()):
        print(f"  {count:5d} x {event}")


def _record(dtype: torch.dtype, what: str, err: float) -> None:
    key = (str(dtype).replace("torch.", ""), what)
    WORST[key] = max(WORST[key], err)


def check_against(
    what: str,
    dtype: torch.dtype,
    ours: torch.Tensor,
    reference: torch.Tensor,
    exact: torch.Tensor,
    parity_rtol: float,
    oracle_rtol: float,
) -> None:
    """ours ≈ exact within oracle_rtol; ours ≈ reference within parity_rtol + dist(reference, exact)."""
    assert ours.dtype == reference.dtype, (what, ours.dtype, reference.dtype)
    assert torch.isfinite(exact).all(), f"{what}: the float64 reference is not finite"
    if exact.abs().max() > torch.finfo(dtype).max / 2:
        # The true result is at the edge of the dtype's range (e.g. float16 x̂0 = x/√ᾱ_T): ±inf is
        # its correct rounding. Only NaN would be wrong.
        assert not torch.isnan(ours).any(), f"{what}: ddim_sched returned NaN"
        EVENTS[f"{what}: true result overflows {dtype}"] += 1
        return
    assert torch.isfinite(ours).all(), f"{what}: ddim_sched returned non-finite values"
    to_exact = rel_l2(ours, exact)
    _record(dtype, f"{what} vs exact", to_exact)
    assert to_exact <= oracle_rtol, f"{what}: relative L2 error {to_exact:.3e} vs exact > {oracle_rtol:.1e}"
    if not torch.isfinite(reference).all():
        EVENTS[f"{what}: diffusers non-finite"] += 1
        return
    reference_error = rel_l2(reference, exact)
    if reference_error > parity_rtol:
        EVENTS[f"{what}: diffusers further than the parity bound from exact"] += 1
    to_reference = rel_l2(ours, reference)
    _record(dtype, f"{what} vs diffusers", to_reference)
    assert to_reference <= parity_rtol + reference_error, (
        f"{what}: relative L2 error {to_reference:.3e} vs diffusers > {parity_rtol:.1e} + "
        f"diffusers' own error {reference_error:.3e}"
    )


# --------------------------------------------------------------------------------------- strategies


def leading_offset_bound(T: int, S: int) -> int:
    """The largest steps_offset that keeps every leading timestep below T."""
    return T - 1 - (S - 1) * (T // S)


def visits_terminal(config: dict[str, Any], S: int) -> bool:
    """Whether diffusers' schedule for this config visits the last timestep T − 1."""
    reference = diffusers_scheduler(config)
    reference.set_timesteps(S)
    return config["num_train_timesteps"] - 1 in reference.timesteps.tolist()


@st.composite
def cases(draw, min_T: int = 1, S: int | None = None, allow_terminal_epsilon: bool = True):
    """(config over all 15 diffusers fields, S) with every leading timestep below T."""
    # 57 and 113 with S = 50, and 1000 with S = 61, hit diffusers' trailing defect (S + 1 timesteps).
    special_T = st.sampled_from([T for T in (57, 113, 1000) if T >= min_T])
    T = draw(st.one_of(st.just(1000), st.integers(min_T, 1200), special_T), label="num_train_timesteps")
    if S is None:
        special_S = st.sampled_from([S for S in (50, 61) if S <= T] or [T])
        S = draw(st.one_of(st.integers(1, min(T, 60)), st.integers(1, T), special_S), label="num_inference_steps")
    schedule = draw(st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2", "trained"]), label="schedule")
    beta_start = draw(st.floats(1e-5, 1e-2), label="beta_start")
    beta_end = draw(st.floats(beta_start, 0.05), label="beta_end")
    trained_betas = None
    if schedule == "trained":
        seed = draw(st.integers(0, 2**16), label="trained_betas seed")
        high = draw(st.floats(1e-3, 0.05), label="trained_betas high")
        rng = np.random.default_rng(seed)
        trained_betas = [float(b) for b in rng.uniform(1e-5, high, T)]
        schedule = draw(st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]), label="ignored schedule")
    config = dict(
        num_train_timesteps=T,
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule=schedule,
        trained_betas=trained_betas,
        clip_sample=draw(st.booleans(), label="clip_sample"),
        set_alpha_to_one=draw(st.booleans(), label="set_alpha_to_one"),
        steps_offset=draw(st.integers(0, min(leading_offset_bound(T, S), 10)), label="steps_offset"),
        prediction_type=draw(st.sampled_from(["epsilon", "sample", "v_prediction"]), label="prediction_type"),
        thresholding=draw(st.booleans(), label="thresholding"),
        dynamic_thresholding_ratio=draw(st.floats(0.5, 1.0), label="dynamic_thresholding_ratio"),
        clip_sample_range=draw(st.floats(0.1, 4.0), label="clip_sample_range"),
        sample_max_value=draw(st.floats(0.5, 4.0), label="sample_max_value"),
        timestep_spacing=draw(st.sampled_from(["leading", "trailing", "linspace"]), label="timestep_spacing"),
        # Zero SNR needs T >= 2 (ddim_sched raises, diffusers returns NaN tables: see tests/ddim/test_errors.py).
        rescale_betas_zero_snr=T >= 2 and draw(st.booleans(), label="rescale_betas_zero_snr"),
    )
    if (
        not allow_terminal_epsilon
        and config["rescale_betas_zero_snr"]
        and config["prediction_type"] == "epsilon"
        and visits_terminal(config, S)
    ):
        # Lin et al.'s prescription for zero SNR; the epsilon case is tested in test_step_matches_diffusers.
        config["prediction_type"] = "v_prediction"
    return config, S


def diffusers_timesteps(reference, S: int) -> list[int]:
    """diffusers' timesteps after set_timesteps(S), less the extra −1 its trailing spacing sometimes
    appends (docs/migration.md (diffusers defects); see test_trailing_extra_timestep_defect)."""
    timesteps = reference.timesteps.tolist()
    if len(timesteps) != S:
        assert reference.config.timestep_spacing == "trailing", reference.config
        assert len(timesteps) == S + 1 and timesteps[-1] == -1, timesteps
        timesteps = timesteps[:S]
    return timesteps


def make_inputs(seed: int, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, model_output), rounded to dtype; both libraries and the reference see the same values."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch,) + ITEM_SHAPE, generator=generator, dtype=torch.float64)
    m = torch.randn((batch,) + ITEM_SHAPE, generator=generator, dtype=torch.float64)
    scale = 1.0 + 2.0 * torch.rand((), generator=generator, dtype=torch.float64)
    return (x * scale).to(dtype), (m * scale).to(dtype)


def generators(seed: int, batch: int, mode: str) -> torch.Generator | list[torch.Generator]:
    """A fresh seeded generator, or a list of one per batch element."""
    if mode == "generator":
        return torch.Generator().manual_seed(seed)
    return [torch.Generator().manual_seed(seed + 7919 * i) for i in range(batch)]


def generator_states(gen: torch.Generator | list[torch.Generator]) -> list[torch.Tensor]:
    return [g.get_state() for g in (gen if isinstance(gen, list) else [gen])]


# --------------------------------------------------------------------------------------- step


@settings(max_examples=400, **HYPOTHESIS)
@given(case=cases(), data=st.data())
def test_step_matches_diffusers(case, data):
    """Each step's prev_sample and pred_original_sample match diffusers' (and the exact reference)."""
    config, S = case
    T = config["num_train_timesteps"]
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    batch = data.draw(st.integers(1, 3), label="batch")
    eta = data.draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0)), label="eta")
    noise_mode = data.draw(st.sampled_from(["generator", "generators", "variance_noise"]), label="noise")
    use_clipped = data.draw(st.booleans(), label="use_clipped_model_output")
    tensor_timestep = data.draw(st.booleans(), label="timestep as tensor")
    seed = data.draw(st.integers(0, 2**20), label="seed")

    reference = diffusers_scheduler(config)
    reference.set_timesteps(S)
    timesteps = diffusers_timesteps(reference, S)

    ours = DDIMScheduler(**config)
    if config["rescale_betas_zero_snr"] and config["prediction_type"] == "epsilon" and T - 1 in timesteps:
        # Deliberate: x0 = (x − √(1−ᾱ)ε)/√ᾱ is undefined at ᾱ_T = 0, so set_timesteps refuses; diffusers
        # silently returns inf/nan there (docs/migration.md, diffusers defects).
        with pytest.raises(ValueError, match="v_prediction"):
            ours.set_timesteps(S)
        return
    ours.set_timesteps(S)
    assert ours.timesteps.tolist() == timesteps

    exact = exact_scheduler(config)
    exact.set_timesteps(S)
    in_float32 = diffusers_scheduler(config) if dtype in HALF else None
    if in_float32 is not None:
        in_float32.set_timesteps(S)
    indices = data.draw(st.lists(st.integers(0, S - 1), min_size=1, max_size=3, unique=True), label="step indices")
    for k, index in enumerate(indices):
        t_int = timesteps[index]
        t = ours.timesteps[index] if tensor_timestep else t_int
        x, m = make_inputs(seed + k, batch, dtype)
        kwargs = dict(eta=eta, use_clipped_model_output=use_clipped)
        noise = None
        if eta > 0:
            if noise_mode == "variance_noise":
                noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 101 + k)).to(dtype)
                ours_out = ours.step(m, t, x, variance_noise=noise, **kwargs)
                ref_out = reference.step(m, t_int, x, variance_noise=noise, **kwargs)
            else:
                ours_gen, ref_gen = generators(seed + k, batch, noise_mode), generators(seed + k, batch, noise_mode)
                noise = randn_tensor(x.shape, generator=generators(seed + k, batch, noise_mode), dtype=dtype)
                ours_out = ours.step(m, t, x, generator=ours_gen, **kwargs)
                ref_out = reference.step(m, t_int, x, generator=ref_gen, **kwargs)
                # Both consumed exactly the same random numbers.
                for a, b in zip(generator_states(ours_gen), generator_states(ref_gen), strict=True):
                    assert torch.equal(a, b)
        else:
            ours_out = ours.step(m, t, x, **kwargs)
            ref_out = reference.step(m, t_int, x, **kwargs)
        exact_noise = None if noise is None else noise.double()
        exact_out, diffusers_failed = exact_step(
            exact, m.double(), t_int, x.double(), variance_noise=exact_noise, **kwargs
        )
        if diffusers_failed:  # NaN from diffusers even in float64 (σ² = 1 − ᾱ_prev): see closed_form_step
            EVENTS["diffusers' step non-finite even with float64 tables"] += 1
        for i, what in enumerate(("prev_sample", "pred_original_sample")):
            check_against(what, dtype, ours_out[i], ref_out[i], exact_out[i], PARITY_RTOL[dtype], ORACLE_RTOL[dtype])
        if in_float32 is not None:
            # Half inputs: diffusers computes in half, ddim_sched in float32; against diffusers run in
            # float32 on the same (upcast) values, only the final rounding to half remains.
            f32_noise = None if noise is None else noise.float()
            f32_out = in_float32.step(m.float(), t_int, x.float(), variance_noise=f32_noise, **kwargs)
            for i, what in enumerate(("prev_sample", "pred_original_sample")):
                check_against(
                    f"{what} (diffusers in float32)",
                    dtype,
                    ours_out[i].float(),
                    f32_out[i],
                    exact_out[i],
                    ORACLE_RTOL[dtype],
                    ORACLE_RTOL[dtype],
                )


# --------------------------------------------------------------------------------------- whole loops


def run_loop(scheduler, x, timesteps, eta, use_clipped, generator=None, noises=None):
    """A full sampling loop with the deterministic dummy model; returns the final sample and x̂0."""
    x0 = None
    for i, t in enumerate(timesteps):
        kwargs = dict(eta=eta, use_clipped_model_output=use_clipped)
        if noises is not None:  # the float64 reference: diffusers' code, closed form where it gives NaN
            (x, x0), diffusers_failed = exact_step(
                scheduler, dummy_model(x, t), t, x, variance_noise=noises[i], **kwargs
            )
            if diffusers_failed:
                EVENTS["diffusers' step non-finite even with float64 tables"] += 1
        else:
            out = scheduler.step(dummy_model(x, t), t, x, generator=generator, **kwargs)
            x, x0 = out.prev_sample, out.pred_original_sample
    return x, x0


@settings(max_examples=150, **HYPOTHESIS)
@given(case=cases(min_T=50, S=50, allow_terminal_epsilon=False), data=st.data())
def test_50_step_loop_matches_diffusers(case, data):
    """Whole 50-step loops with a deterministic model (and seeded noise when η > 0) match diffusers."""
    config, S = case
    dtype = data.draw(st.sampled_from((torch.float32, torch.float32, torch.float64) + HALF), label="dtype")
    batch = data.draw(st.integers(1, 3), label="batch")
    eta = data.draw(st.one_of(st.just(0.0), st.floats(0.0, 1.0)), label="eta")
    noise_mode = data.draw(st.sampled_from(["generator", "generators"]), label="noise")
    use_clipped = data.draw(st.booleans(), label="use_clipped_model_output")
    seed = data.draw(st.integers(0, 2**20), label="seed")

    ours, reference, exact = DDIMScheduler(**config), diffusers_scheduler(config), exact_scheduler(config)
    for scheduler in (ours, reference, exact):
        scheduler.set_timesteps(S)
    timesteps = ours.timesteps.tolist()
    assert timesteps == diffusers_timesteps(reference, S) == diffusers_timesteps(exact, S)
    x, _ = make_inputs(seed, batch, dtype)

    draw_from = generators(seed, batch, noise_mode)
    noises = [randn_tensor(x.shape, generator=draw_from, dtype=dtype).double() for _ in timesteps]
    ours_gen, ref_gen = generators(seed, batch, noise_mode), generators(seed, batch, noise_mode)
    ours_x, ours_x0 = run_loop(ours, x, ours.timesteps, eta, use_clipped, generator=ours_gen)
    ref_x, ref_x0 = run_loop(reference, x, timesteps, eta, use_clipped, generator=ref_gen)
    exact_x, exact_x0 = run_loop(exact, x.double(), timesteps, eta, use_clipped, noises=noises)
    assert ours_x.dtype == ours_x0.dtype == dtype
    for what, ours_out, ref_out, exact_out in (
        ("50-step loop sample", ours_x, ref_x, exact_x),
        ("50-step loop x0", ours_x0, ref_x0, exact_x0),
    ):
        rtol = LOOP_RTOL[dtype]
        if dtype in HALF and torch.isfinite(ref_out).all():
            rtol += HALF_LOOP_DIFFUSERS_FACTOR * rel_l2(ref_out, exact_out)
        check_against(what, dtype, ours_out, ref_out, exact_out, max(PARITY_RTOL[dtype], rtol), rtol)


# --------------------------------------------------------------------------------------- timesteps


@settings(max_examples=200, **HYPOTHESIS)
@given(
    T=st.one_of(st.just(1000), st.integers(1, 2000)),
    data=st.data(),
    spacing=st.sampled_from(["leading", "trailing", "linspace"]),
)
def test_timesteps_identical(T, data, spacing):
    """set_timesteps gives diffusers' timesteps exactly, or a documented, deliberate difference."""
    special_S = st.sampled_from([S for S in (50, 61) if S <= T] or [T])  # trailing defect at T=1000, S=61
    S = data.draw(st.one_of(st.integers(1, min(T, 100)), st.integers(1, T), special_S), label="num_inference_steps")
    offset = data.draw(st.one_of(st.integers(0, 2), st.integers(0, T)), label="steps_offset")
    config = dict(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
    reference = diffusers_scheduler(config)
    reference.set_timesteps(S)
    ours = DDIMScheduler(**config)
    if spacing == "leading" and offset > leading_offset_bound(T, S):
        # ddim_sched refuses up front a leading timestep pushed to >= T (diffusers returns one, which
        # fails later with an index error).
        with pytest.raises(ValueError, match="steps_offset"):
            ours.set_timesteps(S)
        return
    ours.set_timesteps(S)
    got = ours.timesteps.tolist()
    assert ours.timesteps.dtype == reference.timesteps.dtype == torch.int64
    assert ours.num_inference_steps == S
    assert got == diffusers_timesteps(reference, S)
    # The default ("stride") rule lands where diffusers' step does: t − T // S.
    for t in got:
        assert ours.previous_timestep(t) == max(t - T // S, -1)


def test_more_timesteps_than_train_steps_raise():
    ours = DDIMScheduler(num_train_timesteps=100)
    with pytest.raises(ValueError, match="num_inference_steps"):
        ours.set_timesteps(101)


def test_trailing_extra_timestep_defect():
    """docs/migration.md (diffusers defects): diffusers' trailing arange yields S + 1 timesteps ending at −1 for some S.

    For T = 1000 and S = 61 diffusers returns 62 timesteps, the last being −1, which its step then
    reads as alphas_cumprod[−1] (the noisiest ᾱ). ddim_sched returns exactly S: diffusers' first S.
    """
    ours, reference = DDIMScheduler(timestep_spacing="trailing"), diffusers_scheduler(dict(timestep_spacing="trailing"))
    ours.set_timesteps(61)
    reference.set_timesteps(61)
    assert len(reference.timesteps) == 62 and reference.timesteps[-1].item() == -1
    assert len(ours.timesteps) == 61
    assert ours.timesteps.tolist() == reference.timesteps[:61].tolist()
    assert ours.timesteps.min().item() >= 0

    defective = []
    for S in range(1, 1001):
        ours.set_timesteps(S)
        reference.set_timesteps(S)
        assert len(ours.timesteps) == S
        if len(reference.timesteps) != S:
            defective.append(S)
            assert reference.timesteps[-1].item() == -1
        assert ours.timesteps.tolist() == reference.timesteps[:S].tolist()
    assert 61 in defective
    # The other cases the generated configurations include (see cases()).
    for T, S in [(57, 50), (113, 50)]:
        config = dict(num_train_timesteps=T, timestep_spacing="trailing")
        ours, reference = DDIMScheduler(**config), diffusers_scheduler(config)
        ours.set_timesteps(S)
        reference.set_timesteps(S)
        assert len(reference.timesteps) == S + 1 and reference.timesteps[-1].item() == -1
        assert ours.timesteps.tolist() == diffusers_timesteps(reference, S)


def test_linspace_step_lands_where_diffusers_lands_by_default():
    """docs/migration.md (diffusers defects): with linspace S=10 diffusers steps 999 → 899 although the schedule
    visits 888.

    The default prev_timestep_rule="stride" reproduces that for drop-in parity; "schedule" lands on 888.
    """
    config = dict(timestep_spacing="linspace", clip_sample=False)
    x, m = make_inputs(0, 2, torch.float32)
    ours, reference = DDIMScheduler(**config), diffusers_scheduler(config)
    ours.set_timesteps(10)
    reference.set_timesteps(10)
    assert ours.timesteps.tolist()[:2] == [999, 888]
    assert ours.previous_timestep(999) == 899
    assert rel_l2(ours.step(m, 999, x).prev_sample, reference.step(m, 999, x).prev_sample) <= PARITY_RTOL[torch.float32]
    fixed = DDIMScheduler(**config, prev_timestep_rule="schedule")
    fixed.set_timesteps(10)
    assert fixed.previous_timestep(999) == 888


# --------------------------------------------------------------------------------------- forward process


@settings(max_examples=150, **HYPOTHESIS)
@given(case=cases(), data=st.data())
def test_add_noise_and_get_velocity_match_diffusers(case, data):
    """add_noise and get_velocity with per-sample timesteps match diffusers within FORWARD_RTOL."""
    config, _ = case
    T = config["num_train_timesteps"]
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    batch = data.draw(st.integers(1, 4), label="batch")
    steps = data.draw(st.lists(st.integers(0, T - 1), min_size=batch, max_size=batch), label="timesteps")
    index_dtype = data.draw(st.sampled_from((torch.int64, torch.int32)), label="timestep dtype")
    seed = data.draw(st.integers(0, 2**20), label="seed")
    timesteps = torch.tensor(steps, dtype=index_dtype)
    x0, noise = make_inputs(seed, batch, dtype)

    ours, reference, exact = DDIMScheduler(**config), diffusers_scheduler(config), exact_scheduler(config)
    for name in ("add_noise", "get_velocity"):
        got = getattr(ours, name)(x0, noise, timesteps)
        expected = getattr(reference, name)(x0, noise, timesteps)
        truth = getattr(exact, name)(x0.double(), noise.double(), timesteps)
        assert got.dtype == dtype
        check_against(name, dtype, got, expected, truth, FORWARD_RTOL[dtype], FORWARD_RTOL[dtype])
        if dtype in HALF:
            in_float32 = getattr(diffusers_scheduler(config), name)(x0.float(), noise.float(), timesteps)
            rtol = FORWARD_RTOL[dtype]
            check_against(f"{name} (diffusers in float32)", dtype, got.float(), in_float32, truth, rtol, rtol)


@pytest.mark.parametrize(
    "shapes", [((3, 4, 8, 8), (1, 4, 8, 8)), ((1, 4, 8, 8), (3, 4, 8, 8)), ((3, 4, 8, 8), (4, 8, 8))]
)
def test_forward_process_broadcasts_samples_and_noise_as_diffusers_does(shapes):
    """One noise for a batch (or one sample for many noises): add_noise and get_velocity broadcast as
    diffusers' do, to the same shape and values; shapes that do not broadcast are a ValueError naming both."""
    config = dict(beta_schedule="scaled_linear")
    ours, reference = DDIMScheduler(**config), diffusers_scheduler(config)
    g = torch.Generator().manual_seed(0)
    x0, noise = (torch.randn(shape, generator=g) for shape in shapes)
    timesteps = torch.tensor([10, 500, 990])
    for name in ("add_noise", "get_velocity"):
        got = getattr(ours, name)(x0, noise, timesteps)
        expected = getattr(reference, name)(x0, noise, timesteps)
        assert got.shape == expected.shape == (3, 4, 8, 8)
        assert rel_l2(got, expected) <= FORWARD_RTOL[torch.float32], name
    with pytest.raises(ValueError, match=r"original_samples and noise .*\(3, 4, 8, 8\) and \(2, 4, 8, 8\)"):
        ours.add_noise(torch.zeros(3, 4, 8, 8), torch.zeros(2, 4, 8, 8), timesteps)


# --------------------------------------------------------------------------------------- noise


@settings(max_examples=100, **HYPOTHESIS)
@given(case=cases(), data=st.data())
def test_noise_equals_diffusers_bit_for_bit(case, data):
    """Noise drawn with a generator (or a list, one per batch element) is diffusers' noise, bit for bit."""
    config, S = case
    T = config["num_train_timesteps"]
    config = dict(config, prediction_type="v_prediction")  # defined at every timestep, zero SNR included
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    batch = data.draw(st.integers(1, 3), label="batch")
    mode = data.draw(st.sampled_from(["generator", "generators"]), label="noise")
    eta = data.draw(st.floats(0.25, 1.0), label="eta")
    seed = data.draw(st.integers(0, 2**20), label="seed")
    shape = (batch,) + ITEM_SHAPE

    # The sampler itself: ddim_sched.core.noise.randn is diffusers' randn_tensor.
    ours_gen, ref_gen = generators(seed, batch, mode), generators(seed, batch, mode)
    drawn = ddim_randn(shape, ours_gen, torch.device("cpu"), dtype)
    assert torch.equal(drawn, randn_tensor(shape, generator=ref_gen, dtype=dtype))
    assert all(torch.equal(a, b) for a, b in zip(generator_states(ours_gen), generator_states(ref_gen), strict=True))

    ours, reference = DDIMScheduler(**config), diffusers_scheduler(config)
    ours.set_timesteps(S)
    reference.set_timesteps(S)
    index = data.draw(st.integers(0, S - 1), label="step index")
    t = ours.timesteps[index].item()
    assert 0 <= t < T
    x, m = make_inputs(seed, batch, dtype)

    # step(generator=g) is step(variance_noise=<what diffusers' randn_tensor draws from g>), bit for bit.
    with_generator = ours.step(m, t, x, eta=eta, generator=generators(seed, batch, mode))
    expected_noise = randn_tensor(shape, generator=generators(seed, batch, mode), dtype=dtype)
    with_noise = ours.step(m, t, x, eta=eta, variance_noise=expected_noise)
    assert torch.equal(with_generator.prev_sample, with_noise.prev_sample)

    # The random part σ·z of each library: same generator, minus the same step with zero noise.
    zeros = torch.zeros_like(x)
    ours_random = (
        ours.step(m, t, x, eta=eta, generator=generators(seed, batch, mode)).prev_sample.double()
        - ours.step(m, t, x, eta=eta, variance_noise=zeros).prev_sample.double()
    )
    ref_random = (
        reference.step(m, t, x, eta=eta, generator=generators(seed, batch, mode)).prev_sample.double()
        - reference.step(m, t, x, eta=eta, variance_noise=zeros).prev_sample.double()
    )
    sigma = float(exact_scheduler(config)._get_variance(t, max(t - T // S, -1)).sqrt()) * eta
    exact_random = sigma * expected_noise.double()
    if sigma == 0.0:
        assert torch.equal(ours_random, torch.zeros_like(ours_random))
        return
    # Both random parts are σ·z up to the rounding of the two prev_samples (relative to |prev|).
    scale = float(with_noise.prev_sample.double().norm() / exact_random.norm())
    rounding = {torch.float64: 1e-14, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    bound = rounding * (1 + scale)
    parity = max(PARITY_RTOL[dtype], bound)
    check_against("random part σ·z", dtype, ours_random, ref_random, exact_random, parity, bound)


def test_correct_where_diffusers_float32_tables_lose_digits(observe):
    """Sample prediction at small t: 1 − ᾱ_t ≈ 2e-5 keeps ~3 digits in float32, so diffusers' step is off
    by ~1e-3 there; ddim_sched's float64 tables keep it within float32 rounding of the exact result."""
    config = dict(prediction_type="sample", clip_sample=False, beta_start=1e-5, set_alpha_to_one=False)
    ours, reference, exact = DDIMScheduler(**config), diffusers_scheduler(config), exact_scheduler(config)
    for scheduler in (ours, reference, exact):
        scheduler.set_timesteps(1000)
    x, m = make_inputs(0, 2, torch.float32)
    got, shipped, truth = ours.step(m, 1, x), reference.step(m, 1, x), exact.step(m.double(), 1, x.double())
    observe(f"diffusers' float32-table step is {rel_l2(shipped.prev_sample, truth.prev_sample):.1e} from float64")
    assert rel_l2(got.prev_sample, truth.prev_sample) <= ORACLE_RTOL[torch.float32] / 10
    check_against(
        "prev_sample",
        torch.float32,
        got.prev_sample,
        shipped.prev_sample,
        truth.prev_sample,
        PARITY_RTOL[torch.float32],
        ORACLE_RTOL[torch.float32],
    )


def test_exact_at_the_first_zero_snr_ddpm_step(observe):
    """Zero terminal SNR, trailing, η = 1 (DDPM): at ᾱ_t = 0, σ² = 1 − ᾱ_prev exactly, and diffusers takes
    √(1 − ᾱ_prev − σ²) of a float32 rounding error, which on some CPUs is negative and gives NaN (docs/migration.md,
    diffusers defects). ddim_sched's direction coefficient has no such cancellation: its step equals the float64
    closed form. What diffusers returned here is recorded, not asserted."""
    config = dict(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        prediction_type="v_prediction",
        clip_sample=False,
    )
    ours, reference, exact = DDIMScheduler(**config), diffusers_scheduler(config), exact_scheduler(config)
    for scheduler in (ours, reference, exact):
        scheduler.set_timesteps(10)
    x, m = make_inputs(0, 2, torch.float32)
    noise = randn_tensor(x.shape, generator=torch.Generator().manual_seed(0))
    shipped = reference.step(m, 999, x, eta=1.0, variance_noise=noise).prev_sample
    got = ours.step(m, 999, x, eta=1.0, variance_noise=noise)
    truth = closed_form_step(exact, m.double(), 999, x.double(), eta=1.0, variance_noise=noise.double())
    assert torch.isfinite(got.prev_sample).all() and torch.isfinite(got.pred_original_sample).all()
    assert rel_l2(got.prev_sample, truth[0]) <= ORACLE_RTOL[torch.float32]
    assert rel_l2(got.pred_original_sample, truth[1]) <= ORACLE_RTOL[torch.float32]
    if torch.isnan(shipped).any():
        observe("diffusers' first zero-SNR eta=1 step returned NaN (1 - alpha_bar_prev - sigma^2 rounded below 0)")
    else:
        observe(f"diffusers' first zero-SNR eta=1 step was finite, {rel_l2(shipped, truth[0]):.1e} from float64")
