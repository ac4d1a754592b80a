"""The pure step kernel: coefficients against the paper's closed forms, both coefficient paths
(host scalars and device tensors) against a float64 transcription of eq. 12, the dtype rule, and
what a step allocates."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddim_sched import DDIMScheduler, kernel
from ddim_sched.core import _fused as _engine
from ddim_sched.core.functional import COLUMN, ddim_coefficients, ddim_step
from ddim_sched.core.thresholding import X0Clip
from ddim_sched.core.update import StepCoefficients
from tests.oracle import closed_form_step as reference_step
from tests.tolerances import EXACT_RTOL, PARITY_RTOL, rel_l2

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
CLIPS = ("none", "clip", "threshold")
HYPOTHESIS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- coefficients


def test_eta_one_gives_the_ddpm_posterior_variance():
    # η = 1: σ² = β̃_t = (1 − ᾱ_prev)/(1 − ᾱ_t) · β_t for consecutive timesteps (DDPM eq. 7).
    scheduler = DDIMScheduler()
    alpha_bar = scheduler.alpha_bar
    betas = scheduler.betas.double()
    t = torch.arange(1, 1000)
    c = ddim_coefficients(alpha_bar[t], alpha_bar[t - 1], 1.0, "epsilon")
    posterior = (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * (1 - alpha_bar[t] / alpha_bar[t - 1])
    assert torch.allclose(c[:, COLUMN["sigma"]] ** 2, posterior, rtol=1e-12, atol=0)
    # ... which is (1 − ᾱ_prev)/(1 − ᾱ_t)·β_t up to the float32 rounding of the public betas.
    assert torch.allclose(posterior, (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * betas[t], rtol=1e-5)


def test_get_variance_reference_numbers():
    # docs/reference.md (diffusers' own DDIM test numbers): diffusers' _get_variance(t, prev) for the default linear
    # schedule.
    alpha_bar = DDIMScheduler().alpha_bar
    for (t, prev), expected in {
        (420, 400): 0.14771,
        (980, 960): 0.32460,
        (487, 486): 0.00979,
        (999, 998): 0.02,
    }.items():
        sigma = ddim_coefficients(alpha_bar[t], alpha_bar[prev], 1.0, "epsilon")[COLUMN["sigma"]]
        assert abs(float(sigma**2) - expected) < 1e-5


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_coefficients_reproduce_eq_12(prediction_type):
    # Each column combination equals the term-by-term formula, for η in {0, 0.5, 1} and every pair.
    alpha_bar = DDIMScheduler().alpha_bar
    g = torch.Generator().manual_seed(0)
    x, m, z = torch.randn(3, 5, 6, dtype=torch.float64, generator=g).unbind(0)
    for t, prev, eta in [(999, 979, 0.0), (500, 300, 0.5), (20, 0, 1.0), (7, 6, 1.0)]:
        c = ddim_coefficients(alpha_bar[t], alpha_bar[prev], eta, prediction_type)
        prev_ref, x0_ref = reference_step(m, x, alpha_bar[t], alpha_bar[prev], eta, prediction_type, "none", False, z)
        col = {name: float(c[j]) for name, j in COLUMN.items()}
        x0 = col["x0_x"] * x + col["x0_m"] * m
        assert rel_l2(x0, x0_ref) < 1e-12
        assert rel_l2(col["prev_x"] * x + col["prev_m"] * m + col["sigma"] * z, prev_ref) < 1e-12
        # The clipped-form columns give the same step when nothing is clipped.
        assert rel_l2(col["dir_x0"] * x0 + col["eps_x"] * x + col["eps_m"] * m + col["sigma"] * z, prev_ref) < 1e-12
        assert rel_l2(col["clip_x0"] * x0 + col["clip_x"] * x + col["sigma"] * z, prev_ref) < 1e-12


def test_coefficients_broadcast_per_sample_eta():
    alpha_bar = DDIMScheduler().alpha_bar
    eta = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    c = ddim_coefficients(alpha_bar[600], alpha_bar[400], eta, "v_prediction")
    assert c.shape == (3, len(kernel.COEFFICIENTS))
    for i in range(3):
        assert torch.equal(c[i], ddim_coefficients(alpha_bar[600], alpha_bar[400], float(eta[i]), "v_prediction"))


def test_unknown_prediction_type_and_clip_mode_are_rejected():
    with pytest.raises(ValueError, match="prediction_type"):
        ddim_coefficients(torch.tensor(0.5), torch.tensor(0.6), 0.0, "noise")
    x = torch.zeros(1, 2)
    c = ddim_coefficients(torch.tensor(0.5), torch.tensor(0.6), 0.0, "epsilon")
    with pytest.raises(ValueError, match="clip"):
        ddim_step(x, x, c.float(), "epsilon", clip="clamp")


# ----------------------------------------------------------------------------- the kernel's paths


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, m, z = (1.5 * torch.randn((3,) + shape, generator=g, dtype=torch.float64)).to(dtype).unbind(0)
    return x, m, z


def _all_paths(m, x, a_t, a_prev, eta, prediction_type, clip, use_clipped, noise):
    """ddim_step through host scalars, a [K] tensor and [B] rows of one coefficient row, and the engine through
    a schedule's cached device row (the path half precision takes on an accelerator)."""
    c64 = ddim_coefficients(
        torch.tensor(a_t, dtype=torch.float64), torch.tensor(a_prev, dtype=torch.float64), eta, prediction_type
    )
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    kw = dict(
        clip=clip,
        use_clipped_model_output=use_clipped,
        noise=noise,
        dynamic_thresholding_ratio=0.9,
        sample_max_value=3.0,
    )
    levels = (float("nan"),) * (len(StepCoefficients._fields) - len(c64))  # not read by the engine
    device_row = _engine.device_row(StepCoefficients(*c64.tolist(), *levels), compute, x.device)
    bounds = X0Clip(clip, 1.0, 0.9, 3.0)
    return {
        "host": ddim_step(m, x, c64.tolist(), prediction_type, **kw),
        "row": ddim_step(m, x, c64.to(compute), prediction_type, **kw),
        "rows": ddim_step(m, x, c64.to(compute).expand(x.shape[0], -1), prediction_type, **kw),
        "device row": _engine.fused_step(m, x, device_row, prediction_type, bounds, use_clipped, noise),
    }


CASES = list(itertools.product(PREDICTION_TYPES, CLIPS, (False, True), (0.0, 0.8)))
SHAPE = (2, 3, 10, 10)


@pytest.fixture(params=["small", "fused"])
def host_path(request, monkeypatch):
    """Which host-scalar path SHAPE takes: two ops per output ("small") or torch.addr ("fused"),
    and a count of the torch.addr calls."""
    if request.param == "fused":
        monkeypatch.setattr(_engine, "FUSED_MIN_NUMEL", 0)
    calls = {"addr": 0}
    addr = torch.addr

    def count_addr(*args, **kwargs):
        calls["addr"] += 1
        return addr(*args, **kwargs)

    monkeypatch.setattr(torch, "addr", count_addr)
    return request.param, calls


@pytest.mark.parametrize("prediction_type,clip,use_clipped,eta", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_path_matches_eq_12(prediction_type, clip, use_clipped, eta, dtype, host_path):
    path_name, calls = host_path
    x, m, z = _inputs(SHAPE, dtype)
    a_t, a_prev = 0.3, 0.7
    noise = z if eta > 0 else None
    prev_ref, x0_ref = reference_step(m, x, a_t, a_prev, eta, prediction_type, clip, use_clipped, noise)
    for path, (prev, x0) in _all_paths(m, x, a_t, a_prev, eta, prediction_type, clip, use_clipped, noise).items():
        assert prev.dtype == x0.dtype == dtype, path
        assert rel_l2(x0, x0_ref) <= EXACT_RTOL[dtype], (path, rel_l2(x0, x0_ref))
        assert rel_l2(prev, prev_ref) <= EXACT_RTOL[dtype], (path, rel_l2(prev, prev_ref))
    assert bool(calls["addr"]) == (path_name == "fused")


@pytest.mark.parametrize("clip,eta", [("none", 0.0), ("clip", 1.0)])
def test_host_path_at_a_real_size(clip, eta):
    # The same where the default FUSED_MIN_NUMEL picks torch.addr.
    shape = (2, 4, 72, 72)
    assert shape[0] * shape[1] * shape[2] * shape[3] >= _engine.FUSED_MIN_NUMEL
    x, m, z = _inputs(shape, torch.float32)
    noise = z if eta > 0 else None
    prev_ref, x0_ref = reference_step(m, x, 0.2, 0.5, eta, "epsilon", clip, False, noise)
    prev, x0 = _all_paths(m, x, 0.2, 0.5, eta, "epsilon", clip, False, noise)["host"]
    assert rel_l2(x0, x0_ref) <= EXACT_RTOL[torch.float32]
    assert rel_l2(prev, prev_ref) <= EXACT_RTOL[torch.float32]


@pytest.mark.parametrize(
    "prediction_type,clip,use_clipped,eta,destination",
    [case + (d,) for case in CASES for d in ("new", "sample", "model_output", "noise") if case[3] > 0 or d != "noise"],
)
def test_out_writes_x_prev_into_any_input(prediction_type, clip, use_clipped, eta, destination, host_path):
    # out= may be one of the step's own inputs: each term that reads it runs before it is overwritten.
    x, m, z = _inputs(SHAPE, torch.float32)
    noise = z if eta > 0 else None
    prev_ref, x0_ref = reference_step(m, x, 0.3, 0.7, eta, prediction_type, clip, use_clipped, noise)
    c64 = ddim_coefficients(
        torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64), eta, prediction_type
    )
    kw = dict(clip=clip, use_clipped_model_output=use_clipped, dynamic_thresholding_ratio=0.9, sample_max_value=3.0)
    for coefficients in (c64.tolist(), c64.float().expand(SHAPE[0], -1)):
        inputs = {"sample": x.clone(), "model_output": m.clone(), "noise": None if noise is None else noise.clone()}
        out = torch.empty_like(x) if destination == "new" else inputs[destination]
        prev, x0 = ddim_step(
            inputs["model_output"],
            inputs["sample"],
            coefficients,
            prediction_type,
            noise=inputs["noise"],
            out=out,
            **kw,
        )
        assert prev is out
        assert rel_l2(prev, prev_ref) <= EXACT_RTOL[torch.float32]
        assert rel_l2(x0, x0_ref) <= EXACT_RTOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_out_in_place_for_other_dtypes(dtype):
    x, m, _ = _inputs(SHAPE, dtype)
    prev_ref, _ = reference_step(m, x, 0.3, 0.7, 0.0, "v_prediction", "clip", False, None)
    c64 = ddim_coefficients(
        torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64), 0.0, "v_prediction"
    )
    sample = x.clone()
    prev, _ = ddim_step(m, sample, c64.tolist(), "v_prediction", clip="clip", out=sample)
    assert prev is sample and prev.dtype == dtype
    assert rel_l2(prev, prev_ref) <= EXACT_RTOL[dtype]


def test_out_of_another_shape_or_dtype_is_rejected():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="out"):
        scheduler.step(x, 500, x, out=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="out"):
        scheduler.step(x, 500, x, out=x.double())


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "mixed_dtype"])
def test_inputs_the_fused_path_cannot_take_fall_back_correctly(layout):
    x, m, z = _inputs((2, 4, 40, 40), torch.float32)
    if layout == "channels_last":
        x, m = x.to(memory_format=torch.channels_last), m.to(memory_format=torch.channels_last)
    elif layout == "transposed":
        x, m = x.transpose(2, 3), m.transpose(2, 3)
    else:
        m = m.double()
    prev_ref, x0_ref = reference_step(m, x, 0.4, 0.8, 0.5, "v_prediction", "clip", False, z)
    prev, x0 = _all_paths(m, x, 0.4, 0.8, 0.5, "v_prediction", "clip", False, z)["host"]
    assert prev.dtype == torch.float32
    assert rel_l2(prev, prev_ref) <= EXACT_RTOL[torch.float32]
    assert rel_l2(x0, x0_ref) <= EXACT_RTOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("clip", CLIPS)
def test_half_inputs_are_computed_in_float32_and_returned_in_their_dtype(dtype, clip):
    x, m, z = _inputs((2, 4, 16, 16), dtype)
    prev_ref, x0_ref = reference_step(m, x, 0.9991, 0.9999, 1.0, "epsilon", clip, True, z)
    # Every path: host floats (the CPU's), a tensor row and [B] rows (what an accelerator takes).
    for path, (prev, x0) in _all_paths(m, x, 0.9991, 0.9999, 1.0, "epsilon", clip, True, z).items():
        assert prev.dtype == x0.dtype == dtype, path
        # float32 arithmetic: each output element is the float64 result rounded once (within 1 ulp of
        # the half type); half-precision arithmetic would round every intermediate.
        ulp = torch.finfo(dtype).eps
        for out, ref in ((prev, prev_ref), (x0, x0_ref)):
            err = (out.double() - ref).abs()
            assert bool((err <= ulp * ref.abs() + torch.finfo(dtype).tiny).all()), (
                path,
                float((err / ref.abs()).max()),
            )


def test_half_inputs_beat_half_precision_arithmetic():
    # The check above must be able to fail: x̂0 in bfloat16 arithmetic (as diffusers computes it for
    # bfloat16 inputs) rounds every intermediate and misses the float64 result by far more.
    x, m, _ = _inputs((2, 4, 16, 16), torch.bfloat16)
    _, x0_ref = reference_step(m, x, 0.9991, 0.9999, 0.0, "epsilon", "none", False, None)
    a_t = torch.tensor(0.9991, dtype=torch.bfloat16)
    naive = (x - (1 - a_t) ** 0.5 * m) / a_t**0.5
    _, x0 = _all_paths(m, x, 0.9991, 0.9999, 0.0, "epsilon", "none", False, None)["host"]
    assert rel_l2(x0, x0_ref) < rel_l2(naive, x0_ref) / 2


# ----------------------------------------------------------------------------- the scheduler's step


@settings(max_examples=40, **HYPOTHESIS)
@given(
    prediction_type=st.sampled_from(PREDICTION_TYPES),
    clip=st.sampled_from(CLIPS),
    use_clipped=st.booleans(),
    set_alpha_to_one=st.booleans(),
    eta=st.sampled_from([0.0, 0.3, 1.0]),
    index=st.integers(0, 9),
)
def test_step_matches_diffusers(prediction_type, clip, use_clipped, set_alpha_to_one, eta, index):
    import diffusers

    config = dict(
        prediction_type=prediction_type,
        clip_sample=clip == "clip",
        thresholding=clip == "threshold",
        set_alpha_to_one=set_alpha_to_one,
        sample_max_value=3.0,
        dynamic_thresholding_ratio=0.9,
    )
    ours, theirs = DDIMScheduler(**config), diffusers.DDIMScheduler(**config)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    t = int(theirs.timesteps[index])
    x, m, z = _inputs((2, 4, 8, 8), torch.float32, seed=index)
    expected = theirs.step(m, t, x, eta=eta, use_clipped_model_output=use_clipped, variance_noise=z)
    for timestep in (t, torch.tensor(t), torch.tensor([t, t])):
        got = ours.step(m, timestep, x, eta=eta, use_clipped_model_output=use_clipped, variance_noise=z)
        assert rel_l2(got.prev_sample, expected.prev_sample) <= PARITY_RTOL[torch.float32]
        assert rel_l2(got.pred_original_sample, expected.pred_original_sample) <= PARITY_RTOL[torch.float32]


def _large_allocations(fn, size: int) -> int:
    """How many allocations of at least ``size`` bytes ``fn`` makes on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(1 for event in prof.events() if event.self_cpu_memory_usage >= size)


@pytest.mark.parametrize(
    "timestep,eta,clip,in_place",
    [
        (500, 0.0, False, False),
        (500, 1.0, True, False),
        (500, 0.0, False, True),
        ("tensor", 0.0, False, False),
        ("tensor", "tensor", True, False),
        ("tensor", 0.0, True, True),
    ],
    ids=["host", "host-eta-clip", "host-in-place", "per-sample", "per-sample-eta-clip", "per-sample-in-place"],
)
def test_step_allocates_only_its_outputs(timestep, eta, clip, in_place):
    """A step allocates one sample-sized buffer per output it returns (x_prev and x̂0; x̂0 only in place)
    and nothing else of that size: no temporaries over the whole latent."""
    scheduler = DDIMScheduler(clip_sample=clip)
    scheduler.set_timesteps(10)
    x, m, z = _inputs((4, 4, 64, 64), torch.float32)
    timestep = torch.tensor([900, 500, 100, 0]) if timestep == "tensor" else timestep
    eta = torch.tensor([0.0, 1.0, 0.5, 1.0]) if eta == "tensor" else eta
    step = lambda: scheduler.step(m, timestep, x, eta=eta, variance_noise=z, out=x if in_place else None)  # noqa: E731
    step()  # build the cached tables
    assert _large_allocations(step, x.numel() * x.element_size()) == (1 if in_place else 2)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_coefficients_finite_at_the_ends_of_the_noise_range(prediction_type):
    """ᾱ_t = 1 (a clean start, as inversion has) and ᾱ_prev = 0 (a zero-SNR terminal level) give the
    limits of eq. 12, not 0·∞: landing on ᾱ_prev = 0 returns ε̂ exactly and adds no σ noise."""
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    unclipped = [COLUMN[name] for name in ("x0_x", "x0_m", "prev_x", "prev_m", "sigma")]
    for alpha_bar_t in (1.0, 0.5, 1e-12):
        for eta in (0.0, 1.0):
            row = ddim_coefficients(f64(alpha_bar_t), f64(0.0), eta, prediction_type)
            assert torch.isfinite(row[unclipped]).all(), (alpha_bar_t, eta, row)
            assert row[COLUMN["sigma"]] == 0
            a = f64(alpha_bar_t)
            # x_prev = ε̂: for epsilon prediction ε̂ = m; for v, ε̂ = √ᾱ·m + √(1−ᾱ)·x.
            expected = (0.0, 1.0) if prediction_type == "epsilon" else ((1 - a).sqrt(), a.sqrt())
            torch.testing.assert_close(row[COLUMN["prev_x"]], f64(float(expected[0])))
            torch.testing.assert_close(row[COLUMN["prev_m"]], f64(float(expected[1])))
