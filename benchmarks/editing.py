"""Editing round trips side by side: classic DDIM inversion, fixed-point inversion (k = 1, 2, 5), BDIA-DDIM,
EDICT and edit-friendly noise maps, at S = 10 and 50, on

(a) the demo's learned digits model (an ε-MLP trained here on scikit-learn's 8×8 digits with the demo's
    own training function and seeds), 100 held-out digits;
(b) a tiny Stable Diffusion pipeline: a random-weight UNet2DConditionModel and AutoencoderKL built from
    configs (examples/sd_loop.py), fixed prompt embeddings, 4 synthetic images encoded by the VAE;
(c) a tiny SD3 transformer (random weights) with FlowMatchDDIMScheduler, on random latents;

reporting the reconstruction error and the model calls per step (counted) to encode and to decode, in
float32 and float64. Then what BDIA costs in sample quality: FID of the digits model's samples with
BDIA-DDIM (γ = 0.5, 1) and EDICT against plain DDIM at S = 10, 20, 50, with the demo's metric, its
real-data floor and split-half spread.

Run from the repository root (about 3 minutes on one core; ``--quick`` about 1)::

    PYTHONPATH=src python benchmarks/editing.py [--quick] [--threads 1]

Needs scikit-learn (the digits) and diffusers (the tiny pipelines). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ddim_sched
from ddim_sched import DDIMScheduler, FlowMatchDDIMScheduler

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------- the methods


@dataclass(frozen=True)
class Method:
    """An encoder and the decoder that goes with it."""

    name: str
    encode: Callable[[ModelFn, torch.Tensor, Any], Any]
    decode: Callable[[ModelFn, Any, Any], torch.Tensor]


def _noise_maps_encode(model: ModelFn, x0: torch.Tensor, scheduler: Any) -> ddim_sched.NoiseMaps:
    trajectory = ddim_sched.noise_space_trajectory(x0, scheduler, generator=torch.Generator().manual_seed(0))
    return ddim_sched.edit_friendly_noise(trajectory, scheduler, model_fn=model, eta=1.0)


def methods() -> list[Method]:
    """The rows of the round-trip tables."""
    rows = [Method("DDIM inversion (k=0)", ddim_sched.invert, ddim_sched.sample)]
    for k in (1, 2, 5):
        rows.append(
            Method(
                f"fixed-point invert, k={k}",
                lambda m, x, s, k=k: ddim_sched.invert(m, x, s, fixed_point_iterations=k),
                ddim_sched.sample,
            )
        )
    for gamma in (1.0, 0.5):
        rows.append(
            Method(
                f"BDIA, gamma={gamma:g}",
                lambda m, x, s, g=gamma: ddim_sched.bdia_invert(m, x, s, gamma=g),
                lambda m, z, s, g=gamma: ddim_sched.bdia_sample(m, z, s, gamma=g),
            )
        )
    rows.append(Method("EDICT, p=0.93", ddim_sched.edict_invert, ddim_sched.edict_sample))
    rows.append(Method("edit-friendly maps, eta=1", _noise_maps_encode, ddim_sched.replay_noise_maps))
    return rows


class Counter:
    """Wraps a model_fn and counts its calls."""

    def __init__(self, model: ModelFn) -> None:
        self.model, self.calls = model, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x, t)


@dataclass
class Cell:
    """One method at one S: the decoded result and the model calls per step each way."""

    decoded: torch.Tensor
    encode_calls: float
    decode_calls: float
    seconds: float


def round_trip(method: Method, model: ModelFn, x0: torch.Tensor, scheduler: Any) -> Cell:
    """Encode and decode x0 with ``method`` on ``scheduler``'s schedule, counting model calls."""
    steps = len(scheduler.timesteps)
    counter = Counter(model)
    start = time.perf_counter()
    with torch.no_grad():
        latent = method.encode(counter, x0, scheduler)
        encoded = counter.calls
        decoded = method.decode(counter, latent, scheduler)
    return Cell(decoded, encoded / steps, (counter.calls - encoded) / steps, time.perf_counter() - start)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖/‖b‖ over the whole batch, float64 (inf or nan when a is not finite)."""
    a64, b64 = a.double(), b.double()
    if not bool(torch.isfinite(a64).all()):
        return float("nan")
    return float((a64 - b64).norm() / b64.norm())


def unit_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error per pixel on the [0, 1] scale of two image sets in [−1, 1] (the demo's measure)."""
    a64, b64 = a.double(), b.double()
    if not bool(torch.isfinite(a64).all()):
        return float("nan")
    return float(((a64 - b64) ** 2).mean() / 4)


def fmt(value: float) -> str:
    return "diverged (non-finite)" if not np.isfinite(value) else f"{value:.2e}"


def table(title: str, rows: list[tuple[str, dict[int, tuple[float, Cell]]]], steps: tuple[int, ...], unit: str) -> str:
    """A markdown table: per method and S, the error and the model calls per step (encode + decode)."""
    head = "| method | " + " | ".join(f"S={S}: {unit} | calls/step" for S in steps) + " |"
    rule = "|---|" + "---|---|" * len(steps)
    lines = [f"**{title}**", "", head, rule]
    for name, cells in rows:
        parts = []
        for S in steps:
            error, cell = cells[S]
            parts.append(f"{fmt(error)} | {cell.encode_calls:.2g} + {cell.decode_calls:.2g}")
        lines.append(f"| {name} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def measure(
    model: ModelFn,
    x0: torch.Tensor,
    make_scheduler: Callable[[int], Any],
    steps: tuple[int, ...],
    error: Callable[[torch.Tensor, torch.Tensor], float],
) -> list[tuple[str, dict[int, tuple[float, Cell]]]]:
    """Every method at every S."""
    rows = []
    for method in methods():
        cells = {}
        for S in steps:
            scheduler = make_scheduler(S)
            cell = round_trip(method, model, x0, scheduler)
            cells[S] = (error(cell.decoded, x0), cell)
        rows.append((method.name, cells))
    return rows


# ---------------------------------------------------------------------------- (a) the digits model


def digits_models(quick: bool, threads: int) -> tuple[Any, Any, Any]:
    """(data, trained ε-model, FeatureFID) with the demo's training functions and seeds."""
    from ddim_sched.demo.digits import FeatureFID, load_digits_data, train_classifier, train_eps_model

    data = load_digits_data(seed=0)
    start = time.perf_counter()
    model = train_eps_model(data, steps=2500 if quick else 10000, seed=0, threads=threads)
    classifier = train_classifier(data, steps=1000 if quick else 2000, seed=1, threads=threads)
    print(f"digits: trained in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return data, model, FeatureFID(classifier, data.held_out)


class _ToFloat64(torch.nn.Module):
    """Casts its input to float64 (the demo network's time embedding is computed in float32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def double_model(model: Any) -> ModelFn:
    """The trained ε-model evaluated in float64: a float64 copy of its network, the float32 sinusoidal
    embedding of t cast to float64 before the network's first layer that reads it."""
    network = copy.deepcopy(model.network).double()
    network.time = torch.nn.Sequential(_ToFloat64(), network.time)

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return network(x, t)

    return model_fn


def demo_scheduler(S: int) -> DDIMScheduler:
    """The demo's scheduler (diffusers' defaults without clipping) with S steps."""
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(S)
    return scheduler


def digits_round_trips(data: Any, model: Any, images: int, steps: tuple[int, ...]) -> str:
    x0 = data.held_out[:images]
    random_pair = unit_mse(x0, x0.roll(1, dims=0))
    out = []
    for dtype, fn in ((torch.float32, model), (torch.float64, double_model(model))):
        rows = measure(fn, x0.to(dtype), demo_scheduler, steps, unit_mse)
        title = (
            f"Digits model ({dtype}), {images} held-out digits: MSE per pixel on the [0, 1] scale "
            f"(a random other digit: {random_pair:.3f})"
        )
        out.append(table(title, rows, steps, "MSE"))
    return "\n\n".join(out)


def fid_table(data: Any, model: Any, metric: Any, quick: bool) -> str:
    """FID of BDIA-DDIM and EDICT against DDIM (η = 0) on the digits model, with the demo's floor and spread."""
    n, halves, draws = (300, 50, 10) if quick else (500, 100, 20)
    steps = (10, 20, 50)
    x_T = torch.randn(n, 64, generator=torch.Generator().manual_seed(3))
    samplers: list[tuple[str, Callable[[DDIMScheduler], torch.Tensor]]] = [
        ("DDIM (eta=0)", lambda s: ddim_sched.sample(model, x_T, s)),
        ("BDIA, gamma=0.5", lambda s: ddim_sched.bdia_sample(model, x_T, s, gamma=0.5)),
        ("BDIA, gamma=1", lambda s: ddim_sched.bdia_sample(model, x_T, s, gamma=1.0)),
        ("EDICT, p=0.93", lambda s: ddim_sched.edict_sample(model, x_T, s)),
    ]
    features: dict[tuple[str, int], torch.Tensor] = {}
    for S in steps:
        scheduler = demo_scheduler(S)
        for name, run in samplers:
            with torch.no_grad():
                features[(name, S)] = metric.features(run(scheduler))
    labels = list(features)
    replicates = metric.half_samples([features[label] for label in labels], halves, 5)
    floor = metric.real_floor(data.train, n, draws, 2)

    def sd(label: tuple[str, int]) -> float:
        return float(replicates[:, labels.index(label)].std(ddof=1))

    def difference_sd(a: tuple[str, int], b: tuple[str, int]) -> float:
        return float((replicates[:, labels.index(a)] - replicates[:, labels.index(b)]).std(ddof=1))

    lines = [
        f"**FID of {n} digits-model samples (the same x_T for every cell) against the 500 held-out digits, "
        f"the demo's metric.** Floor (real training digits vs held-out, {draws} draws): {floor.mean():.2f} "
        f"+- {floor.std(ddof=1):.2f} (range {floor.min():.2f}..{floor.max():.2f}). +-: split-half sd "
        f"({halves} random halves); in brackets: the difference to DDIM at the same S +- its paired sd "
        "('*': beyond 2 sd).",
        "",
        "| sampler | model calls/step | " + " | ".join(f"S={S}" for S in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for name, _ in samplers:
        calls = 2 if name.startswith("EDICT") else 1
        cells = []
        for S in steps:
            label, base = (name, S), ("DDIM (eta=0)", S)
            fid = metric.distance(features[label])
            text = f"{fid:.1f} +- {sd(label):.1f}"
            if name != "DDIM (eta=0)":
                delta, spread = fid - metric.distance(features[base]), difference_sd(label, base)
                text += f" [{delta:+.1f} +- {spread:.1f}{'*' if abs(delta) > 2 * spread else ''}]"
            cells.append(text)
        lines.append(f"| {name} | {calls} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ring_table() -> str:
    """Sliced W2 to the data of DDIM, BDIA and EDICT samples with the exact denoiser of the 8-mode ring."""
    from ddim_sched.toy import GaussianMixture, sliced_wasserstein

    steps = (10, 20, 50)
    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    samplers: list[tuple[str, Callable[[ModelFn, DDIMScheduler], torch.Tensor]]] = [
        ("DDIM (eta=0)", lambda m, s: ddim_sched.sample(m, x_T, s)),
        ("BDIA, gamma=0.5", lambda m, s: ddim_sched.bdia_sample(m, x_T, s, gamma=0.5)),
        ("BDIA, gamma=1", lambda m, s: ddim_sched.bdia_sample(m, x_T, s, gamma=1.0)),
        ("EDICT, p=0.93", lambda m, s: ddim_sched.edict_sample(m, x_T, s)),
        ("EDICT, p=0.93, leapfrog=False", lambda m, s: ddim_sched.edict_sample(m, x_T, s, leapfrog=False)),
    ]
    lines = [
        "**Sliced W2 distance to 2000 data samples, 2000 samples from one x_T, the exact denoiser of the 8-mode "
        "ring (std 0.1, radius 1), float64** (256 projections, seed 2; two independent data sets: "
        "{floor})",
        "",
        "| sampler | " + " | ".join(f"S={S}" for S in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    rows = {name: [] for name, _ in samplers}
    floor = ""
    for S in steps:
        scheduler = demo_scheduler(S)
        ring = GaussianMixture.ring(8, radius=1.0, std=0.1, alpha_bar=scheduler)
        data = ring.sample(2000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        if not floor:
            other = ring.sample(2000, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
            floor = f"{sliced_wasserstein(other, data, generator=torch.Generator().manual_seed(2)):.3f}"
        for name, run in samplers:
            out = run(ring.model("epsilon"), scheduler)
            rows[name].append(f"{sliced_wasserstein(out, data, generator=torch.Generator().manual_seed(2)):.3f}")
    lines[0] = lines[0].format(floor=floor)
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in rows.items()]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- (b) a tiny SD pipeline


def load_sd_loop() -> Any:
    """examples/sd_loop.py, imported by path (its tiny UNet, VAE, prompt embeddings and scheduler config)."""
    spec = importlib.util.spec_from_file_location("examples_sd_loop", ROOT / "examples" / "sd_loop.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def synthetic_images(n: int, size: int) -> torch.Tensor:
    """n smooth RGB images in [−1, 1], [n, 3, size, size]: seeded gradients and a disc."""
    generator = torch.Generator().manual_seed(7)
    grid = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    images = []
    for _ in range(n):
        a, b, c, r = torch.rand(4, generator=generator) * 2 - 1
        disc = ((xx - a * 0.5) ** 2 + (yy - b * 0.5) ** 2 < (0.3 + 0.2 * r.abs()) ** 2).float()
        images.append(torch.stack([a * xx + b * yy, c * disc - 0.5 * (1 - disc), torch.tanh(2 * xx * yy)]))
    return torch.stack(images).clamp(-1, 1)


def sd_round_trips(steps: tuple[int, ...]) -> str:
    sd_loop = load_sd_loop()
    torch.manual_seed(0)
    unet, vae = sd_loop.tiny_unet(), sd_loop.tiny_vae()
    prompt, _ = sd_loop.prompt_embeddings(4)
    images = synthetic_images(4, sd_loop.IMAGE_SIZE)
    out = []
    for dtype in (torch.float32, torch.float64):
        net, auto = copy.deepcopy(unet).to(dtype), copy.deepcopy(vae).to(dtype)
        embeddings = prompt.to(dtype)
        with torch.no_grad():
            latents = auto.encode(images.to(dtype)).latent_dist.mean * auto.config.scaling_factor

        def model_fn(x: torch.Tensor, t: torch.Tensor, net: Any = net, embeddings: torch.Tensor = embeddings) -> Any:
            with torch.no_grad():
                return net(x, t, encoder_hidden_states=embeddings).sample

        def make(S: int) -> DDIMScheduler:
            scheduler = DDIMScheduler(**sd_loop.SD_SCHEDULER_CONFIG)
            scheduler.set_timesteps(S)
            return scheduler

        rows = measure(model_fn, latents, make, steps, relative_error)
        out.append(
            table(
                f"Tiny Stable Diffusion ({dtype}): random-weight UNet2DConditionModel, SD's scheduler config, "
                "4 synthetic images encoded by the tiny VAE to 4x8x8 latents; relative L2 error in latent space",
                rows,
                steps,
                "rel. L2",
            )
        )
    return "\n\n".join(out)


# ---------------------------------------------------------------------------- (c) a tiny SD3 transformer


def sd3_round_trips(steps: tuple[int, ...]) -> str:
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
        pos_embed_max_size=16,
    ).eval()  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    prompt, pooled = torch.randn(1, 8, 16, generator=generator), torch.randn(1, 16, generator=generator)
    x0 = torch.randn(4, 4, 8, 8, generator=generator)
    out = []
    for dtype in (torch.float32, torch.float64):
        net = copy.deepcopy(transformer).to(dtype)

        def model_fn(x: torch.Tensor, t: torch.Tensor, net: Any = net, dtype: torch.dtype = dtype) -> Any:
            B = x.shape[0]
            with torch.no_grad():
                return net(
                    hidden_states=x, timestep=t.expand(B), encoder_hidden_states=prompt.to(dtype).expand(B, -1, -1),
                    pooled_projections=pooled.to(dtype).expand(B, -1),
                ).sample  # fmt: skip

        def make(S: int) -> FlowMatchDDIMScheduler:
            scheduler = FlowMatchDDIMScheduler(shift=3.0)
            scheduler.set_timesteps(S)
            return scheduler

        rows = measure(model_fn, x0.to(dtype), make, steps, relative_error)
        out.append(
            table(
                f"Tiny SD3 transformer ({dtype}), FlowMatchDDIMScheduler(shift=3): random weights, 4 random "
                "4x8x8 latents; relative L2 error",
                rows,
                steps,
                "rel. L2",
            )
        )
    return "\n\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter training and fewer samples")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--skip-fid", action="store_true", help="round trips only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = (10, 50)
    start = time.perf_counter()
    print(f"Machine: {machine()}\n")
    data, model, metric = digits_models(args.quick, args.threads)
    print(digits_round_trips(data, model, 50 if args.quick else 100, steps), end="\n\n")
    print(sd_round_trips(steps), end="\n\n")
    print(sd3_round_trips(steps), end="\n\n")
    if not args.skip_fid:
        print(fid_table(data, model, metric, args.quick), end="\n\n")
    print(ring_table(), end="\n\n")
    print(f"total wall time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
