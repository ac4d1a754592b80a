"""Benchmark: the CFG++ step against a plain classifier-free-guidance step, same inputs, same process.

Run from the repository root:

    PYTHONPATH=src python benchmarks/recipes.py            # the table (about a minute on 2 cores)
    PYTHONPATH=src python benchmarks/recipes.py --quick    # fewer rounds
    PYTHONPATH=src python benchmarks/recipes.py --device cuda

A plain CFG step is m = m_u + w·(m_c − m_u) and ``scheduler.step(m, t, x)``; ``cfg_pp_step`` does the
same work plus one fused pass over the latents (the direction-term correction) and a host lookup of
the step's weight. Prints per case the best-round time per call of each (10th percentile, interleaved
rounds: ``benchmarks/common.py``), the ratio CFG++ / CFG, and the ratio of the extra time to one fused
read-2-write-1 pass over the latents (``torch.add(x, m, out=buf)``), the extra arithmetic's floor.
Then ``set_timesteps`` per call on SD's table: a plain one (``set_timesteps(S)``, leading spacing), one
from Align Your Steps' sigmas (``set_timesteps(sigmas=ays_sigmas("sd15", S))``, as a pipeline passes them
through ``retrieve_timesteps``: a list of floats) and one by the ``ays_sd15`` spacing (``set_timesteps(S)``),
each with the ratio to the plain call, and diffusers' ``EulerDiscreteScheduler.set_timesteps(sigmas=...)`` on
the same list and its ``DDIMScheduler.set_timesteps(S)`` as references from the same process. Also the pure
functions alone: ``timesteps_from_sigmas`` on AYS's 10 levels and the ``ays_sd15`` spacing at S = 25.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ddim_sched  # noqa: E402
from common import SD_CONFIG, Timer, fmt_us, inputs, machine  # noqa: E402
from ddim_sched import ays, cfg_pp_step, spacing  # noqa: E402

SHAPES = [(1, 4, 64, 64), (2, 4, 128, 128)]


def cfg_case(shape, dtype, eta, device, rounds):
    """(plain seconds, CFG++ seconds, floor seconds) for one step at a mid-schedule timestep."""
    scheduler = ddim_sched.DDIMScheduler(**SD_CONFIG, clip_sample=False)
    scheduler.set_timesteps(50, device=device)
    t = scheduler.timesteps[25]  # a pipeline's 0-d loop variable
    x, m_u, z = inputs(shape, dtype, device)
    m_c = m_u + 0.1 * z
    noise = z if eta > 0 else None
    w, lam = 7.5, 0.6

    def plain():
        return scheduler.step(m_u + w * (m_c - m_u), t, x, eta=eta, variance_noise=noise).prev_sample

    def plus():
        return cfg_pp_step(scheduler, m_u, m_c, t, x, lam, eta=eta, variance_noise=noise).prev_sample

    buf = torch.empty_like(x)

    def floor():
        return torch.add(x, m_u, out=buf)

    synced = {name: _synced(fn, device) for name, fn in (("plain", plain), ("plus", plus), ("floor", floor))}
    timer = Timer(rounds=rounds)
    timer.run(synced)
    return timer.best("plain"), timer.best("plus"), timer.best("floor")


def _synced(fn, device):
    if torch.device(device).type != "cuda":
        return fn

    def call():
        fn()
        torch.cuda.synchronize()

    return call


def table_case(rounds):
    """(timesteps_from_sigmas seconds, ays_sd15 spacing seconds) per call on SD's table."""
    alpha_bar = ddim_sched.DDIMScheduler(**SD_CONFIG).alpha_bar
    sigmas = ays.ays_sigmas("sd15", 10)
    timer = Timer(rounds=rounds)
    timer.run(
        {
            "sigmas": lambda: spacing.timesteps_from_sigmas(sigmas, alpha_bar),
            "ays": lambda: spacing.ays_sd15(1000, 25, alpha_bar=alpha_bar),
        }
    )
    return timer.best("sigmas"), timer.best("ays")


def set_timesteps_case(steps, rounds):
    """Seconds per set_timesteps call: {"plain", "sigmas", "ays spacing", "diffusers euler sigmas",
    "diffusers ddim plain"} at S = steps on SD's table, timed in interleaved rounds."""
    import warnings

    import diffusers

    plain = ddim_sched.DDIMScheduler(**SD_CONFIG, clip_sample=False)
    by_sigmas = ddim_sched.DDIMScheduler(**SD_CONFIG, clip_sample=False)
    by_spacing = ddim_sched.DDIMScheduler(**SD_CONFIG, clip_sample=False, timestep_spacing="ays_sd15")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        euler = diffusers.EulerDiscreteScheduler(**{k: v for k, v in SD_CONFIG.items() if k != "set_alpha_to_one"})
        ddim = diffusers.DDIMScheduler(**SD_CONFIG, clip_sample=False)
    sigmas = ays.ays_sigmas("sd15", steps).tolist()  # what a pipeline passes
    timer = Timer(rounds=rounds)
    timer.run(
        {
            "plain": lambda: plain.set_timesteps(steps),
            "sigmas": lambda: by_sigmas.set_timesteps(sigmas=sigmas),
            "ays spacing": lambda: by_spacing.set_timesteps(steps),
            "diffusers euler sigmas": lambda: euler.set_timesteps(sigmas=sigmas),
            "diffusers ddim plain": lambda: ddim.set_timesteps(steps),
        }
    )
    return {name: timer.best(name) for name in timer.samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = 3 if args.quick else 7
    print(machine() if args.device == "cpu" else f"{torch.cuda.get_device_name()} (torch {torch.__version__})")
    print()
    print("| latents | dtype | η | CFG step µs | CFG++ step µs | ratio | extra / one fused pass |")
    print("|---|---|---|---|---|---|---|")
    dtypes = [torch.float32] if args.device == "cpu" else [torch.float32, torch.float16]
    for shape in SHAPES:
        for dtype in dtypes:
            for eta in (0.0, 1.0):
                plain, plus, floor = cfg_case(shape, dtype, eta, args.device, rounds)
                label = "×".join(map(str, shape))
                print(
                    f"| {label} | {str(dtype).removeprefix('torch.')} | {eta:g} | {fmt_us(plain)} | {fmt_us(plus)} "
                    f"| {plus / plain:.2f} | {(plus - plain) / floor:.2f} |"
                )
    print()
    print(
        "| S | set_timesteps(S) µs | sigmas=AYS µs | ratio | ays_sd15 spacing µs | ratio "
        "| diffusers Euler sigmas=AYS µs | diffusers DDIM set_timesteps(S) µs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for steps in (10, 25, 50):
        t = set_timesteps_case(steps, rounds)
        print(
            f"| {steps} | {fmt_us(t['plain'])} | {fmt_us(t['sigmas'])} | {t['sigmas'] / t['plain']:.2f} "
            f"| {fmt_us(t['ays spacing'])} | {t['ays spacing'] / t['plain']:.2f} "
            f"| {fmt_us(t['diffusers euler sigmas'])} | {fmt_us(t['diffusers ddim plain'])} |"
        )
    sigmas, ays_spacing = table_case(rounds)
    print()
    print(f"timesteps_from_sigmas (AYS SD 1.5, 10 levels): {fmt_us(sigmas)} µs per call")
    print(f"ays_sd15 spacing, S = 25 (interpolation + nearest timesteps): {fmt_us(ays_spacing)} µs per call")


if __name__ == "__main__":
    main()
