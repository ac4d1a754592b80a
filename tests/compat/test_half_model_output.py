"""A half-precision model output with a float32 sample (a bf16 model in a float32 loop): ddim_sched's
deliberate choice is the sample's precision and dtype, as accurate as the float64 step on the same
(half-valued) model output allows. diffusers' own results are recorded, not asserted (docs/migration.md
gives the measured differences)."""

from __future__ import annotations

import diffusers
import pytest
import torch

from ddim_sched import DDIMInverseScheduler, DDIMParallelScheduler, DDIMScheduler, FlowMatchDDIMScheduler
from tests.tolerances import ORACLE_RTOL, rel_l2

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False)
CASES = {
    "ddim": (lambda: DDIMScheduler(**SD), lambda: diffusers.DDIMScheduler(**SD)),
    "ddim eta=1": (lambda: DDIMScheduler(**SD), None),
    "parallel": (lambda: DDIMParallelScheduler(**SD), None),
    "inverse": (lambda: DDIMInverseScheduler(**SD), None),
    "flow": (lambda: FlowMatchDDIMScheduler(shift=3.0), lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)),
}


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", list(CASES))
def test_the_result_has_the_samples_dtype_and_float32_accuracy(case, half, observe):
    make, make_theirs = CASES[case]
    scheduler = make()
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator)
    model_output = torch.randn(2, 4, 8, 8, generator=generator).to(half)
    kwargs = {"eta": 1.0, "variance_noise": torch.randn(2, 4, 8, 8, generator=generator)} if "eta" in case else {}
    for t in scheduler.timesteps[:: len(scheduler.timesteps) // 3]:
        prev = scheduler.step(model_output, t, x, **kwargs).prev_sample
        exact_kwargs = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        exact = scheduler.step(model_output.double(), t, x.double(), **exact_kwargs).prev_sample
        assert prev.dtype == torch.float32
        assert rel_l2(prev, exact) <= ORACLE_RTOL[torch.float32]
    if make_theirs is not None:
        theirs = make_theirs()
        theirs.set_timesteps(10)
        t = theirs.timesteps[3]
        mixed = theirs.step(model_output, t, x).prev_sample
        plain = theirs.step(model_output.float(), t, x).prev_sample if case == "ddim" else None
        gap = f", {rel_l2(mixed, plain):.1e} from its own float32 path" if plain is not None else ""
        observe(f"diffusers' {case} step, {half} model output, float32 sample: {mixed.dtype}{gap}")
