"""step() under torch.compile(fullgraph=True) on the CPU: a graph break anywhere (an .item(), a
.tolist(), a Python branch on a tensor value) fails the compile, so these tests show that the hot
path never reads a tensor value on the host. The sampling loop compiles with inductor (generated
C++: what users get); the per-sample call with the "aot_eager" backend, which traces the same
graph without code generation and keeps the suite fast. Deselect locally with ``-k "not compile"``;
CI runs them.

Compiling is documented use, so it must not warn: the no-warning tests trace with "aot_eager" (dynamo's
warnings come from tracing, whatever the backend; inductor's first compile in a process also emits
torch's own deprecation warnings, which are not the library's)."""

from __future__ import annotations

import warnings

import torch

from ddim_sched import DDIMScheduler, sample
from tests.oracle import dummy_model
from tests.tolerances import EXACT_RTOL, rel_l2


def test_compiled_sampling_loop_equals_eager():
    scheduler = DDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing")
    scheduler.set_timesteps(4)
    timesteps = scheduler.timesteps  # iterated as 0-d tensors, as pipelines do

    def sample(x: torch.Tensor) -> torch.Tensor:
        for t in timesteps:
            x = scheduler.step(dummy_model(x, t), t, x).prev_sample
        return x

    x = 2.0 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(sample, fullgraph=True)(x)
    eager = sample(x)
    assert rel_l2(compiled, eager) <= EXACT_RTOL[torch.float32]


def test_compiled_per_sample_step_equals_eager():
    # Per-sample timesteps, η and successors, with noise and dynamic thresholding: the
    # continuous-batching call.
    scheduler = DDIMScheduler(thresholding=True, sample_max_value=1.5, set_alpha_to_one=False)
    scheduler.set_timesteps(10)
    step = torch.compile(scheduler.step, fullgraph=True, backend="aot_eager")
    g = torch.Generator().manual_seed(1)
    x, m, z = torch.randn(3, 4, 3, 8, 8, generator=g).unbind(0)
    t = torch.tensor([900, 500, 100, 0])
    eta = torch.tensor([0.0, 0.5, 1.0, 1.0])
    for prev in (None, torch.tensor([800, 0, -1, -1])):
        compiled = step(m, t, x, eta=eta, variance_noise=z, prev_timestep=prev)
        eager = scheduler.step(m, t, x, eta=eta, variance_noise=z, prev_timestep=prev)
        assert rel_l2(compiled.prev_sample, eager.prev_sample) <= EXACT_RTOL[torch.float32]
        assert rel_l2(compiled.pred_original_sample, eager.pred_original_sample) <= EXACT_RTOL[torch.float32]


def compile_warnings(fn, *args):
    """Every warning raised while ``torch.compile(fn, fullgraph=True)`` traces and runs on ``args``.

    Dynamo's caches are reset first, so the trace happens here and not in an earlier test; torch's
    warn-once warnings are made to warn every time."""
    torch._dynamo.reset()
    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.compile(fn, fullgraph=True, backend="aot_eager")(*args)
    finally:
        torch.set_warn_always(warn_always)
    return [f"{w.category.__name__}: {w.message}" for w in caught]


def test_compiling_a_step_and_a_sampling_loop_raises_no_warning():
    scheduler = DDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing")
    scheduler.set_timesteps(3)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = scheduler.timesteps[0]

    def step(x: torch.Tensor) -> torch.Tensor:
        return scheduler.step(dummy_model(x, t), t, x, eta=0.5, variance_noise=x).prev_sample

    def loop(x: torch.Tensor) -> torch.Tensor:
        for t in scheduler.timesteps:
            x = scheduler.step(dummy_model(x, t), t, x).prev_sample
        return x

    assert compile_warnings(step, x) == []
    assert compile_warnings(loop, x) == []
    assert compile_warnings(lambda x: sample(dummy_model, x, scheduler), x) == []
