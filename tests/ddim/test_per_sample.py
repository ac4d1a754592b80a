"""Per-sample timesteps, η and successors in one step call, and the two successor rules.

A batched call must equal B single calls; the "schedule" rule must land every step on the forward
marginal of the next visited timestep (docs/migration.md (diffusers defects): the stride rule does not for linspace
S=10 and trailing S=13).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddim_sched import DDIMScheduler
from tests.oracle import closed_form_step as reference_step
from tests.tolerances import EXACT_RTOL, PARITY_RTOL, rel_l2

HYPOTHESIS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
B = 5


def _noise(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (1.5 * torch.randn((3,) + shape, generator=g, dtype=torch.float64)).to(dtype).unbind(0)


@settings(max_examples=60, **HYPOTHESIS)
@given(
    prediction_type=st.sampled_from(["epsilon", "sample", "v_prediction"]),
    clip=st.sampled_from(["none", "clip", "threshold"]),
    use_clipped=st.booleans(),
    set_alpha_to_one=st.booleans(),
    spacing=st.sampled_from(["leading", "trailing", "linspace"]),
    rule=st.sampled_from(["stride", "schedule"]),
    steps=st.integers(2, 30),
    positions=st.lists(st.integers(0, 1000), min_size=B, max_size=B),
    eta=st.one_of(st.sampled_from([0.0, 1.0]), st.lists(st.floats(0.0, 1.5), min_size=B, max_size=B)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 1000),
)
def test_batched_call_equals_single_calls(
    prediction_type, clip, use_clipped, set_alpha_to_one, spacing, rule, steps, positions, eta, dtype, seed
):
    scheduler = DDIMScheduler(
        prediction_type=prediction_type,
        clip_sample=clip == "clip",
        thresholding=clip == "threshold",
        sample_max_value=2.5,
        dynamic_thresholding_ratio=0.9,
        set_alpha_to_one=set_alpha_to_one,
        timestep_spacing=spacing,
        prev_timestep_rule=rule,
    )
    scheduler.set_timesteps(steps)
    schedule = scheduler.timesteps
    timesteps = schedule[torch.tensor(positions) % len(schedule)]
    x, m, z = _noise((B, 2, 6, 6), dtype, seed)
    eta_arg = torch.tensor(eta, dtype=dtype) if isinstance(eta, list) else eta
    batched = scheduler.step(m, timesteps, x, eta=eta_arg, use_clipped_model_output=use_clipped, variance_noise=z)
    for i in range(B):
        eta_i = eta[i] if isinstance(eta, list) else eta
        single = scheduler.step(
            m[i : i + 1],
            int(timesteps[i]),
            x[i : i + 1],
            eta=eta_i,
            use_clipped_model_output=use_clipped,
            variance_noise=z[i : i + 1],
        )
        assert rel_l2(batched.prev_sample[i], single.prev_sample[0]) <= EXACT_RTOL[dtype]
        assert rel_l2(batched.pred_original_sample[i], single.pred_original_sample[0]) <= EXACT_RTOL[dtype]


def test_per_sample_eta_tensor_equals_float_eta():
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(20)
    x, m, z = _noise((3, 4, 8, 8), torch.float32, 0)
    t = torch.tensor([951, 501, 1])
    batched = scheduler.step(m, t, x, eta=torch.tensor([0.0, 0.5, 1.0]), variance_noise=z)
    for i, eta in enumerate([0.0, 0.5, 1.0]):
        single = scheduler.step(m, t, x, eta=eta, variance_noise=z)
        assert rel_l2(batched.prev_sample[i], single.prev_sample[i]) <= EXACT_RTOL[torch.float32]


# ----------------------------------------------------------------------------- diffusers' parallel scheduler


def _parallel_pair(set_alpha_to_one):
    import diffusers

    config = dict(set_alpha_to_one=set_alpha_to_one, clip_sample=False, beta_start=0.01, beta_end=0.02)
    ours, theirs = DDIMScheduler(**config), diffusers.DDIMParallelScheduler(**config)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    return ours, theirs


def test_matches_ddim_parallel_batch_step_no_noise_where_it_is_right():
    # η = 0, set_alpha_to_one=True: DDIMParallelScheduler.batch_step_no_noise is right, final step included.
    ours, theirs = _parallel_pair(set_alpha_to_one=True)
    timesteps = theirs.timesteps.clone()  # 900, 800, ..., 0: ten samples at ten timesteps
    x, m, _ = _noise((10, 3, 8, 8), torch.float32, 1)
    expected = theirs.batch_step_no_noise(m, timesteps, x, eta=0.0)
    got = ours.step(m, timesteps, x, eta=0.0).prev_sample
    assert rel_l2(got, expected) <= PARITY_RTOL[torch.float32]


def test_final_step_honours_set_alpha_to_one_where_ddim_parallel_does_not(observe):
    # docs/migration.md (diffusers defects): diffusers' batch_step_no_noise uses ᾱ_prev = 1 at the final step even when
    # set_alpha_to_one=False, where the final ᾱ must be ᾱ[0]. Ours lands on ᾱ[0]; diffusers' is recorded.
    ours, theirs = _parallel_pair(set_alpha_to_one=False)
    timesteps = torch.tensor([500, 0])  # one mid-schedule sample and one at the last step
    x, m, _ = _noise((2, 3, 8, 8), torch.float32, 2)
    theirs_prev = theirs.batch_step_no_noise(m, timesteps, x, eta=0.0)
    ours_prev = ours.step(m, timesteps, x, eta=0.0).prev_sample
    alpha_bar = ours.alpha_bar
    assert rel_l2(ours_prev[0], theirs_prev[0]) <= PARITY_RTOL[torch.float32]  # agree mid-schedule
    final_ref, _ = reference_step(m[1:], x[1:], alpha_bar[0], alpha_bar[0], 0.0, "epsilon", "none", False, None)
    assert rel_l2(ours_prev[1], final_ref[0]) <= EXACT_RTOL[torch.float32]
    buggy_ref, _ = reference_step(m[1:], x[1:], alpha_bar[0], 1.0, 0.0, "epsilon", "none", False, None)
    observe(
        f"diffusers' batch_step_no_noise final step is {rel_l2(theirs_prev[1], buggy_ref[0]):.1e} from alpha_bar = 1"
    )


# ----------------------------------------------------------------------------- explicit successors


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_explicit_prev_timestep(set_alpha_to_one):
    scheduler = DDIMScheduler(clip_sample=False, prediction_type="v_prediction", set_alpha_to_one=set_alpha_to_one)
    scheduler.set_timesteps(10)
    alpha_bar = scheduler.alpha_bar
    final = 1.0 if set_alpha_to_one else float(alpha_bar[0])
    x, m, z = _noise((3, 4, 8, 8), torch.float64, 3)
    t = torch.tensor([900, 450, 37])
    prev = torch.tensor([850, -1, -7])  # negative: past the last step
    got = scheduler.step(m, t, x, eta=0.5, variance_noise=z, prev_timestep=prev)
    a_prev = torch.stack(
        [alpha_bar[850], torch.tensor(final, dtype=torch.float64), torch.tensor(final, dtype=torch.float64)]
    )
    expected, x0 = reference_step(m, x, alpha_bar[t], a_prev, 0.5, "v_prediction", "none", False, z)
    assert rel_l2(got.prev_sample, expected) <= EXACT_RTOL[torch.float64]
    assert rel_l2(got.pred_original_sample, x0) <= EXACT_RTOL[torch.float64]
    # An int successor applies to the whole batch.
    got = scheduler.step(m, t, x, prev_timestep=-1)
    expected, _ = reference_step(m, x, alpha_bar[t], final, 0.0, "v_prediction", "none", False, None)
    assert rel_l2(got.prev_sample, expected) <= EXACT_RTOL[torch.float64]


def test_prev_timestep_out_of_range_is_rejected():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="prev_timestep"):
        scheduler.step(x, 500, x, prev_timestep=1000)
    with pytest.raises(ValueError, match="prev_timestep"):
        scheduler.step(x, 500, x, prev_timestep=torch.tensor([3, 1000]))


def test_value_checks_are_skipped_for_device_tensors():
    # Reading a device tensor's values would sync the host; the meta device stands in for one here
    # (it has shapes but no values), so a run that returns shows no value was read.
    scheduler = DDIMScheduler(thresholding=True, sample_max_value=2.0)
    scheduler.set_timesteps(10)
    x = torch.empty(4, 4, 8, 8, device="meta")
    out = scheduler.step(
        x,
        torch.tensor([5000, 1, 2, 3], device="meta"),
        x,
        eta=torch.full((4,), -1.0, device="meta"),
        variance_noise=x,
        prev_timestep=torch.tensor([1, 2, 3, 4], device="meta"),
    )
    assert out.prev_sample.device.type == "meta" and out.prev_sample.shape == x.shape
    # The same values on the CPU are checked.
    with pytest.raises(ValueError, match="timestep"):
        scheduler.step(torch.zeros(4, 2), torch.tensor([5000, 1, 2, 3]), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="eta"):
        scheduler.step(torch.zeros(4, 2), torch.tensor([1, 1, 2, 3]), torch.zeros(4, 2), eta=torch.full((4,), -1.0))


# ----------------------------------------------------------------------------- the successor rules


def _pair(**config):
    stride = DDIMScheduler(prev_timestep_rule="stride", **config)
    schedule = DDIMScheduler(prev_timestep_rule="schedule", **config)
    return stride, schedule


@pytest.mark.parametrize("steps,offset", [(10, 0), (50, 1), (7, 0), (1000, 0)])
def test_rules_agree_for_leading_spacing(steps, offset):
    stride, schedule = _pair(timestep_spacing="leading", steps_offset=offset, clip_sample=False)
    stride.set_timesteps(steps)
    schedule.set_timesteps(steps)
    x, m, z = _noise((1, 3, 4, 4), torch.float32, 4)
    for t in stride.timesteps:
        assert stride.previous_timestep(int(t)) == schedule.previous_timestep(int(t))
        a = stride.step(m, t, x, eta=0.3, variance_noise=z)
        b = schedule.step(m, t, x, eta=0.3, variance_noise=z)
        assert torch.equal(a.prev_sample, b.prev_sample)


@pytest.mark.parametrize(
    "spacing,steps,t,stride_prev,schedule_prev",
    [("linspace", 10, 999, 899, 888), ("trailing", 13, 999, 923, 922)],
)
def test_rules_differ_where_reference_says_diffusers_is_wrong(spacing, steps, t, stride_prev, schedule_prev):
    # docs/migration.md (diffusers defects): linspace S=10 visits 999 → 888 but the stride lands on 899;
    # trailing S=13 visits 999 → 922 but the stride lands on 923.
    stride, schedule = _pair(timestep_spacing=spacing, clip_sample=False)
    stride.set_timesteps(steps)
    schedule.set_timesteps(steps)
    assert int(schedule.timesteps[0]) == t and int(schedule.timesteps[1]) == schedule_prev
    assert stride.previous_timestep(t) == stride_prev
    assert schedule.previous_timestep(t) == schedule_prev
    x, m, _ = _noise((1, 3, 4, 4), torch.float32, 5)
    assert rel_l2(stride.step(m, t, x).prev_sample, schedule.step(m, t, x).prev_sample) > 1e-3


@pytest.mark.parametrize("spacing,steps", [("linspace", 10), ("trailing", 13), ("leading", 10), ("linspace", 37)])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_schedule_rule_lands_on_the_next_forward_marginal(spacing, steps, prediction_type, set_alpha_to_one):
    # Feed the exact model output for x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε: with η = 0 the step must return
    # √ᾱ_next·x0 + √(1−ᾱ_next)·ε where next is the next timestep the schedule visits (the final ᾱ
    # after the last). So every model call happens at the noise level it is told.
    config = dict(
        timestep_spacing=spacing, clip_sample=False, prediction_type=prediction_type, set_alpha_to_one=set_alpha_to_one
    )
    stride, schedule = _pair(**config)
    stride.set_timesteps(steps)
    schedule.set_timesteps(steps)
    alpha_bar = schedule.alpha_bar
    final = 1.0 if set_alpha_to_one else float(alpha_bar[0])
    x0, eps, _ = _noise((2, 3, 8, 8), torch.float64, 6)
    visited = schedule.timesteps.tolist()
    stride_misses = 0
    for i, t in enumerate(visited):
        a_t = alpha_bar[t]
        x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps
        model_output = {"epsilon": eps, "sample": x0, "v_prediction": a_t.sqrt() * eps - (1 - a_t).sqrt() * x0}[
            prediction_type
        ]
        a_next = alpha_bar[visited[i + 1]] if i + 1 < len(visited) else torch.tensor(final, dtype=torch.float64)
        marginal = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        got = schedule.step(model_output, t, x_t).prev_sample
        assert rel_l2(got, marginal) <= EXACT_RTOL[torch.float64], (t, rel_l2(got, marginal))
        stride_misses += rel_l2(stride.step(model_output, t, x_t).prev_sample, marginal) > 1e-6

    # The stride rule misses the next marginal wherever its successor has another ᾱ than the next
    # visited timestep's.
    def alpha_bar_of(prev):
        return final if prev < 0 else float(alpha_bar[prev])

    expected_misses = sum(
        alpha_bar_of(stride.previous_timestep(t)) != alpha_bar_of(schedule.previous_timestep(t)) for t in visited
    )
    assert stride_misses == expected_misses
    if spacing != "leading":
        assert stride_misses > 0
