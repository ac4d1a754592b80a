"""The coefficient route every scheduler shares (common/step_plan.py): every timestep type and shape, by value;
per-frame patterns; caches bounded and safe for threads; work per schedule, not per T."""

from __future__ import annotations

import random
import threading
import tracemalloc

import pytest
import torch

import ddim_sched
from ddim_sched import DDIMInverseScheduler, DDIMScheduler
from tests.oracle import dummy_model, expected_step, sample_inputs
from tests.tolerances import EXACT_RTOL, rel_l2

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
    x, m, z = sample_inputs((2, 3), torch.float64)
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
    x, m, z = sample_inputs((2, 3), torch.float64)
    errors = []

    def work(seed):
        try:
            for i in range(200):
                eta = ((seed + i) % 11) / 10
                t = int(scheduler.timesteps[(seed * 7 + i) % 50])
                out = scheduler.step(m, t, x, eta=eta, variance_noise=z)
                expected = expected_step(scheduler, m, x, t, eta, "none", z)
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
    x, m, _ = sample_inputs((2, 3), torch.float32)
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
    x, m, z = sample_inputs((B, C, F, 4, 4), torch.float32)
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
    x, m, z = sample_inputs((1, 2, 4, 3, 3), torch.float32)
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
    x, m, _ = sample_inputs((1, 1, 4, 2, 2), torch.float32)
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
