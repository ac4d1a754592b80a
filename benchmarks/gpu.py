"""GPU benchmark: diffusers' DDIMScheduler.step against ddim_sched's on a CUDA device, timed with
CUDA events, plus the sync-free and CUDA-graph checks and the device's copy bandwidth.

Run from the repository root on a machine with a GPU:

    PYTHONPATH=src python benchmarks/gpu.py              # full table
    PYTHONPATH=src python benchmarks/gpu.py --quick      # fewer cases
    PYTHONPATH=src python benchmarks/gpu.py --device cpu --quick   # dry run of the code paths

Columns: time per step of diffusers (timestep as a 0-d device tensor, as pipelines pass it: its
step then syncs the host), ddim_sched eager with the same tensor timestep (device-table path),
ddim_sched with a Python-int timestep (host-scalar path), and torch.compile(ddim_sched step);
each ddim_sched column also as achieved bandwidth (x_t and m read once, x_prev and x̂0 written once:
4 tensors) over the measured device copy bandwidth. Target: >= 70% of copy bandwidth
on the largest size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SMALL, inputs, schedulers  # noqa: E402

SIZES = [SMALL, (16, 4, 128, 128), (16, 16, 128, 128)]


class DeviceTimer:
    """Per-call time of callables, interleaved rounds, best round; CUDA events on a GPU."""

    def __init__(self, device: torch.device, rounds: int = 5, calls: int = 20):
        self.device, self.rounds, self.calls = device, rounds, calls

    def _once(self, fn) -> float:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(self.calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / self.calls
        begin = time.perf_counter()
        for _ in range(self.calls):
            fn()
        return (time.perf_counter() - begin) / self.calls

    def best(self, contenders: dict) -> dict:
        for fn in contenders.values():
            fn()
            fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        samples = {name: [] for name in contenders}
        for _ in range(self.rounds):
            for name, fn in contenders.items():
                samples[name].append(self._once(fn))
        return {name: min(values) for name, values in samples.items()}


def copy_bandwidth(device, dtype, timer) -> float:
    """Bytes per second of dst.copy_(src) over the largest latents (read + write)."""
    x, _, _ = inputs(SIZES[-1], dtype, device)
    dst = torch.empty_like(x)
    seconds = timer.best({"copy": lambda: dst.copy_(x)})["copy"]
    return 2 * x.numel() * x.element_size() / seconds


def step_row(shape, dtype, eta, clip, device, timer, compile_step):
    theirs, ours = schedulers(clip, device=device)
    t_tensor = ours.timesteps[25]
    t_int = int(t_tensor)
    x, m, z = inputs(shape, dtype, device)
    noise = z if eta > 0 else None
    contenders = {
        "diffusers": lambda: theirs.step(m, t_tensor, x, eta=eta, variance_noise=noise),
        "tensor": lambda: ours.step(m, t_tensor, x, eta=eta, variance_noise=noise),
        "int": lambda: ours.step(m, t_int, x, eta=eta, variance_noise=noise),
    }
    if compile_step:
        torch._dynamo.reset()  # each row compiles a new scheduler's step: do not count them as recompiles
        compiled = torch.compile(ours.step, fullgraph=True)
        for _ in range(3):  # compile, then the one recompile when the step counter changes
            compiled(m, t_tensor, x, eta=eta, variance_noise=noise)
        contenders["compiled"] = lambda: compiled(m, t_tensor, x, eta=eta, variance_noise=noise)
    expected = theirs.step(m, t_tensor, x, eta=eta, variance_noise=noise).prev_sample.double()
    got = ours.step(m, t_tensor, x, eta=eta, variance_noise=noise).prev_sample.double()
    diff = float((got - expected).norm() / expected.norm())
    return timer.best(contenders), 4 * x.numel() * x.element_size(), diff


def sync_check(device) -> str:
    """Run 50 steps with device timesteps under set_sync_debug_mode("error"), for both libraries."""
    if device.type != "cuda":
        return "skipped (no CUDA device)"
    results = []
    for name in ("ddim_sched", "diffusers"):
        theirs, ours = schedulers("threshold", device=device)
        scheduler = ours if name == "ddim_sched" else theirs
        x, m, _ = inputs((2, 4, 64, 64), torch.float16, device)
        scheduler.step(m, scheduler.timesteps[0], x)  # builds ddim_sched's device tables
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for t in scheduler.timesteps:
                x = scheduler.step(m, t, x).prev_sample
            results.append(f"{name}: no sync in 50 steps")
        except RuntimeError as err:
            results.append(f"{name}: syncs ({str(err).splitlines()[0][:60]})")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return "; ".join(results)


def graph_check(device, timer) -> str:
    """Capture a 50-step loop in one CUDA graph; replay; compare with eager; time both."""
    if device.type != "cuda":
        return "skipped (no CUDA device)"
    _, ours = schedulers("off", device=device)
    x, m, _ = inputs((16, 4, 128, 128), torch.float16, device)

    def loop(x):
        for t in ours.timesteps:
            x = ours.step(m, t, x).prev_sample
        return x

    eager = loop(x)
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        loop(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = loop(static_x)
    graph.replay()
    torch.cuda.synchronize()
    equal = torch.equal(static_out, eager)
    times = timer.best({"graph": graph.replay, "eager": lambda: loop(x)})
    return (
        f"50-step loop, 16×4×128×128 fp16: replay {'equals' if equal else 'DIFFERS FROM'} eager; "
        f"{times['graph'] / 50 * 1e6:.1f} µs/step replayed vs {times['eager'] / 50 * 1e6:.1f} µs/step eager"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="largest size, η=0, clip off/threshold only")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("No CUDA device: nothing to measure (use --device cpu for a dry run of the code paths).")
        return
    device = torch.device(args.device)
    timer = DeviceTimer(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    print(f"Device: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}\n")

    dtypes = [torch.float16, torch.bfloat16] if device.type == "cuda" else [torch.float32]
    bandwidth = {d: copy_bandwidth(device, d, timer) for d in dtypes + [torch.float32]}
    for d, bw in bandwidth.items():
        print(f"copy bandwidth ({str(d)[6:]}, {'×'.join(map(str, SIZES[-1]))}): {bw / 1e9:.0f} GB/s")

    sizes = SIZES[-1:] if args.quick else SIZES
    etas = (0.0,) if args.quick else (0.0, 1.0)
    clips = ("off", "threshold") if args.quick else ("off", "clip", "threshold")
    compile_step = not args.no_compile
    header = (
        "| latents | dtype | η | clip | diffusers µs | ddim_sched (tensor t) µs | % copy BW | (int t) µs | % copy BW |"
    )
    if compile_step:
        header += " compiled µs | % copy BW |"
    print("\n" + header + " rel. L2 diff |")
    print("|" + "---|" * (header.count("|") - 1 + 1))
    for shape in sizes:
        for dtype in [torch.float32] + dtypes if device.type == "cuda" else dtypes:
            for eta in etas:
                for clip in clips:
                    times, nbytes, diff = step_row(shape, dtype, eta, clip, device, timer, compile_step)
                    bw = bandwidth[dtype]
                    cells = [
                        "×".join(map(str, shape)),
                        str(dtype)[6:],
                        f"{eta:g}",
                        clip,
                        f"{times['diffusers'] * 1e6:.1f}",
                        f"{times['tensor'] * 1e6:.1f}",
                        f"{nbytes / times['tensor'] / bw:.0%}",
                        f"{times['int'] * 1e6:.1f}",
                        f"{nbytes / times['int'] / bw:.0%}",
                    ]
                    if compile_step:
                        cells += [f"{times['compiled'] * 1e6:.1f}", f"{nbytes / times['compiled'] / bw:.0%}"]
                    cells.append(f"{diff:.1e}")
                    print("| " + " | ".join(cells) + " |", flush=True)

    print(f"\nSync check: {sync_check(device)}")
    print(f"CUDA graph: {graph_check(device, timer)}")


if __name__ == "__main__":
    main()
