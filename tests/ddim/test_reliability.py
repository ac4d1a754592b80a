"""What users do that the happy path does not: autograd through every step, any memory layout, empty
batches, threads sharing a scheduler, schedules whose work must not grow with T or with new η values."""

from __future__ import annotations

import math
import random
import threading
import tracemalloc

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ddim_sched
from ddim_sched import DDIMInverseScheduler, DDIMScheduler
from tests.oracle import closed_form_step, dummy_model
from tests.tolerances import EXACT_RTOL, rel_l2

HYPOTHESIS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
CLIPS = {
    "none": dict(clip_sample=False),
    "clip": dict(clip_sample=True, clip_sample_range=1.5),
    "threshold": dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0),
}


def _inputs(shape, dtype=torch.float64, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn((3,) + tuple(shape), generator=g, dtype=torch.float64)).to(dtype).unbind(0)


def _expected(scheduler, m, x, t, eta, clip, noise):
    """The float64 closed form for one step of ``scheduler`` from timestep(s) t ([] or [B])."""
    t = torch.as_tensor(t)
    prev = scheduler.previous_timestep(t)
    alpha_bar = torch.cat([torch.tensor([scheduler.final_alpha_cumprod.double().item()]), scheduler.alpha_bar])
    return closed_form_step(
        m,
        x,
        alpha_bar[t + 1],
        alpha_bar[prev + 1],
        eta,
        scheduler.config.prediction_type,
        clip,
        noise=noise,
        clip_range=1.5,
        ratio=0.9,
        max_value=3.0,
    )


# ----------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("clip", list(CLIPS))
@pytest.mark.parametrize("timestep", ["int", "per-sample"])
def test_step_gradients_equal_finite_differences(prediction_type, clip, timestep):
    scheduler = DDIMScheduler(prediction_type=prediction_type, **CLIPS[clip])
    scheduler.set_timesteps(10)
    x, m, z = _inputs((2, 3, 4, 4), seed=1)
    t = 501 if timestep == "int" else torch.tensor([801, 101])
    eta = torch.tensor([0.3, 0.9], dtype=torch.float64, requires_grad=True)
    inputs = tuple(v.clone().requires_grad_() for v in (m, x, z))

    def step(m, x, z, eta):
        out = scheduler.step(m, t, x, eta=eta, variance_noise=z, use_clipped_model_output=clip != "none")
        return out.prev_sample, out.pred_original_sample

    assert torch.autograd.gradcheck(step, (*inputs, eta))


def test_large_inputs_that_require_grad_take_the_differentiable_path():
    # ≥ 2^15 elements with an int timestep took the fused out= path and failed under autograd.
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(20)
    x, m, _ = _inputs((2, 4, 64, 64), torch.float32)
    m = m.requires_grad_()
    prev = scheduler.step(m, 501, x).prev_sample
    prev.sum().backward()
    # x_prev is linear in m with the coefficient the fast path uses: the gradient is that coefficient.
    row = scheduler.coefficients(501)
    assert torch.allclose(m.grad, torch.full_like(m, row.prev_m), rtol=1e-6)
    with torch.no_grad():
        fast = scheduler.step(m, 501, x).prev_sample
    assert rel_l2(prev.detach(), fast) <= EXACT_RTOL[torch.float32]


@pytest.mark.parametrize("method", ["add_noise", "get_velocity"])
def test_forward_process_gradients(method):
    scheduler = DDIMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    x, e, _ = _inputs((3, 2, 4))
    t = torch.tensor([0, 500, 999])
    f = getattr(scheduler, method)
    assert torch.autograd.gradcheck(lambda a, b: f(a, b, t), (x.requires_grad_(), e.requires_grad_()))


def test_invert_gradients():
    scheduler = DDIMScheduler(clip_sample=False, prediction_type="v_prediction")
    scheduler.set_timesteps(4)
    weight = torch.tensor(0.7, dtype=torch.float64)

    def model_fn(x, t):
        return torch.tanh(weight * x) * (t / 1000)

    x0, _, _ = _inputs((2, 3))
    assert torch.autograd.gradcheck(
        lambda v: ddim_sched.invert(model_fn, v, scheduler, fixed_point_iterations=2), (x0.requires_grad_(),)
    )


def test_inverse_scheduler_step_is_differentiable():
    scheduler = DDIMInverseScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    x, m, _ = _inputs((2, 3))
    assert torch.autograd.gradcheck(
        lambda a, b: scheduler.step(a, 401, b).prev_sample, (m.requires_grad_(), x.requires_grad_())
    )


@pytest.mark.parametrize("cls", [DDIMScheduler, ddim_sched.FlowMatchDDIMScheduler])
@pytest.mark.parametrize("timestep", ["element", "per-frame", "half model output"])
def test_steps_under_inference_mode_leave_the_scheduler_usable_by_autograd(cls, timestep):
    """What a step caches while a pipeline runs under torch.inference_mode() must not be an inference
    tensor: a later step that autograd records (guidance by gradients) saves the cached coefficients."""
    scheduler = cls()
    scheduler.set_timesteps(10)
    x, m, _ = _inputs((1, 2, 3, 4, 4), torch.float32)
    t = (
        scheduler.timesteps[torch.tensor([1, 4, 7])].reshape(1, 1, 3, 1, 1)
        if timestep == "per-frame"
        else scheduler.timesteps[3]
    )
    inputs = (m.half(), x) if timestep == "half model output" else (m, x)

    def gradient(scheduler):
        sample = inputs[1].clone().requires_grad_()
        scheduler.step(inputs[0], t, sample).prev_sample.square().sum().backward()
        return sample.grad

    expected = gradient(scheduler)  # before any step under inference mode
    fresh = cls()
    fresh.set_timesteps(10)
    with torch.inference_mode():
        fresh.step(*inputs[:1], t, inputs[1])
        for name in ("betas", "alphas_cumprod"):
            getattr(fresh, name, None)
    torch.testing.assert_close(gradient(fresh), expected, rtol=0, atol=0)
    for name in ("betas", "alphas_cumprod"):
        if hasattr(fresh, name):
            assert not getattr(fresh, name).is_inference()


# ----------------------------------------------------------------------------- memory layouts


def _layout(tensor: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if kind == "contiguous":
        return tensor.contiguous()
    if kind == "transposed":
        return tensor.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == "permuted":
        order = list(range(tensor.dim()))[::-1]
        inverse = [order.index(d) for d in range(tensor.dim())]
        return tensor.permute(order).contiguous().permute(inverse)
    if kind == "channels_last" and tensor.dim() == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    if kind == "sliced":
        padded = torch.zeros(tensor.shape[:-1] + (tensor.shape[-1] * 2,), dtype=tensor.dtype)
        padded[..., ::2] = tensor
        return padded[..., ::2]
    if kind == "expanded":  # stride 0 along the batch: only for tensors whose samples are all equal
        return tensor[:1].expand_as(tensor)
    return tensor


@settings(max_examples=60, **HYPOTHESIS)
@given(
    ndim=st.integers(3, 5),
    sample_layout=st.sampled_from(["contiguous", "transposed", "permuted", "channels_last", "sliced", "expanded"]),
    output_layout=st.sampled_from(["contiguous", "transposed", "permuted", "sliced", "expanded"]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    timestep=st.sampled_from(["int", "0-d", "[B]", "numpy"]),
    eta=st.sampled_from([0.0, 0.8, "tensor"]),
    clip=st.sampled_from(list(CLIPS)),
    out=st.sampled_from([None, "new", "sample"]),
    seed=st.integers(0, 1000),
)
def test_any_layout_gives_the_contiguous_closed_form(
    ndim, sample_layout, output_layout, dtype, timestep, eta, clip, out, seed
):
    import numpy as np

    shape = (2, 3, 5, 4, 6)[:ndim]
    scheduler = DDIMScheduler(prediction_type="v_prediction", **CLIPS[clip])
    scheduler.set_timesteps(10)
    x, m, z = _inputs(shape, torch.float64, seed)
    if "expanded" in (sample_layout, output_layout):  # identical samples, so that stride 0 is the same values
        x, m, z = x[:1].expand_as(x).contiguous(), m[:1].expand_as(m).contiguous(), z[:1].expand_as(z).contiguous()
    t_values = [901, 501] if timestep == "[B]" else [501, 501]
    t = {"int": 501, "0-d": torch.tensor(501), "[B]": torch.tensor(t_values), "numpy": np.int32(501)}[timestep]
    eta_arg = torch.tensor([0.8, 0.3], dtype=torch.float64) if eta == "tensor" else eta
    eta_values = [0.8, 0.3] if eta == "tensor" else [eta, eta]
    x_in, m_in, z_in = (
        _layout(v.to(dtype), kind) for v, kind in ((x, sample_layout), (m, output_layout), (z, output_layout))
    )
    if out == "sample" and sample_layout == "expanded":
        out = "new"  # writing into a stride-0 tensor is refused (test_out_must_not_be_expanded)
    destination = {None: None, "new": torch.empty(shape, dtype=dtype), "sample": x_in}[out]
    expected = _expected(
        scheduler,
        m_in.double(),
        x_in.double(),
        torch.tensor(t_values),
        torch.tensor(eta_values, dtype=torch.float64),
        clip,
        z_in.double(),
    )
    got = scheduler.step(m_in, t, x_in, eta=eta_arg, variance_noise=z_in, out=destination)
    assert got.prev_sample.dtype == got.pred_original_sample.dtype == dtype
    if destination is not None:
        assert got.prev_sample is destination
    assert rel_l2(got.pred_original_sample, expected[1]) <= 2 * EXACT_RTOL[dtype]
    assert rel_l2(got.prev_sample, expected[0]) <= 2 * EXACT_RTOL[dtype]


def test_out_must_not_be_expanded():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    x = torch.zeros(1, 3).expand(4, 3)
    with pytest.raises(ValueError, match="out"):
        scheduler.step(torch.zeros(4, 3), 501, torch.zeros(4, 3), out=x)


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_outputs_keep_the_samples_layout(layout):
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    x, m, _ = _inputs((2, 4, 16, 8), torch.float32)
    x, m = _layout(x, layout), _layout(m, layout)
    for t in (501, torch.tensor([501, 901])):
        out = scheduler.step(m, t, x)
        assert out.prev_sample.stride() == x.stride() and out.pred_original_sample.stride() == x.stride()


# ----------------------------------------------------------------------------- empty batches


@pytest.mark.parametrize("shape", [(0, 4, 8, 8), (2, 0, 8, 8)])
@pytest.mark.parametrize("clip", list(CLIPS))
def test_empty_batches_give_empty_outputs(shape, clip):
    scheduler = DDIMScheduler(**CLIPS[clip])
    scheduler.set_timesteps(10)
    x = torch.empty(shape)
    for t in (501, torch.full((shape[0],), 501, dtype=torch.int64)):
        for eta in (0.0, 1.0):
            out = scheduler.step(x, t, x, eta=eta)
            assert out.prev_sample.shape == out.pred_original_sample.shape == shape
    assert scheduler.add_noise(x, x, torch.full((shape[0],), 3)).shape == shape


# ----------------------------------------------------------------------------- work per schedule


def test_first_step_at_huge_T_allocates_no_per_T_python_objects():
    """Set-up work is per schedule: at T = 10^6 neither set_timesteps nor the first steps (with a new η each)
    build per-timestep Python tables (the old design made T floats per η: ~700 MB at T = 10^6)."""
    scheduler = DDIMScheduler(num_train_timesteps=10**6, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    x = torch.randn(1, 4, 8, 8)
    tracemalloc.start()
    try:
        scheduler.set_timesteps(50)
        for i, t in enumerate(scheduler.timesteps[:5].tolist()):
            scheduler.step(x, t, x, eta=0.1 * i, variance_noise=x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak  # a per-T list of floats would be tens of MB


def test_linear_betas_at_huge_T_underflow_and_epsilon_is_refused_up_front():
    """Linear betas 1e-4..0.02 over T = 10^6 drive ᾱ below 1e-300 past t ≈ 70000: epsilon prediction's x̂0
    weight 1/√ᾱ cannot be represented there, so set_timesteps refuses such a schedule with the reason."""
    scheduler = DDIMScheduler(num_train_timesteps=10**6, clip_sample=False)
    with pytest.raises(ValueError, match="overflows float32"):
        scheduler.set_timesteps(50)
    v = DDIMScheduler(num_train_timesteps=10**6, clip_sample=False, prediction_type="v_prediction")
    v.set_timesteps(50)
    x = torch.randn(1, 4)
    assert torch.isfinite(v.step(x, int(v.timesteps[0]), x).prev_sample).all()


def test_coefficient_cache_stays_bounded_under_a_new_eta_every_step():
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(50)
    x = torch.randn(1, 4)
    from ddim_sched.common.cache import ROW_CACHE_SIZE

    for i in range(ROW_CACHE_SIZE + 500):
        scheduler.step(x, 501, x, eta=i / 10_000, variance_noise=x)
    assert len(scheduler._schedule._rows._items) <= ROW_CACHE_SIZE


# ----------------------------------------------------------------------------- threads


def test_threads_stepping_while_another_replans_never_see_a_stale_schedule():
    """One thread re-plans (S = 10 ↔ 20) while three step with cycling η: every result equals the step on
    one of the two schedules, and once re-planning stops at S = 20 every step is on S = 20."""
    config = dict(clip_sample=False, timestep_spacing="linspace")
    shared = DDIMScheduler(**config)
    shared.set_timesteps(10)
    references = {}
    for steps in (10, 20):
        references[steps] = DDIMScheduler(**config)
        references[steps].set_timesteps(steps)
    x, m, z = _inputs((2, 3), torch.float64)
    etas = [0.0, 0.25, 0.5, 1.0]
    t = 666  # not visited by either schedule: lands at t − 99 (S = 10) or t − 49 (S = 20)
    expected = {
        (steps, eta): references[steps].step(m, t, x, eta=eta, variance_noise=z).prev_sample
        for steps in (10, 20)
        for eta in etas
    }
    stop, failures = threading.Event(), []

    def stepper(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            eta = rng.choice(etas)
            got = shared.step(m, t, x, eta=eta, variance_noise=z).prev_sample
            if not any(torch.equal(got, expected[(s, eta)]) for s in (10, 20)):
                failures.append((eta, got))

    threads = [threading.Thread(target=stepper, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for i in range(200):
        shared.set_timesteps(20 if i % 2 else 10)
    shared.set_timesteps(20)
    stop.set()
    for thread in threads:
        thread.join()
    assert not failures
    for eta in etas:  # after the last re-plan: only the new schedule, whatever the old caches held
        assert torch.equal(shared.step(m, t, x, eta=eta, variance_noise=z).prev_sample, expected[(20, eta)])


def test_many_threads_share_one_scheduler():
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(50)
    x, m, z = _inputs((2, 3), torch.float64)
    errors = []

    def work(seed):
        try:
            for i in range(200):
                eta = ((seed + i) % 11) / 10
                t = int(scheduler.timesteps[(seed * 7 + i) % 50])
                out = scheduler.step(m, t, x, eta=eta, variance_noise=z)
                expected = _expected(scheduler, m, x, t, eta, "none", z)
                assert rel_l2(out.prev_sample, expected[0]) <= EXACT_RTOL[torch.float64]
        except Exception as err:  # noqa: BLE001 (reported to the main thread)
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:1]


# ----------------------------------------------------------------------------- zero SNR per sample


def test_zero_snr_epsilon_raises_for_every_host_timestep_type():
    import numpy as np

    scheduler = DDIMScheduler(rescale_betas_zero_snr=True, clip_sample=False)
    scheduler.set_timesteps(10)  # leading: does not visit 999
    x = torch.zeros(2, 3)
    for t in (999, np.int64(999), torch.tensor(999), torch.tensor([999, 500]), np.array([500, 999])):
        with pytest.raises(ValueError, match="alpha_bar is 0"):
            scheduler.step(x, t, x)
    assert torch.isfinite(scheduler.step(x, torch.tensor([998, 500]), x).prev_sample).all()
    with pytest.raises(ValueError, match="alpha_bar is 0"):
        DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing").set_timesteps(10)


# ----------------------------------------------------------------------------- timestep types


@pytest.mark.parametrize(
    "timestep",
    [
        501,
        "np.int32",
        "np.int64",
        "np.uint16",
        "np.uint64",
        "0-d array",
        "0-d int8 tensor",
        "0-d int16 tensor",
        "0-d int32 tensor",
        "0-d uint8 tensor",
        "[1] int32 tensor",
        "0-d uint64 tensor",
    ],
)
def test_every_integer_timestep_type_steps_alike(timestep):
    import numpy as np

    values = {
        "np.int32": np.int32(201),
        "np.int64": np.int64(201),
        "np.uint16": np.uint16(201),
        "np.uint64": np.uint64(201),
        "0-d array": np.array(201),
        "0-d int8 tensor": torch.tensor(101, dtype=torch.int8),
        "0-d int16 tensor": torch.tensor(201, dtype=torch.int16),
        "0-d int32 tensor": torch.tensor(201, dtype=torch.int32),
        "0-d uint8 tensor": torch.tensor(201, dtype=torch.uint8),
        "[1] int32 tensor": torch.tensor([201], dtype=torch.int32),
    }
    if timestep == "0-d uint64 tensor":
        if not hasattr(torch, "uint64"):
            pytest.skip("this torch has no uint64 tensors")
        values[timestep] = torch.tensor(201, dtype=torch.uint64)
    value = values.get(timestep, timestep)
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    x, m, _ = _inputs((2, 3), torch.float32)
    as_int = int(np.asarray(value.tolist() if isinstance(value, torch.Tensor) else value).reshape(-1)[0])
    assert torch.equal(scheduler.step(m, value, x).prev_sample, scheduler.step(m, as_int, x).prev_sample)
    assert torch.equal(scheduler.add_noise(x, m, value), scheduler.add_noise(x, m, as_int))


def test_out_of_range_unsigned_timesteps_are_reported_as_given():
    import numpy as np

    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    x = torch.zeros(1, 2)
    huge = 2**64 - 1
    with pytest.raises(ValueError, match=str(huge)):
        scheduler.step(x, np.uint64(huge), x)
    with pytest.raises(ValueError, match=str(huge)):
        scheduler.set_timesteps(timesteps=np.array([huge, 5], dtype=np.uint64))
    if hasattr(torch, "uint64"):
        with pytest.raises(ValueError, match=str(huge)):
            scheduler.step(x, torch.tensor([huge], dtype=torch.uint64), x)


def test_per_frame_timesteps_equal_stepping_each_frame_alone():
    scheduler = DDIMScheduler(clip_sample=False, prediction_type="v_prediction")
    scheduler.set_timesteps(20)
    B, C, F = 2, 3, 5
    x, m, z = _inputs((B, C, F, 4, 4), torch.float32)
    t = scheduler.timesteps[torch.arange(B * F).reshape(B, 1, F, 1, 1) % 20]
    eta = torch.linspace(0, 1, B * F).reshape(B, 1, F, 1, 1)
    out = scheduler.step(m, t, x, eta=eta, variance_noise=z)
    noisy = scheduler.add_noise(x, z, t)
    for b in range(B):
        for f in range(F):
            alone = scheduler.step(
                m[b : b + 1, :, f],
                int(t[b, 0, f]),
                x[b : b + 1, :, f],
                eta=float(eta[b, 0, f]),
                variance_noise=z[b : b + 1, :, f],
            )
            assert rel_l2(out.prev_sample[b : b + 1, :, f], alone.prev_sample) <= EXACT_RTOL[torch.float32]
            assert (
                rel_l2(
                    noisy[b : b + 1, :, f], scheduler.add_noise(x[b : b + 1, :, f], z[b : b + 1, :, f], int(t[b, 0, f]))
                )
                <= 1e-7
            )
    with pytest.raises(ValueError, match="broadcasts over the sample's leading dimensions"):
        scheduler.step(m, torch.zeros(B, F, dtype=torch.int64), x)


def _frame_by_frame(scheduler, m, t, x, eta=0.0, noise=None):
    """One [1, C, F, H, W] step with per-frame timesteps t [1, 1, F, 1, 1], as F steps of one frame each."""
    frames = []
    for f in range(x.shape[2]):
        z = None if noise is None else noise[:, :, f]
        frames.append(scheduler.step(m[:, :, f], int(t[0, 0, f]), x[:, :, f], eta=eta, variance_noise=z).prev_sample)
    return torch.stack(frames, dim=2)


def test_a_repeated_pattern_of_frame_timesteps_steps_like_a_new_one():
    """A FIFO queue passes one pattern of per-frame timesteps every call, and the schedule keeps the
    coefficients of a pattern it has seen by value. So whatever changes between calls must still change the
    step: values edited in place, η, the sample's dtype, a new schedule; and bad values and shapes are
    refused every time, not only the first."""
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(20)
    x, m, z = _inputs((1, 2, 4, 3, 3), torch.float32)
    t = scheduler.timesteps[torch.tensor([0, 5, 10, 15])].reshape(1, 1, 4, 1, 1).clone()
    tolerance = EXACT_RTOL[torch.float32]
    for _ in range(3):  # the first call computes the pattern's coefficients, the others reuse them
        assert rel_l2(scheduler.step(m, t, x).prev_sample, _frame_by_frame(scheduler, m, t, x)) <= tolerance
    t[0, 0, 1] = scheduler.timesteps[7]  # the same tensor, new values
    assert rel_l2(scheduler.step(m, t, x).prev_sample, _frame_by_frame(scheduler, m, t, x)) <= tolerance
    noisy = scheduler.step(m, t, x, eta=0.5, variance_noise=z).prev_sample
    assert rel_l2(noisy, _frame_by_frame(scheduler, m, t, x, 0.5, z)) <= tolerance
    exact = scheduler.step(m.double(), t, x.double()).prev_sample
    assert exact.dtype == torch.float64
    assert rel_l2(exact, _frame_by_frame(scheduler, m.double(), t, x.double())) <= EXACT_RTOL[torch.float64]
    t.copy_(torch.tensor([900, 800, 500, 200]).reshape(1, 1, 4, 1, 1))
    before = scheduler.step(m, t, x).prev_sample  # each lands 50 below
    scheduler.set_timesteps(10)  # 900, 800, ..., 0: now each lands 100 below
    after = scheduler.step(m, t, x).prev_sample
    assert rel_l2(after, _frame_by_frame(scheduler, m, t, x)) <= tolerance
    assert rel_l2(after, before) > 1e-3
    for _ in range(2):
        with pytest.raises(ValueError, match="1000"):
            scheduler.step(m, torch.tensor([900, 800, 1000, 200]).reshape(1, 1, 4, 1, 1), x)
        with pytest.raises(ValueError, match="broadcasts over the sample's leading dimensions"):
            scheduler.step(m[:, :, :3], t, x[:, :, :3])


def test_per_frame_timestep_patterns_are_kept_in_bounded_memory():
    from ddim_sched.common.cache import PATTERN_CACHE_SIZE

    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(50)
    x, m, _ = _inputs((1, 1, 4, 2, 2), torch.float32)
    for start in range(3 * PATTERN_CACHE_SIZE):
        t = scheduler.timesteps[torch.arange(start, start + 4) % 50].reshape(1, 1, 4, 1, 1)
        scheduler.step(m, t, x)
    assert len(scheduler._schedule.patterns._items) <= PATTERN_CACHE_SIZE


@pytest.mark.parametrize("cls", [DDIMScheduler, DDIMInverseScheduler, ddim_sched.DDIMParallelScheduler])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_loop_over_the_schedules_own_timesteps_never_reads_them(cls, dtype):
    """``for t in scheduler.timesteps`` yields 0-d views of the schedule: on an accelerator their values are
    known from where they live, so the step reads nothing back. Timesteps on the meta device hold no values
    at all: any read would fail."""
    scheduler = cls(clip_sample=False)
    scheduler.set_timesteps(5)
    x = torch.randn(2, 3, 4).to(dtype)
    expected = [scheduler.step(0.1 * x, int(t), x).prev_sample for t in scheduler.timesteps]
    scheduler.set_timesteps(5, device="meta")
    got = [scheduler.step(0.1 * x, t, x).prev_sample for t in scheduler.timesteps]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("cls", [DDIMScheduler, ddim_sched.FlowMatchDDIMScheduler])
@pytest.mark.parametrize("edit", ["numpy view", "data", "in place"])
def test_a_timestep_is_taken_by_value(cls, edit):
    """Changing an element of ``scheduler.timesteps`` changes the step taken from it, however it is changed
    (a numpy view and ``.data`` bypass the tensor's version counter)."""
    scheduler = cls(clip_sample=False) if cls is DDIMScheduler else cls(shift=3.0)  # unequal flow steps
    scheduler.set_timesteps(10)
    x = torch.randn(2, 3, 4)
    first, second = scheduler.timesteps[2].item(), scheduler.timesteps[3].item()
    scheduler.step(0.1 * x, scheduler.timesteps[2], x)  # warm the caches with the old value
    if edit == "numpy view":
        scheduler.timesteps.numpy()[2] = second
    elif edit == "data":
        scheduler.timesteps.data[2] = second
    else:
        scheduler.timesteps[2] = second
    changed = scheduler.step(0.1 * x, scheduler.timesteps[2], x).prev_sample
    assert torch.equal(changed, scheduler.step(0.1 * x, second, x).prev_sample)
    assert not torch.equal(changed, scheduler.step(0.1 * x, first, x).prev_sample)


def test_dummy_model_steps_under_any_timestep_shape():
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    x = torch.randn(2, 3, 4)
    t = torch.tensor([901, 101])
    assert scheduler.step(dummy_model(x, t), t, x).prev_sample.shape == x.shape


def test_inputs_without_host_weights_reuse_one_device_row_per_schedule(monkeypatch):
    """Inputs the engine cannot apply host floats to (here a float16 model output with a float32 sample;
    on an accelerator, half precision) get the step's coefficients as tensors: built once per schedule and
    timestep, then reused, so a loop makes no host-to-device copy per step (on CUDA each would go through
    pinned memory, which cost ~100 µs per step when it was made every step)."""
    import ddim_sched.core._fused as engine

    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(5)
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    model_output = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)).half()
    expected = [scheduler.step(model_output.float(), t, sample).prev_sample for t in scheduler.timesteps]

    def per_step_copy(*args, **kwargs):
        raise AssertionError("host weights were copied to a tensor row inside the step")

    monkeypatch.setattr(engine, "_device_row", per_step_copy)
    for _ in range(2):  # the second pass reads the rows the first one built
        for t, want in zip(scheduler.timesteps, expected, strict=True):
            got = scheduler.step(model_output, t, sample).prev_sample
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


class _DispatchedOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records (op name, output shape, output dtype) for each op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if isinstance(result, torch.Tensor):
            self.ops.append((func.__name__, tuple(result.shape), result.dtype))
        return result


# Ops that allocate or view memory without a pass over it.
_NO_PASS = (
    "empty",
    "empty_like",
    "view",
    "_unsafe_view",
    "unbind",
    "select",
    "slice",
    "reshape",
    "expand",
    "as_strided",
)


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, ddim_sched.FlowMatchDDIMScheduler])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("shape", [(1, 4, 64, 64), (4, 4, 64, 64)])  # below and above the fused size
def test_half_precision_on_an_accelerator_steps_without_conversions_or_copies(scheduler_class, dtype, eta, shape):
    """On an accelerator a half-precision step applies its weights as the schedule's cached device row: it
    makes no copy (no host-to-device transfer of weights, no float32 conversion of the inputs or outputs)
    and no more passes over the sample's memory than a float32 step on the same device, reading the half
    inputs directly. Issue 11 measured conversions around float32 arithmetic at 108 µs against 39 µs for
    a float32 step on an H100. The meta device stands in for the accelerator: the step takes the same
    branches for any device that is not the CPU, and dispatches the same ops."""

    def dispatched(dtype):
        scheduler = scheduler_class() if scheduler_class is not DDIMScheduler else DDIMScheduler(clip_sample=False)
        scheduler.set_timesteps(10)
        x, m, z = (torch.empty(shape, dtype=dtype, device="meta") for _ in range(3))
        noise = z if eta > 0 else None
        t = scheduler.timesteps[3]

        def step():
            if scheduler_class is not DDIMScheduler:
                scheduler._step_index = None  # every call the same step: the flow scheduler counts its steps
            return scheduler.step(m, t, x, eta=eta, variance_noise=noise)

        step()  # builds and caches the device row
        with _DispatchedOps() as ops:
            out = step()
        assert out.prev_sample.dtype == dtype and out.prev_sample.shape == shape
        assert out.pred_original_sample.dtype == dtype and out.pred_original_sample.shape == shape
        numel = math.prod(shape)
        passes = [op for op in ops.ops if math.prod(op[1]) >= numel and op[0].split(".")[0] not in _NO_PASS]
        return ops.ops, passes

    ops, passes = dispatched(dtype)
    assert [op for op in ops if "copy" in op[0] or op[0].startswith("to")] == []
    assert 0 < len(passes) <= len(dispatched(torch.float32)[1]), passes
