"""CPU benchmark: diffusers' DDIMScheduler.step against ddim_sched's, same inputs, same process.

Run from the repository root:

    PYTHONPATH=src python benchmarks/cpu.py            # full table (a few minutes on 2 cores)
    PYTHONPATH=src python benchmarks/cpu.py --quick    # fewer rounds, fp32 only
    PYTHONPATH=src python benchmarks/cpu.py --compile  # add the opt-in torch.compile row
    PYTHONPATH=src python benchmarks/cpu.py --flow     # only the flow-matching rows

Prints a Markdown table: per case the best-round time per call of each, the ratio ddim_sched /
diffusers, the ratio to the memory "floor" (one fused read-2-write-1 op over the same tensors,
torch.add(x, m, out=buf), scaled to the 4 passes a step needs: × 4/3), and the largest relative L2
difference between the two libraries' outputs; then the step-speed targets of docs/performance.md, met or missed.
The flow-matching rows time FlowMatchDDIMScheduler against diffusers' FlowMatchEulerDiscreteScheduler.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CLIP_MODES, LARGE, SD_CONFIG, SMALL, Timer, fmt_us, inputs, machine, schedulers  # noqa: E402


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def floor(shape, dtype, timer: Timer) -> float:
    """Time of one fused read-2-write-1 pass over the tensors, × 4/3 (a step's 4 passes)."""
    x, m, _ = inputs(shape, dtype)
    buf = torch.empty_like(x)
    timer.run({"floor": lambda: torch.add(x, m, out=buf)})
    return timer.best("floor") * 4 / 3


def step_case(shape, dtype, eta, clip, rounds):
    """(diffusers seconds, ddim_sched seconds, max relative L2 difference) for one step."""
    theirs, ours = schedulers(clip)
    t = int(theirs.timesteps[25])
    x, m, z = inputs(shape, dtype)
    noise = z if eta > 0 else None
    expected = theirs.step(m, t, x, eta=eta, variance_noise=noise)
    got = ours.step(m, t, x, eta=eta, variance_noise=noise)
    diff = max(
        rel_l2(got.prev_sample, expected.prev_sample), rel_l2(got.pred_original_sample, expected.pred_original_sample)
    )
    timer = Timer(rounds=rounds)
    timer.run(
        {
            "diffusers": lambda: theirs.step(m, t, x, eta=eta, variance_noise=noise),
            "ddim_sched": lambda: ours.step(m, t, x, eta=eta, variance_noise=noise),
        }
    )
    return timer.best("diffusers"), timer.best("ddim_sched"), diff


FLOW_SHAPES = ((1, 16, 64, 64), (16, 16, 128, 128))
FLOW_HEADER = (
    "| flow latents | diffusers µs | ddim_sched µs (x_s) | ratio | ddim_sched µs (x_s, x̂0) | ratio | max rel. L2 diff |"
)


def flow_case(shape, rounds):
    """(diffusers s, ddim_sched s for x_s alone, ddim_sched s for x_s and x̂0, max relative L2 difference):
    FlowMatchDDIMScheduler (η = 0) against FlowMatchEulerDiscreteScheduler, SD3's shift 3, 50 steps, the
    26th timestep, the same fp32 inputs. x_s alone is the pipelines' call (return_dict=False, what diffusers
    returns); the default output object also carries x̂0."""
    import diffusers

    import ddim_sched

    theirs = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours = ddim_sched.FlowMatchDDIMScheduler(shift=3.0)
    theirs.set_timesteps(50)
    ours.set_timesteps(50)
    theirs.set_begin_index(25)
    t = ours.timesteps[25]
    x, m, _ = inputs(shape, torch.float32)

    def reference():
        theirs._step_index = None  # diffusers steps by a counter: start each call at index 25
        return theirs.step(m, theirs.timesteps[25], x, return_dict=False)[0]

    prev = ours.step(m, t, x, return_dict=False)[0]
    diff = max(rel_l2(prev, reference()), rel_l2(ours.step(m, t, x).prev_sample, reference()))
    timer = Timer(rounds=rounds)
    timer.run(
        {
            "diffusers": reference,
            "prev": lambda: ours.step(m, t, x, return_dict=False),
            "both": lambda: ours.step(m, t, x),
        }
    )
    return timer.best("diffusers"), timer.best("prev"), timer.best("both"), diff


def per_frame_row(scheduler, t_scalar, rounds: int, name: str) -> tuple[float, float]:
    """Print one call over video latents [1, 4, 16, 64, 64] fp32 with 16 frames at 16 timesteps (the same
    pattern every call, as a FIFO queue; a new one every call) against one scalar timestep; return the
    first two times."""
    video = (1, 4, 16, 64, 64)
    x, m, _ = inputs(video, torch.float32)
    count = len(scheduler.timesteps)
    pattern = scheduler.timesteps[torch.arange(16) * (count // 16)].reshape(1, 1, 16, 1, 1)
    g = torch.Generator().manual_seed(0)
    patterns = [
        scheduler.timesteps[torch.randperm(count, generator=g)[:16]].reshape(1, 1, 16, 1, 1) for _ in range(200)
    ]
    counter = iter(range(10**9))
    timer = Timer(rounds=rounds)
    timer.run(
        {
            "per_frame": lambda: scheduler.step(m, pattern, x),
            "new_pattern": lambda: scheduler.step(m, patterns[next(counter) % len(patterns)], x),
            "scalar": lambda: scheduler.step(m, t_scalar, x),
        }
    )
    per_frame, cold, scalar = timer.best("per_frame"), timer.best("new_pattern"), timer.best("scalar")
    print(
        f"\nPer-frame timesteps, {name}, {'×'.join(map(str, video))} fp32, 16 frames at 16 timesteps in one call: "
        f"same pattern every call {fmt_us(per_frame)} µs, a new pattern every call {fmt_us(cold)} µs; "
        f"one scalar timestep {fmt_us(scalar)} µs; ratios {per_frame / scalar:.2f} and {cold / scalar:.2f}"
    )
    return per_frame, scalar


def device_row_case(rounds: int) -> None:
    """The path half precision takes on an accelerator: weights as the schedule's cached tensor row, applied
    by ops that read the half inputs directly. On an accelerator eager steps are bound by host work (per-op
    dispatch and Python), which the CPU shows on 1-element latents. Two ways to reach the path here: a float16
    model output with a float32 sample (the CPU takes the row for it too), and float16 inputs sent down the
    accelerator's branch (the CPU's own choice for them, converting once to float32, patched out). Ratios are
    to the float32 step (host floats) on the same latents."""
    from unittest import mock

    import ddim_sched.common.step_plan as plan_module
    import ddim_sched.core._fused as engine

    def accelerator_choice(model_output, sample):
        return model_output.dtype == sample.dtype and sample.dtype in (torch.float32, torch.float64)

    _, ours = schedulers("off")
    t = int(ours.timesteps[25])
    print("\n| tensor-row step | latents | fp32 step µs | tensor-row step µs | ratio |\n|---|---|---|---|---|")
    for shape in ((1, 1, 1, 1), SMALL):
        x, m, _ = inputs(shape, torch.float32)
        x16, m16 = x.half(), m.half()
        timer = Timer(rounds=rounds)
        with (
            mock.patch.object(engine, "takes_host_weights", accelerator_choice),
            mock.patch.object(plan_module, "takes_host_weights", accelerator_choice),
        ):
            timer.run({"fp32": lambda: ours.step(m, t, x), "forced": lambda: ours.step(m16, t, x16)})
        timer.run({"mixed": lambda: ours.step(m16, t, x)})
        fp32 = timer.best("fp32")
        for name, label in (("mixed", "fp16 model output, fp32 sample"), ("forced", "fp16, the accelerator's branch")):
            row = timer.best(name)
            print(f"| {label} | {'×'.join(map(str, shape))} | {fmt_us(fp32)} | {fmt_us(row)} | {row / fp32:.2f} |")


def flow_rows(rounds: int) -> list[tuple[str, float, bool]]:
    """Print the flow-matching table and per-frame row; return the targets (name, measured ratio, met)."""
    print("\n" + FLOW_HEADER + "\n|---|---|---|---|---|---|---|")
    targets = []
    for shape in FLOW_SHAPES:
        a, b, c, diff = flow_case(shape, rounds)
        name = "×".join(map(str, shape))
        row = f"| {name} | {fmt_us(a)} | {fmt_us(b)} | {b / a:.3f} | {fmt_us(c)} | {c / a:.3f} | {diff:.1e} |"
        print(row, flush=True)
        targets.append((f"flow {name} fp32 η=0, pipelines' call: <= 1 × diffusers", b / a, b / a <= 1))
    import ddim_sched

    flow = ddim_sched.FlowMatchDDIMScheduler(shift=3.0)
    flow.set_timesteps(50)
    per_frame, scalar = per_frame_row(flow, flow.timesteps[25], rounds, "FlowMatchDDIMScheduler")
    name = "flow: 16 frames at 16 timesteps <= 1.5 × one scalar call"
    targets.append((name, per_frame / scalar, per_frame / scalar <= 1.5))
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, float32 only")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(step) on the large latents")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--flow", action="store_true", help="only the flow-matching rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = 3 if args.quick else 7
    if args.flow:
        print(f"Machine: {machine()}")
        flow_targets = flow_rows(rounds)
        print("\n| target | measured | met |\n|---|---|---|")
        for name, value, ok in flow_targets:
            print(f"| {name} | {value:.3f} | {'yes' if ok else 'NO'} |")
        return
    dtypes = [torch.float32] if args.quick else [torch.float32, torch.bfloat16]

    print(f"Machine: {machine()}\n")
    floors = {(s, d): floor(s, d, Timer(rounds=rounds)) for s in (SMALL, LARGE) for d in dtypes}
    results = {}
    print(
        "| latents | dtype | η | clip | diffusers µs | ddim_sched µs | ddim_sched / diffusers | / floor "
        "| max rel. L2 diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in (SMALL, LARGE):
        for dtype in dtypes:
            for eta in (0.0, 1.0):
                for clip in ("off", "clip", "threshold"):
                    theirs, ours, diff = step_case(shape, dtype, eta, clip, rounds)
                    results[(shape, dtype, eta, clip)] = (theirs, ours, diff)
                    name = "×".join(map(str, shape))
                    print(
                        f"| {name} | {str(dtype)[6:]} | {eta:g} | {clip} | {fmt_us(theirs)} | {fmt_us(ours)} | "
                        f"{ours / theirs:.3f} | {ours / floors[(shape, dtype)]:.2f} | {diff:.1e} |",
                        flush=True,
                    )

    # add_noise (per-sample timesteps), float32.
    print("\n| add_noise latents | diffusers µs | ddim_sched µs | ratio | / floor (3 passes: × 1) |")
    print("|---|---|---|---|---|")
    for shape in (SMALL, LARGE):
        theirs, ours = schedulers("off")
        x, _, z = inputs(shape, torch.float32)
        t = theirs.timesteps[torch.arange(shape[0]) % len(theirs.timesteps)]
        timer = Timer(rounds=rounds)
        timer.run({"diffusers": lambda: theirs.add_noise(x, z, t), "ddim_sched": lambda: ours.add_noise(x, z, t)})
        a, b = timer.best("diffusers"), timer.best("ddim_sched")
        print(
            f"| {'×'.join(map(str, shape))} | {fmt_us(a)} | {fmt_us(b)} | {b / a:.3f} "
            f"| {b / (floors[(shape, torch.float32)] * 3 / 4):.2f} |"
        )

    # Per-sample timesteps: 16 samples at 16 different timesteps in one call vs one scalar call.
    _, ours = schedulers("off")
    x, m, _ = inputs(LARGE, torch.float32)
    t16 = ours.timesteps[torch.arange(16) * 3]
    t_scalar = int(ours.timesteps[25])
    timer = Timer(rounds=rounds)
    timer.run({"per_sample": lambda: ours.step(m, t16, x), "scalar": lambda: ours.step(m, t_scalar, x)})
    per_sample, scalar = timer.best("per_sample"), timer.best("scalar")
    print(
        f"\nPer-sample timesteps, {'×'.join(map(str, LARGE))} fp32: 16 timesteps in one call {fmt_us(per_sample)} µs, "
        f"one scalar timestep {fmt_us(scalar)} µs, ratio {per_sample / scalar:.2f}"
    )

    # Per-frame timesteps: video latents [1, 4, 16, 64, 64], 16 frames at 16 timesteps in one call. A FIFO
    # queue repeats one pattern every call; "new pattern" cycles through 200 (more than a schedule keeps).
    per_frame, frame_scalar = per_frame_row(schedulers("off")[1], t_scalar, rounds, "DDIMScheduler")

    device_row_case(rounds)

    # out=sample: x_prev written in place. v-prediction keeps repeated in-place steps bounded.
    import ddim_sched

    ours = ddim_sched.DDIMScheduler(**{**SD_CONFIG, **CLIP_MODES["off"]}, prediction_type="v_prediction")
    ours.set_timesteps(50)
    x, m, _ = inputs(LARGE, torch.float32)
    buf = x.clone()
    t = int(ours.timesteps[25])
    timer = Timer(rounds=rounds)
    timer.run({"new": lambda: ours.step(m, t, x), "in_place": lambda: ours.step(m, t, buf, out=buf)})
    fl = floors[(LARGE, torch.float32)]
    in_place, new = timer.best("in_place"), timer.best("new")
    print(
        f"\nIn place (out=sample), {'×'.join(map(str, LARGE))} fp32 η=0: {fmt_us(in_place)} µs "
        f"({in_place / fl:.2f}× floor); "
        f"new outputs {fmt_us(new)} µs ({new / fl:.2f}× floor)"
    )

    # A new η every step (an annealed schedule) against one fixed η: work per step, not per η.
    print("\n| annealed η, fp32 | fixed η µs | new η every call µs | ratio |\n|---|---|---|---|")
    annealed_ratios = []
    for shape in (SMALL, LARGE):
        _, ours = schedulers("off")
        x, m, z = inputs(shape, torch.float32)
        t = int(ours.timesteps[25])
        counter = iter(range(10**9))
        timer = Timer(rounds=rounds)
        timer.run(
            {
                "fixed": lambda: ours.step(m, t, x, eta=0.5, variance_noise=z),
                "annealed": lambda: ours.step(m, t, x, eta=0.5 + next(counter) * 1e-9, variance_noise=z),
            }
        )
        fixed, annealed = timer.best("fixed"), timer.best("annealed")
        annealed_ratios.append(annealed / fixed)
        print(f"| {'×'.join(map(str, shape))} | {fmt_us(fixed)} | {fmt_us(annealed)} | {annealed / fixed:.2f} |")

    # Huge T: set-up is per schedule (S timesteps), not per T.
    import time

    import ddim_sched

    print("\n| T (cosine betas, v-prediction) | construct ms | set_timesteps(50) ms | first step ms | next step ms |")
    print("|---|---|---|---|---|")
    huge_first_step = 0.0
    for T in (10**3, 10**6, 10**7):
        x, m, _ = inputs(SMALL, torch.float32)
        start = time.perf_counter()
        huge = ddim_sched.DDIMScheduler(
            num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False
        )
        built = time.perf_counter()
        huge.set_timesteps(50)
        planned = time.perf_counter()
        huge.step(m, int(huge.timesteps[1]), x)
        first = time.perf_counter()
        huge.step(m, int(huge.timesteps[2]), x)
        second = time.perf_counter()
        huge_first_step = max(huge_first_step, first - planned)
        print(
            f"| {T:,} | {1e3 * (built - start):.1f} | {1e3 * (planned - built):.2f} | {1e3 * (first - planned):.2f} | "
            f"{1e3 * (second - first):.2f} |"
        )

    if args.compile:
        _, ours = schedulers("off")
        step = torch.compile(ours.step, fullgraph=True)
        t = ours.timesteps[25]
        for _ in range(3):  # compile, and the one recompile when the step counter changes
            step(m, t, x)
        timer = Timer(rounds=rounds)
        timer.run({"compiled": lambda: step(m, t, x), "eager": lambda: ours.step(m, t, x)})
        fl = floors[(LARGE, torch.float32)]
        print(
            f"\ntorch.compile(step), {'×'.join(map(str, LARGE))} fp32 η=0: {fmt_us(timer.best('compiled'))} µs "
            f"({timer.best('compiled') / fl:.2f}× floor); eager in the same rounds {fmt_us(timer.best('eager'))} µs "
            f"({timer.best('eager') / fl:.2f}× floor)"
        )

    # The step-speed targets (docs/performance.md).
    f32 = torch.float32
    small = results[(SMALL, f32, 0.0, "off")]
    large = results[(LARGE, f32, 0.0, "off")]
    thresh = results[(LARGE, f32, 0.0, "threshold")]
    fl = floors[(LARGE, f32)]
    checks = [
        ("small fp32 η=0: ddim_sched <= 1/4 of diffusers", small[1] / small[0], small[1] / small[0] <= 0.25),
        ("large fp32 η=0: <= 1.5 × floor", large[1] / fl, large[1] / fl <= 1.5),
        ("  the same with out=sample (in place)", in_place / fl, in_place / fl <= 1.5),
        ("large fp32 η=0: <= 1/3 of diffusers", large[1] / large[0], large[1] / large[0] <= 1 / 3),
        (
            "thresholding 16×4×128×128: >= 3× faster, equal results",
            thresh[0] / thresh[1],
            thresh[0] / thresh[1] >= 3 and thresh[2] <= 1e-4,
        ),
        ("per-sample batch of 16 <= 2 × one scalar call", per_sample / scalar, per_sample / scalar <= 2),
        ("a new η every step <= 1.5 × a fixed η (worst size)", max(annealed_ratios), max(annealed_ratios) <= 1.5),
        (
            "16 frames at 16 timesteps <= 1.5 × one scalar call",
            per_frame / frame_scalar,
            per_frame / frame_scalar <= 1.5,
        ),
        ("T = 10^7: first step after set_timesteps < 10 ms (seconds)", huge_first_step, huge_first_step < 0.01),
    ]
    checks += flow_rows(rounds)
    print("\n| target | measured | met |\n|---|---|---|")
    for name, value, ok in checks:
        print(f"| {name} | {value:.3f} | {'yes' if ok else 'NO'} |")


if __name__ == "__main__":
    main()
