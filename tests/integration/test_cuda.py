"""On a CUDA device: a whole sampling loop never syncs the host, and can be captured in one CUDA
graph. Skipped without a GPU (CI has none; benchmarks/gpu.py runs the same checks with timings)."""

from __future__ import annotations

import pytest
import torch

from ddim_sched import DDIMScheduler
from tests.oracle import dummy_model
from tests.tolerances import PARITY_RTOL, rel_l2

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

STEPS = 50


def _loop(scheduler, x, timesteps, **step_kwargs):
    for t in timesteps:
        x = scheduler.step(dummy_model(x, t), t, x, **step_kwargs).prev_sample
    return x


def _cpu_reference(config, x, **step_kwargs):
    """The same loop on the CPU, in x's dtype (half inputs: float32 arithmetic, half storage)."""
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(STEPS)
    return _loop(scheduler, x.cpu(), scheduler.timesteps, **step_kwargs)


@pytest.mark.parametrize(
    "config",
    [
        dict(clip_sample=False),
        dict(thresholding=True, sample_max_value=1.5, prediction_type="v_prediction", timestep_spacing="trailing"),
        dict(clip_sample=True, prev_timestep_rule="schedule", timestep_spacing="linspace", set_alpha_to_one=False),
    ],
    ids=["plain", "threshold", "clip-schedule"],
)
def test_sampling_loop_never_syncs(config):
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(STEPS, device="cuda")
    x = 2.0 * torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)).cuda()
    scheduler.step(dummy_model(x, scheduler.timesteps[0]), scheduler.timesteps[0], x)  # builds the device tables
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = _loop(scheduler, x, scheduler.timesteps)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert rel_l2(out, _cpu_reference(config, x)) <= PARITY_RTOL[torch.float32]


def test_per_sample_stochastic_step_never_syncs():
    # [B] timesteps, [B] η and a CUDA generator: the continuous-batching call.
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(STEPS, device="cuda")
    x = torch.randn(4, 4, 16, 16, device="cuda")
    t = scheduler.timesteps[torch.tensor([0, 10, 20, 49], device="cuda")]
    eta = torch.tensor([0.0, 0.5, 1.0, 1.0], device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    scheduler.step(dummy_model(x, t), t, x, eta=eta, generator=generator)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(STEPS):
            x = scheduler.step(dummy_model(x, t), t, x, eta=eta, generator=generator, prev_timestep=t - 1).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(torch.isfinite(x).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sampling_loop_in_one_cuda_graph(dtype):
    config = dict(clip_sample=True, prediction_type="v_prediction")
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(STEPS, device="cuda")
    timesteps = scheduler.timesteps
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)).to("cuda", dtype)
    eager = _loop(scheduler, x, timesteps)  # also builds the device tables before capture

    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream, as CUDA graph capture requires
        _loop(scheduler, static_x, timesteps[:2])
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = _loop(scheduler, static_x, timesteps)
    graph.replay()
    torch.cuda.synchronize()
    assert static_out.dtype == dtype
    assert torch.equal(static_out, eager)
    # Replaying on new inputs copied into the static buffer reruns the whole loop.
    static_x.copy_(-x)
    graph.replay()
    assert torch.equal(static_out, _loop(scheduler, -x, timesteps))
    assert rel_l2(eager, _cpu_reference(config, x)) <= PARITY_RTOL[dtype]


def test_compiled_step_on_a_fresh_scheduler_equals_eager():
    """The first call under torch.compile builds the device tables while tracing (no pinned memory)."""
    config = dict(clip_sample=False, prediction_type="v_prediction")
    x = torch.randn(2, 4, 16, 16, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    eager, fresh = DDIMScheduler(**config), DDIMScheduler(**config)
    for scheduler in (eager, fresh):
        scheduler.set_timesteps(10, device="cuda")
    compiled = torch.compile(fresh.step, fullgraph=True)
    y_eager, y_compiled = x, x
    for t in eager.timesteps:
        y_eager = eager.step(dummy_model(y_eager, t), t, y_eager).prev_sample
        y_compiled = compiled(dummy_model(y_compiled, t), t, y_compiled).prev_sample
    assert rel_l2(y_compiled, y_eager) <= PARITY_RTOL[torch.float32]
