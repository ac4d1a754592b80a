"""A half-precision model in a float32 loop: how far each scheduler's step lands from the exact step.

A bfloat16 model output with a float32 sample (diffusers' layerwise casting computes in bf16; pipelines keep
latents in float32). For every step of a schedule, the largest absolute difference between the step's result
and the same step on the same (bf16-valued) model output computed exactly: diffusers' against its own float32
path (upcast model output), ddim_sched's against its float64 path. docs/migration.md quotes the output.

    PYTHONPATH=src python benchmarks/half_model_output.py
"""

from __future__ import annotations

import diffusers
import torch

import ddim_sched

SD15 = dict(
    beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False,
    steps_offset=1,
)  # fmt: skip


def worst(scheduler, model_output, x, exact_dtype, fresh_index=False):
    """(result dtype, largest |step(half output) − step(output in exact_dtype)| over the schedule)."""
    largest, dtype = 0.0, None
    for t in scheduler.timesteps:
        if fresh_index:  # diffusers' flow scheduler counts steps: look each timestep up anew
            scheduler._step_index = None
        half = scheduler.step(model_output, t, x).prev_sample
        if fresh_index:
            scheduler._step_index = None
        exact = scheduler.step(model_output.to(exact_dtype), t, x.to(exact_dtype)).prev_sample
        largest, dtype = max(largest, (half.double() - exact.double()).abs().max().item()), half.dtype
    return dtype, largest


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 64, 64, generator=generator)
    model_output = torch.randn(1, 4, 64, 64, generator=generator).to(torch.bfloat16)
    cases = {
        "DDIM (SD 1.5 config, 50 steps)": (
            lambda: diffusers.DDIMScheduler(**SD15), lambda: ddim_sched.DDIMScheduler(**SD15), 50,
        ),
        "flow (shift 3, 28 steps)": (
            lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
            lambda: ddim_sched.FlowMatchDDIMScheduler(shift=3.0),
            28,
        ),
    }  # fmt: skip
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}")
    for name, (theirs, ours, steps) in cases.items():
        reference, candidate = theirs(), ours()
        for scheduler in (reference, candidate):
            scheduler.set_timesteps(steps)
        flow = "flow" in name
        their_dtype, their_error = worst(reference, model_output, x, torch.float32, fresh_index=flow)
        our_dtype, our_error = worst(candidate, model_output, x, torch.float64)
        print(f"{name}: diffusers {their_dtype}, {their_error:.2g} from its float32 path; "
              f"ddim_sched {our_dtype}, {our_error:.2g} from float64")  # fmt: skip


if __name__ == "__main__":
    main()
