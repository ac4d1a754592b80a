"""FlowMatchDDIMScheduler: DDIM on the rectified-flow path x_σ = (1 − σ)·x0 + σ·ε.

Reference values: diffusers' FlowMatchEulerDiscreteScheduler (its schedules, its Euler step at η = 0, its
stochastic sampler at the re-noise end, its per-token step, its scale_noise), and closed forms on the flow
path (the forward marginal, the DDPM posterior written independently below, eq. 12 via update.ddim_update).
"""

from __future__ import annotations

import logging
import math
import warnings

import diffusers
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ddim_sched
from ddim_sched import FlowMatchDDIMConfig, FlowMatchDDIMScheduler, flow_update, update
from tests.tolerances import EXACT_RTOL, PARITY_RTOL, rel_l2

HYPOTHESIS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
# The bound for one η = 0 step against diffusers' Euler step (float32): our levels are float64,
# diffusers' float32, so dt differs by float32 rounding of σ (~6e-8 of σ) times |u|/|x|.
EULER_STEP_RTOL = 1e-6


def diffusers_flow(**config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return diffusers.FlowMatchEulerDiscreteScheduler(**config)


def velocity_model(x: torch.Tensor, t) -> torch.Tensor:
    """A smooth nonlinear stand-in for a flow model, any timestep shape."""
    t = torch.as_tensor(t, dtype=x.dtype)
    t = t.reshape(t.shape + (1,) * (x.dim() - t.dim())) if t.dim() else t
    return 0.6 * torch.tanh(x) - 0.3 * x + t / 1000


def tensors(shape, seed, dtype=torch.float32, count=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((count,) + tuple(shape), generator=g, dtype=torch.float64).to(dtype).unbind(0)


# ---------------------------------------------------------------------------- configs as diffusers has them

configs = st.fixed_dictionaries(
    {
        "shift": st.sampled_from([1.0, 3.0]) | st.floats(0.3, 8.0),
        "dynamic": st.sampled_from([None, "exponential", "linear"]),
        "mu": st.floats(0.2, 2.5),
        "shift_terminal": st.sampled_from([None, 0.02, 0.3]),
        "conversion": st.sampled_from([None, "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"]),
        "invert_sigmas": st.booleans(),
        "steps": st.integers(1, 40),
        "custom": st.sampled_from([None, "sigmas", "timesteps"]),
        "num_train_timesteps": st.sampled_from([1000, 1000, 100]),
    }
)


def build(spec):
    """(ours, diffusers') from a drawn spec, both after set_timesteps (shift_terminal needs a level below 1:
    diffusers' levels are NaN there, ours raise; see test_bad_set_timesteps)."""
    assume(not (spec["shift_terminal"] and spec["steps"] == 1 and spec["custom"] != "timesteps"))
    config = dict(
        num_train_timesteps=spec["num_train_timesteps"],
        shift=spec["shift"],
        use_dynamic_shifting=spec["dynamic"] is not None,
        time_shift_type=spec["dynamic"] or "exponential",
        shift_terminal=spec["shift_terminal"],
        invert_sigmas=spec["invert_sigmas"],
    )
    if spec["conversion"]:
        config[spec["conversion"]] = True
    S, T = spec["steps"], spec["num_train_timesteps"]
    kwargs = {"num_inference_steps": S, "mu": spec["mu"] if spec["dynamic"] else None}
    if spec["custom"] == "sigmas":
        kwargs["sigmas"] = list(np.linspace(1.0, 1 / S, S) ** 1.3)
    elif spec["custom"] == "timesteps":
        kwargs["timesteps"] = list(np.linspace(T, T / S, S) * 0.97)
    ours, theirs = FlowMatchDDIMScheduler(**config), diffusers_flow(**config)
    quiet = [logging.getLogger(name) for name in ("ddim_sched", "diffusers")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:  # both warn that custom timesteps and shifted levels may disagree
        logger.setLevel(logging.ERROR)
    try:
        ours.set_timesteps(**kwargs)
        theirs.set_timesteps(**kwargs)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    return ours, theirs


@settings(max_examples=60, **HYPOTHESIS)
@given(spec=configs)
def test_schedule_equals_diffusers(spec):
    ours, theirs = build(spec)
    assert ours.timesteps.dtype == torch.float32 and ours.sigmas.dtype == torch.float32
    # diffusers computes custom levels in float32 before shifting (ours in float64): equal up to that rounding.
    tolerance = 0 if spec["custom"] is None else 2e-6
    T = spec["num_train_timesteps"]
    assert torch.allclose(ours.timesteps, theirs.timesteps, rtol=tolerance, atol=tolerance * T)
    assert torch.allclose(ours.sigmas, theirs.sigmas, rtol=tolerance, atol=tolerance)
    assert ours.num_inference_steps == theirs.num_inference_steps == spec["steps"]


@settings(max_examples=60, **HYPOTHESIS)
@given(spec=configs, seed=st.integers(0, 10_000), dtype=st.sampled_from([torch.float32, torch.float16]))
def test_eta_zero_step_equals_diffusers_euler(spec, seed, dtype):
    # Every step of the schedule from the same input: our η = 0 step is diffusers' x + (σ_s − σ_t)·u.
    ours, theirs = build(spec)
    theirs.set_begin_index(0)
    x, m = tensors((2, 3, 4, 4), seed, count=2)
    x, m = (2 * x).to(dtype), m.to(dtype)
    for t in ours.timesteps:
        expected = theirs.step(m, t, x, return_dict=False)[0]
        got = ours.step(m, t, x)
        assert got.prev_sample.dtype == dtype and torch.isfinite(got.prev_sample).all()
        error = rel_l2(got.prev_sample, expected)  # float32: measured at most 8.9e-8 over these configs
        assert error <= (EULER_STEP_RTOL if dtype == torch.float32 else PARITY_RTOL[dtype]), float(t)
    assert ours.step_index == theirs.step_index == spec["steps"]


def test_eta_zero_loop_equals_diffusers_euler(parity):
    # A whole SD3-like loop (shift 3, 28 steps) from the same noise, the model evaluated on each one's state.
    ours, theirs = FlowMatchDDIMScheduler(shift=3.0), diffusers_flow(shift=3.0)
    ours.set_timesteps(28)
    theirs.set_timesteps(28)
    x = y = tensors((2, 4, 8, 8), 0, count=1)[0]
    for t in ours.timesteps:
        x = ours.step(velocity_model(x, t), t, x).prev_sample
        y = theirs.step(velocity_model(y, t), t, y).prev_sample
    parity("FlowMatchDDIMScheduler eta=0 loop vs FlowMatchEulerDiscreteScheduler (SD3 config, 28 steps)", x, y,
           rtol=EULER_STEP_RTOL)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", [{}, {"shift": 3.0}])
def test_stochastic_sampling_equals_diffusers(config, dtype):
    # The re-noise end: x_s = (1 − σ_s)·x̂0 + σ_s·z with the noise drawn from the same generator (diffusers
    # draws it in float32 for any sample dtype).
    ours = FlowMatchDDIMScheduler(stochastic_sampling=True, **config)
    theirs = diffusers_flow(stochastic_sampling=True, **config)
    ours.set_timesteps(12)
    theirs.set_timesteps(12)
    x = y = tensors((2, 4, 8, 8), 1, count=1)[0].to(dtype)
    g_ours, g_theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for t in ours.timesteps:
        x = ours.step(velocity_model(x, t), t, x, generator=g_ours).prev_sample
        y = theirs.step(velocity_model(y, t), t, y, generator=g_theirs).prev_sample
        assert rel_l2(x, y) <= EULER_STEP_RTOL, float(t)


# ---------------------------------------------------------------------------- closed forms on the flow path


def posterior_std(sigma_t: float, sigma_s: float) -> float:
    """√Var[x_s | x_t, x0] on the flow path, from q(x_s | x0) = N(a_s·x0, b_s²) and
    q(x_t | x_s) = N(k·x_s, b_t² − k²·b_s²) with k = a_t/a_s (DDPM's posterior, written independently)."""
    a_t, b_t, a_s, b_s = 1 - sigma_t, sigma_t, 1 - sigma_s, sigma_s
    if b_s == 0:
        return 0.0
    k = a_t / a_s
    transition = b_t**2 - k**2 * b_s**2
    return math.sqrt(1 / (1 / b_s**2 + k**2 / transition)) if transition > 0 else b_s


@pytest.mark.parametrize("sigma_t, sigma_s", [(1.0, 0.9), (0.8, 0.5), (0.31, 0.3), (0.5, 0.0), (1.0, 0.0)])
@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_exact_velocity_lands_on_the_marginal(sigma_t, sigma_s, eta):
    # With the true x0 and ε, x_s = a_s·x0 + √(b_s² − σ²)·ε + σ·z: mean a_s·x0, variance b_s² for every η,
    # and σ(η = 1) is the DDPM posterior's standard deviation.
    row = flow_update.flow_step_coefficients(sigma_t, sigma_s, eta)
    x0, eps = tensors((3, 5), 2, torch.float64, count=2)
    x_t = (1 - sigma_t) * x0 + sigma_t * eps
    u = eps - x0
    x0_hat = row.x0_x * x_t + row.x0_m * u
    x_s = row.prev_x * x_t + row.prev_m * u
    assert rel_l2(x0_hat, x0) <= EXACT_RTOL[torch.float64]
    d = math.sqrt(max(sigma_s**2 - row.sigma**2, 0.0))
    assert rel_l2(x_s, (1 - sigma_s) * x0 + d * eps) <= EXACT_RTOL[torch.float64]
    assert row.sigma == pytest.approx(eta * posterior_std(sigma_t, sigma_s), rel=1e-12, abs=1e-15)


def test_step_is_eq12_as_update_writes_it():
    # The fused engine (host and tensor weights) against the readable update.ddim_update on flow levels.
    scheduler = FlowMatchDDIMScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    x, m, z = tensors((2, 4, 6, 6), 3)
    levels = scheduler.noise_levels
    assert levels.dtype == torch.float64 and len(levels) == 11
    for i, t in enumerate(scheduler.timesteps):
        level_t, level_s = flow_update.flow_level(float(levels[i])), flow_update.flow_level(float(levels[i + 1]))
        for eta in (0.0, 0.5, 1.0):
            expected, x0 = update.ddim_update(m, x, level_t, level_s, eta, "flow_prediction", noise=z)
            host = scheduler.step(m, t, x, eta=eta, variance_noise=z)
            tensor = scheduler.step(m, t.reshape(1), x, eta=torch.full((2,), eta), variance_noise=z)
            for got in (host, tensor):
                assert rel_l2(got.prev_sample, expected) <= EXACT_RTOL[torch.float32]
                assert rel_l2(got.pred_original_sample, x0) <= EXACT_RTOL[torch.float32]


def test_large_eta_saturates_at_the_renoise_end():
    # σ = min(η·b_s·√(1 − r), b_s): once η >= 1/√(1 − r) the step re-noises fully, as stochastic_sampling does.
    eta_scheduler = FlowMatchDDIMScheduler(shift=3.0)
    renoise = FlowMatchDDIMScheduler(shift=3.0, stochastic_sampling=True)
    for s in (eta_scheduler, renoise):
        s.set_timesteps(6)
    x, m, z = tensors((2, 3, 4, 4), 4)
    for i, t in enumerate(eta_scheduler.timesteps):
        sigma_t, sigma_s = float(eta_scheduler.noise_levels[i]), float(eta_scheduler.noise_levels[i + 1])
        r = ((1 - sigma_t) * sigma_s / ((1 - sigma_s) * sigma_t)) ** 2
        saturating = 1 / math.sqrt(1 - r) if r < 1 else math.inf
        expected = renoise.step(m, t, x, variance_noise=z).prev_sample
        for eta in (saturating * 1.0001, 50.0):
            if eta >= saturating:
                assert rel_l2(eta_scheduler.step(m, t, x, eta=eta, variance_noise=z).prev_sample, expected) <= 1e-6
        below = eta_scheduler.step(m, t, x, eta=0.9 * saturating, variance_noise=z).prev_sample
        assert sigma_s == 0 or rel_l2(below, expected) > 1e-3


@pytest.mark.parametrize(
    "config", [{}, {"stochastic_sampling": True}, {"eta": 1.0}, {"invert_sigmas": True, "eta": 1.0}, {"eta": 7.0}]
)
@pytest.mark.parametrize("steps", [1, 2, 50])
def test_no_nan_from_pure_noise_to_data(config, steps):
    # σ = 1 at the first timestep (a = 0) and σ = 0 after the last (b = 0): every coefficient finite.
    scheduler = FlowMatchDDIMScheduler(**config)
    scheduler.set_timesteps(steps)
    assert float(scheduler.noise_levels[0]) == 1.0 and float(scheduler.noise_levels[-1]) == 0.0
    x = tensors((2, 3, 4, 4), 5, count=1)[0]
    g = torch.Generator().manual_seed(0)
    for t in scheduler.timesteps:
        out = scheduler.step(velocity_model(x, t), t, x, generator=g)
        assert torch.isfinite(out.prev_sample).all() and torch.isfinite(out.pred_original_sample).all()
        x = out.prev_sample
    # The last step lands on x̂0 itself (σ_s = 0: no noise left, whatever η).
    assert torch.equal(x, out.pred_original_sample) or rel_l2(x, out.pred_original_sample) <= 1e-7


# ---------------------------------------------------------------------------- per-element timesteps and η


def test_per_frame_timesteps_equal_stepping_each_frame_alone():
    # Video latents [B, C, F, H, W], each frame at its own noise level and each sample with its own η.
    scheduler = FlowMatchDDIMScheduler(shift=3.0)
    scheduler.set_timesteps(12)
    B, C, F = 2, 3, 4
    x, m, z = tensors((B, C, F, 5, 5), 6)
    positions = torch.tensor([[0, 3, 7, 11], [2, 2, 5, 9]])
    t = scheduler.timesteps[positions].reshape(B, 1, F, 1, 1)
    eta = torch.tensor([0.0, 0.7])
    batched = scheduler.step(m, t, x, eta=eta, variance_noise=z)
    for b in range(B):
        for f in range(F):
            alone = scheduler.step(
                m[b : b + 1, :, f],
                scheduler.timesteps[positions[b, f]],
                x[b : b + 1, :, f],
                eta=float(eta[b]),
                variance_noise=z[b : b + 1, :, f],
            )
            tolerance = EXACT_RTOL[torch.float32]
            assert rel_l2(batched.prev_sample[b, :, f], alone.prev_sample[0]) <= tolerance, (b, f)
            assert rel_l2(batched.pred_original_sample[b, :, f], alone.pred_original_sample[0]) <= tolerance


def test_a_repeated_pattern_of_frame_timesteps_steps_like_a_new_one():
    """The schedule keeps the coefficients of a per-frame pattern by value (a FIFO queue repeats one every
    call): values edited in place, η and the sample's dtype still change the step; bad shapes are refused
    every time."""
    scheduler = FlowMatchDDIMScheduler(shift=3.0)
    scheduler.set_timesteps(12)
    x, m, z = tensors((1, 2, 4, 3, 3), 7)
    t = scheduler.timesteps[torch.tensor([0, 3, 6, 9])].reshape(1, 1, 4, 1, 1).clone()

    def frame_by_frame(m, x, eta=0.0):
        frames = [
            scheduler.step(m[:, :, f], float(t[0, 0, f]), x[:, :, f], eta=eta, variance_noise=z[:, :, f].to(x.dtype))
            for f in range(4)
        ]
        return torch.stack([frame.prev_sample for frame in frames], dim=2)

    def batched(m, x, eta=0.0):
        return scheduler.step(m, t, x, eta=eta, variance_noise=z.to(x.dtype)).prev_sample

    tolerance = EXACT_RTOL[torch.float32]
    for _ in range(3):
        assert rel_l2(batched(m, x), frame_by_frame(m, x)) <= tolerance
    t[0, 0, 2] = scheduler.timesteps[1]
    assert rel_l2(batched(m, x), frame_by_frame(m, x)) <= tolerance
    assert rel_l2(batched(m, x, 0.8), frame_by_frame(m, x, 0.8)) <= tolerance
    assert rel_l2(batched(m.double(), x.double()), frame_by_frame(m.double(), x.double())) <= EXACT_RTOL[torch.float64]
    off_schedule = t.clone()
    off_schedule[0, 0, 3] += 1.0
    for _ in range(2):
        with pytest.raises(ValueError, match="timestep"):
            scheduler.step(m[:, :, :3], t, x[:, :, :3])
        with pytest.raises(ValueError, match="must be one of scheduler.timesteps"):
            scheduler.step(m, off_schedule, x)


@settings(max_examples=25, **HYPOTHESIS)
@given(
    positions=st.lists(st.integers(0, 19), min_size=3, max_size=3),
    eta=st.lists(st.floats(0.0, 3.0), min_size=3, max_size=3),
    stochastic=st.booleans(),
    invert=st.booleans(),
)
def test_per_sample_call_equals_single_calls(positions, eta, stochastic, invert):
    scheduler = FlowMatchDDIMScheduler(shift=2.0, stochastic_sampling=stochastic, invert_sigmas=invert)
    scheduler.set_timesteps(20)
    x, m, z = tensors((3, 2, 4, 4), sum(positions))
    t = scheduler.timesteps[torch.tensor(positions)]
    eta_arg = None if stochastic else torch.tensor(eta)
    batched = scheduler.step(m, t, x, eta=eta_arg, variance_noise=z)
    for i in range(3):
        single = scheduler.step(
            m[i : i + 1], float(t[i]), x[i : i + 1], eta=None if stochastic else eta[i], variance_noise=z[i : i + 1]
        )
        assert rel_l2(batched.prev_sample[i], single.prev_sample[0]) <= EXACT_RTOL[torch.float32]


def test_compiled_steps_equal_eager():
    # fullgraph: no graph break anywhere (no host read of a tensor, no Python branch on one).
    scheduler = FlowMatchDDIMScheduler(shift=3.0)
    scheduler.set_timesteps(8)
    step = torch.compile(scheduler.step, fullgraph=True, backend="aot_eager")
    x, m, z = tensors((2, 3, 4, 5, 5), 7)
    t = scheduler.timesteps[torch.tensor([[1, 4, 7, 0], [6, 5, 2, 3]])].reshape(2, 1, 4, 1, 1)
    eta = torch.tensor([0.3, 1.0])
    for timestep in (t, scheduler.timesteps[3]):
        compiled = step(m, timestep, x, eta=eta, variance_noise=z)
        eager = scheduler.step(m, timestep, x, eta=eta, variance_noise=z)
        assert rel_l2(compiled.prev_sample, eager.prev_sample) <= EXACT_RTOL[torch.float32]
        assert rel_l2(compiled.pred_original_sample, eager.pred_original_sample) <= EXACT_RTOL[torch.float32]


def test_compiled_sampling_loop_equals_eager():
    scheduler = FlowMatchDDIMScheduler(shift=3.0, eta=0.5)
    scheduler.set_timesteps(4)
    timesteps = scheduler.timesteps
    noises = tensors((4, 2, 3, 4, 4), 8, count=1)[0]

    def sample(x):
        for i, t in enumerate(timesteps):
            x = scheduler.step(velocity_model(x, t), t, x, variance_noise=noises[i]).prev_sample
        return x

    x = tensors((2, 3, 4, 4), 9, count=1)[0]
    compiled = torch.compile(sample, fullgraph=True, backend="aot_eager")(x)
    assert rel_l2(compiled, sample(x)) <= EXACT_RTOL[torch.float32]


# ---------------------------------------------------------------------------- dtypes and autograd


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_step_in_float32(dtype):
    scheduler = FlowMatchDDIMScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    x, m, z = tensors((2, 4, 8, 8), 10)
    t = scheduler.timesteps[4]
    reference = scheduler.step(m.to(dtype).float(), t, x.to(dtype).float(), eta=0.5, variance_noise=z)
    got = scheduler.step(m.to(dtype), t, x.to(dtype), eta=0.5, variance_noise=z)
    assert got.prev_sample.dtype == dtype and got.pred_original_sample.dtype == dtype
    # Only the result's rounding to the half dtype separates them.
    assert rel_l2(got.prev_sample, reference.prev_sample) <= EXACT_RTOL[dtype]
    assert rel_l2(got.pred_original_sample, reference.pred_original_sample) <= EXACT_RTOL[dtype]


def test_gradcheck_float64():
    scheduler = FlowMatchDDIMScheduler(shift=3.0)
    scheduler.set_timesteps(6)
    x, m, z = (v.requires_grad_() for v in tensors((2, 3, 2, 2), 11, torch.float64))
    eta = torch.tensor([0.4, 1.2], dtype=torch.float64, requires_grad=True)
    t = scheduler.timesteps[torch.tensor([1, 4])]

    def prev(m, x, z, eta):
        return scheduler.step(m, t, x, eta=eta, variance_noise=z).prev_sample

    assert torch.autograd.gradcheck(prev, (m, x, z, eta))
    # The recorded path computes what the fused engine computes.
    with torch.no_grad():
        fused = prev(m, x, z, eta)
    assert rel_l2(prev(m, x, z, eta), fused) <= EXACT_RTOL[torch.float64]


def test_out_writes_in_place_and_layouts():
    scheduler = FlowMatchDDIMScheduler()
    scheduler.set_timesteps(5)
    x, m, _ = tensors((2, 8, 8, 4), 12)
    x, m = x.permute(0, 3, 1, 2), m.permute(0, 3, 1, 2)  # channels-last views
    t = scheduler.timesteps[2]
    expected = scheduler.step(m.contiguous(), t, x.contiguous()).prev_sample
    buffer = x.clone()
    result = scheduler.step(m, t, buffer, out=buffer).prev_sample
    assert result is buffer and rel_l2(buffer, expected) <= EXACT_RTOL[torch.float32]


# ---------------------------------------------------------------------------- the rest of diffusers' interface


def test_predictions_and_forward_process():
    # scale_noise is diffusers' forward process; predict_x0_eps inverts it for the exact velocity.
    ours, theirs = FlowMatchDDIMScheduler(shift=3.0), diffusers_flow(shift=3.0)
    for s in (ours, theirs):
        s.set_timesteps(10)
    x0, eps = tensors((3, 4, 6, 6), 13, count=2)
    t = ours.timesteps[torch.tensor([0, 4, 9])]
    noisy = ours.scale_noise(x0, t, eps)
    assert rel_l2(noisy, theirs.scale_noise(x0, t, eps)) <= EXACT_RTOL[torch.float32]
    # One noise for the batch broadcasts, as in diffusers.
    shared = ours.scale_noise(x0, t, eps[:1])
    assert shared.shape == x0.shape and rel_l2(shared, theirs.scale_noise(x0, t, eps[:1])) <= EXACT_RTOL[torch.float32]
    for i in range(3):
        x0_hat, eps_hat = ours.predict_x0_eps((eps - x0)[i : i + 1], float(t[i]), noisy[i : i + 1])
        assert rel_l2(x0_hat, x0[i : i + 1]) <= 1e-5 and (i == 0 or rel_l2(eps_hat, eps[i : i + 1]) <= 1e-5)
        # ε̂ is what the step's x̂0 implies: (x_t − (1 − σ)·x̂0)/σ.
        x0_step = ours.step((eps - x0)[i : i + 1], float(t[i]), noisy[i : i + 1]).pred_original_sample
        assert rel_l2(x0_step, x0_hat) <= EXACT_RTOL[torch.float32]
    # invert_sigmas (Mochi): timesteps and sigmas hold 1 − σ, and the model predicts x0 − ε.
    inverted = FlowMatchDDIMScheduler(invert_sigmas=True, shift=3.0)
    inverted.set_timesteps(10)
    assert torch.allclose(inverted.sigmas, 1 - ours.sigmas) and torch.equal(inverted.noise_levels, ours.noise_levels)
    t, noisy = inverted.timesteps[4], ours.scale_noise(x0, ours.timesteps[4], eps)
    assert rel_l2(inverted.scale_noise(x0, t, eps), noisy) <= EXACT_RTOL[torch.float32]
    x0_hat, eps_hat = inverted.predict_x0_eps(x0 - eps, t, noisy)
    assert rel_l2(x0_hat, x0) <= 1e-5 and rel_l2(eps_hat, eps) <= 1e-5
    assert rel_l2(inverted.step(x0 - eps, t, noisy).pred_original_sample, x0) <= 1e-5
    # Before set_timesteps: the training table, as diffusers' training loops use it.
    fresh, reference = FlowMatchDDIMScheduler(shift=3.0), diffusers_flow(shift=3.0)
    t = reference.timesteps[torch.tensor([10, 500, 999])]
    assert torch.equal(fresh.timesteps, reference.timesteps) and torch.equal(fresh.sigmas, reference.sigmas)
    assert rel_l2(fresh.scale_noise(x0, t, eps), reference.scale_noise(x0, t, eps)) <= EXACT_RTOL[torch.float32]


def test_per_token_timesteps_equal_diffusers():
    # diffusers' per-token path (LTX conditioning): σ_t = value/T, landing on the next schedule level below;
    # the model output comes negated (x0 − ε), as LTX's pipeline passes it.
    ours, theirs = FlowMatchDDIMScheduler(), diffusers_flow()
    for s in (ours, theirs):
        s.set_timesteps(10)
    x, m, _ = tensors((2, 16, 8), 14)
    per_token = ours.timesteps[3].expand(2, 16).clone()
    per_token[:, :4] = 150.0  # conditioning tokens at a lower, off-schedule level
    expected = theirs.step(m, ours.timesteps[3], x, per_token_timesteps=per_token, return_dict=False)[0]
    got = ours.step(m, ours.timesteps[3], x, per_token_timesteps=per_token)
    assert rel_l2(got.prev_sample, expected) <= EULER_STEP_RTOL


@pytest.mark.parametrize("shift", [2.771122141567849, 3.0, 0.37])
def test_top_level_is_one_whatever_the_float32_training_table_rounds_to(shift):
    # shift·1/(1 + (shift − 1)·1) in float32 can exceed 1 by an ulp (diffusers' sigma_max): the levels stay in (0, 1].
    scheduler = FlowMatchDDIMScheduler(shift=shift)
    for steps in (1, 7):
        scheduler.set_timesteps(steps)
        assert float(scheduler.noise_levels[0]) == 1.0 and scheduler.timesteps[0] == 1000.0


def test_step_index_begin_index_and_shift():
    scheduler = FlowMatchDDIMScheduler(shift=3.0)
    scheduler.set_timesteps(6)
    assert scheduler.step_index is None and scheduler.begin_index is None
    x, m, _ = tensors((1, 2, 2, 2), 15)
    for t in scheduler.timesteps[2:4]:
        scheduler.step(m, t, x)
    assert scheduler.step_index == 4  # found from the first timestep's place in the schedule
    scheduler.set_timesteps(6)
    scheduler.set_begin_index(1)
    scheduler.step(m, scheduler.timesteps[1], x)
    assert scheduler.step_index == 2 and scheduler.index_for_timestep(scheduler.timesteps[5]) == 5
    # set_shift changes the next schedule only, as in diffusers.
    reference = diffusers_flow(shift=3.0)
    for s in (scheduler, reference):
        s.set_shift(1.5)
        s.set_timesteps(6)
    assert scheduler.shift == 1.5 and torch.equal(scheduler.sigmas, reference.sigmas)
    assert scheduler.config.shift == 3.0 and len(scheduler) == 1000 and scheduler.init_noise_sigma == 1.0
    assert scheduler.order == 1 and scheduler.compatibles == [FlowMatchDDIMScheduler]
    assert scheduler.sigma_max == reference.sigma_max and scheduler.sigma_min == reference.sigma_min


def test_time_shift_and_stretch_are_diffusers():
    ours = FlowMatchDDIMScheduler(use_dynamic_shifting=True, shift_terminal=0.1)
    theirs = diffusers_flow(use_dynamic_shifting=True, shift_terminal=0.1)
    t = torch.linspace(1.0, 0.05, 7, dtype=torch.float64)
    assert torch.allclose(ours.time_shift(0.7, 1.0, t), theirs.time_shift(0.7, 1.0, t), rtol=1e-15)
    assert torch.allclose(ours.stretch_shift_to_terminal(t), theirs.stretch_shift_to_terminal(t), rtol=1e-15)


def test_config_round_trips(tmp_path):
    flux = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
            "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}  # fmt: skip
    ours = FlowMatchDDIMScheduler.from_config(diffusers_flow(**flux).config, eta=0.5)
    assert ours.flow_config == FlowMatchDDIMConfig(**flux, eta=0.5)
    ours.save_pretrained(tmp_path)
    loaded = FlowMatchDDIMScheduler.from_pretrained(tmp_path)
    assert loaded.flow_config == ours.flow_config and loaded.config["eta"] == 0.5
    # diffusers' class reads our config (eta appears only when set: at its default diffusers sees nothing new).
    plain = FlowMatchDDIMScheduler(**flux)
    assert "eta" not in plain.config and plain.config.eta == 0.0
    back = diffusers_flow(**{k: v for k, v in plain.config.items() if not k.startswith("_")})
    assert {k: back.config[k] for k in ddim_sched.flow.config.DIFFUSERS_FLOW_FIELDS} == {
        k: plain.config[k] for k in ddim_sched.flow.config.DIFFUSERS_FLOW_FIELDS
    }
    # register_to_config with a schedule set: the schedule is derived anew with the same request.
    plain.set_timesteps(5, mu=0.8)
    plain.register_to_config(shift_terminal=0.2)
    assert float(plain.sigmas[-2]) == pytest.approx(0.2)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"shift": 0.0}, ValueError, "shift must be > 0.0; got 0.0"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, ValueError, "at most one of"),
        ({"time_shift_type": "cubic"}, ValueError, "time_shift_type must be one of 'exponential', 'linear'; got 'cub"),
        ({"shift_terminal": 1.5}, ValueError, "shift_terminal must lie in"),
        ({"stochastic_sampling": True, "eta": 0.5}, ValueError, "cannot be combined with eta=0.5"),
        ({"eta": -0.1}, ValueError, "eta must be >= 0.0; got -0.1"),
        ({"use_dynamic_shifting": 1}, TypeError, "use_dynamic_shifting must be a bool; got 1"),
    ],
)
def test_bad_config(kwargs, error, match):
    with pytest.raises(error, match=match):
        FlowMatchDDIMScheduler(**kwargs)


LINEAR_SHIFT = {"use_dynamic_shifting": True, "time_shift_type": "linear"}


@pytest.mark.parametrize(
    "config, kwargs, error, match",
    [
        ({}, {"sigmas": [1.0, 0.5, 0.6]}, ValueError, r"decreasing; got sigmas\[1\] = 0.5 <= sigmas\[2\] = 0.6"),
        ({}, {"sigmas": [1.2, 0.5]}, ValueError, r"sigmas must lie in \(0, 1\].*got sigmas\[0\] = 1.2"),
        ({}, {"sigmas": [1.0, 0.0]}, ValueError, r"got sigmas\[1\] = 0.0"),
        ({}, {"timesteps": [500.0, 900.0]}, ValueError, "timesteps must be strictly decreasing"),
        (LINEAR_SHIFT, {"num_inference_steps": 4, "mu": -1.0}, ValueError, "mu must be > 0 for the linear.*-1.0"),
        ({}, {"num_inference_steps": 3, "sigmas": [1.0, 0.5]}, ValueError, "num_inference_steps=3 disagrees"),
        ({}, {"sigmas": [1.0, 0.5], "timesteps": [900.0]}, ValueError, "same length; got 2 and 1"),
        ({}, {}, ValueError, "needs num_inference_steps, sigmas or timesteps"),
        ({}, {"num_inference_steps": 0}, ValueError, "num_inference_steps must be >= 1; got 0"),
        ({}, {"num_inference_steps": 2.5}, TypeError, "num_inference_steps must be an int; got 2.5"),
        ({}, {"sigmas": "abc"}, TypeError, "sigmas must be a 1-D sequence of real numbers"),
        ({"shift_terminal": 0.1}, {"num_inference_steps": 1}, ValueError, "cannot stretch a schedule whose only level"),
    ],
)  # fmt: skip
def test_bad_set_timesteps(config, kwargs, error, match):
    with pytest.raises(error, match=match):
        FlowMatchDDIMScheduler(**config).set_timesteps(**kwargs)


def test_bad_step_arguments():
    scheduler = FlowMatchDDIMScheduler()
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="call set_timesteps"):
        scheduler.step(x, 1000.0, x)
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[1]
    cases = [
        ({"timestep": 3}, TypeError, "not an integer index .* got 3"),
        ({"timestep": torch.tensor(900)}, TypeError, "floating-point tensor .* got dtype torch.int64"),
        ({"timestep": 555.5}, ValueError, r"timestep must be one of scheduler.timesteps; got 555.5; the nearest"),
        ({"timestep": t.expand(3)}, ValueError, r"timestep must .* broadcasts over .*\[2, 3, 4, 4\].*got shape \[3\]"),
        ({"eta": -1.0}, ValueError, "eta must be finite and >= 0; got -1.0"),
        ({"eta": torch.tensor([0.5, -0.5])}, ValueError, "eta must be finite and >= 0; got -0.5"),
        ({"eta": torch.ones(4)}, ValueError, r"eta must .* broadcasts over .*got shape \[4\]"),
        ({"eta": "high"}, TypeError, "eta must be a float or a floating-point tensor; got 'high'"),
        ({"s_churn": 0.5}, ValueError, "use eta"),
        ({"eta": 0.5, "generator": torch.Generator(), "variance_noise": x}, ValueError, "not both"),
        ({"variance_noise": x[:1], "eta": 0.5}, ValueError, "variance_noise must have the sample's shape"),
        ({"out": x[:1]}, ValueError, "out must be a tensor of the sample's shape"),
        ({"sample": x[:1]}, ValueError, "model_output and sample must have the same shape"),
    ]  # fmt: skip
    for changes, error, match in cases:
        arguments = {"model_output": x, "timestep": t, "sample": x, **changes}
        with pytest.raises(error, match=match):
            scheduler.step(**arguments)
    with pytest.raises(ValueError, match="eta cannot be given when stochastic_sampling=True"):
        stochastic = FlowMatchDDIMScheduler(stochastic_sampling=True)
        stochastic.set_timesteps(3)
        stochastic.step(x, stochastic.timesteps[0], x, eta=0.0)


# ---------------------------------------------------------------------------- the demo's flow rows


def test_demo_flow_law_is_what_the_scheduler_does():
    # For η = 0 the sampler is affine per dimension, x_out = A·x_1 + B: running the scheduler itself with
    # the exact velocity model from x_1 = 0 and x_1 = 1 gives B and A + B, so mean B and variance A².
    from ddim_sched.demo import flow

    mean = torch.tensor([0.3, -0.5, 0.0], dtype=torch.float64)
    std = torch.tensor([0.02, 0.3, 1.0], dtype=torch.float64)
    scheduler = flow.flow_scheduler(12, 0.0)
    levels = scheduler.noise_levels

    def exact_velocity(x, i):
        a, b = 1 - levels[i], levels[i]
        s2 = a * a * std**2 + b * b
        return (b - a * std**2) * (x - a * mean) / s2 - mean

    ends = []
    for start in (0.0, 1.0):
        x = torch.full((1, 3), start, dtype=torch.float64)
        for i, t in enumerate(scheduler.timesteps):
            x = scheduler.step(exact_velocity(x, i), t, x).prev_sample
        ends.append(x[0])
    m, v = flow.flow_output_law(scheduler, mean, std)
    assert rel_l2(m, ends[0]) <= EXACT_RTOL[torch.float64]
    assert rel_l2(v, (ends[1] - ends[0]) ** 2) <= EXACT_RTOL[torch.float64]


def test_demo_flow_table_trends():
    # What the demo prints (docs/flow.md): W2 falls with S for every η, grows with η at every S, and the
    # re-noise end is last.
    from ddim_sched.demo import flow, gaussian

    mean, std = gaussian.gaussian_data(3072, 0)
    table = flow.flow_table((10, 20, 50), flow.FLOW_ETAS, mean, std, torch.device("cpu"), torch.float32)
    result = flow.FlowGaussianTable(table, (10, 20, 50), flow.FLOW_ETAS)
    assert result.falls_with_steps and result.ordered_by_eta
    text = "\n".join(result.format_lines())
    assert "0 < 0.2 < 0.5 < 1 < renoise at every S: yes" in text and "W2 order at" not in text
    swapped = flow.FlowGaussianTable({**table, (0.0, 10): table[(1.0, 10)] + 0.1}, (10, 20, 50), flow.FLOW_ETAS)
    assert not swapped.ordered_by_eta and "W2 order at S=10 (best first): 0.2 < 0.5 < 1 < 0 < renoise" in "\n".join(
        swapped.format_lines()
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_tuple_return_is_diffusers_and_skips_only_x0(dtype):
    # return_dict=False gives (x_s,) as diffusers' FlowMatchEuler does, computed without x̂0 (the engine's
    # fused_prev_sample): equal to the output object's x_s for host and tensor weights, noise, layouts, out=.
    scheduler = FlowMatchDDIMScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    x, m, z = tensors((3, 8, 6, 4), 16, dtype)
    x_cl, m_cl = x.permute(0, 3, 1, 2), m.permute(0, 3, 1, 2)  # strided views
    z = z.permute(0, 3, 1, 2).contiguous()
    per_sample = scheduler.timesteps[torch.tensor([1, 5, 9])]
    for t, eta in (
        (scheduler.timesteps[4], 0.0),
        (scheduler.timesteps[4], 0.6),
        (per_sample, torch.tensor([0.0, 0.5, 1.0])),
    ):
        full = scheduler.step(m_cl, t, x_cl, eta=eta, variance_noise=z)
        tuple_ = scheduler.step(m_cl, t, x_cl, eta=eta, variance_noise=z, return_dict=False)
        assert isinstance(tuple_, tuple) and len(tuple_) == 1 and tuple_[0].dtype == dtype
        assert torch.equal(tuple_[0], full.prev_sample)
        buffer = x_cl.clone()
        in_place = scheduler.step(m_cl, t, buffer, eta=eta, variance_noise=z, return_dict=False, out=buffer)[0]
        assert in_place is buffer and torch.equal(buffer, full.prev_sample)
