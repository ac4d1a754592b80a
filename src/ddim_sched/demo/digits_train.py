"""The learned side of the digits demo: the data, the ε-prediction network and its training loop, and
the digit classifier whose hidden layer is the demo's FID feature space.

Data: scikit-learn's bundled 8×8 handwritten digits (1797 images, 17 grey levels 0..16, no download),
scaled to [−1, 1] as x/8 − 1 and split once, by a seeded permutation, into a training set and a
held-out set.

Determinism: every random draw (weight initialisation, minibatches, timesteps, noise, dequantization)
comes from the seed, and training sets the CPU thread count itself, so the same seed, arguments and
thread count on the same machine give bit-identical weights. Other CPUs may round differently;
nothing here claims bit-equality across machines.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from ..ddim.scheduler import DDIMScheduler
from .common import DEMO_EXTRA, cpu_threads, demo_scheduler

ModuleT = TypeVar("ModuleT", bound=nn.Module)
Progress = Callable[[int, int], None]
"""``progress(done, total)``: called as work completes; the last call of a phase has done == total."""

SIDE = 8
PIXELS = SIDE * SIDE
CLASSES = 10


def _report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


# ---------------------------------------------------------------------- data


@dataclass(frozen=True)
class DigitsData:
    """The digits split once into training and held-out sets.

    Attributes:
        train, held_out: float32 [N, 64] images in [−1, 1] (row-major 8×8).
        train_labels, held_out_labels: int64 [N] digit classes 0..9.
    """

    train: torch.Tensor
    train_labels: torch.Tensor
    held_out: torch.Tensor
    held_out_labels: torch.Tensor


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as (pixels [1797, 64] in 0..16, labels [1797])."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            f"the digits demo needs scikit-learn (its bundled 8x8 digits), which is not installed: {DEMO_EXTRA}"
        ) from err
    bunch = load_digits()
    return np.asarray(bunch.data), np.asarray(bunch.target)


def load_digits_data(seed: int = 0, held_out: int = 500) -> DigitsData:
    """Load scikit-learn's 8×8 digits, scale them to [−1, 1] and split them by a seeded permutation.

    Args:
        seed: Seed of the permutation that picks the held-out images.
        held_out: How many images to hold out (the rest, of 1797, are the training set).

    Returns:
        A :class:`DigitsData`.

    Raises:
        ImportError: scikit-learn is not installed (the ``demo`` extra).
        ValueError: held_out leaves either set empty.
    """
    pixels, labels = _sklearn_digits()
    total = len(pixels)
    if isinstance(held_out, bool) or not isinstance(held_out, int) or not 0 < held_out < total:
        raise ValueError(f"held_out must be an int in [1, {total - 1}]; got {held_out!r}")
    images = torch.as_tensor(pixels, dtype=torch.float32) / 8 - 1  # grey levels 0..16 → [−1, 1]
    classes = torch.as_tensor(labels, dtype=torch.int64)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    test, train = order[:held_out], order[held_out:]
    return DigitsData(images[train], classes[train], images[test], classes[test])


# ---------------------------------------------------------------------- the ε-prediction network


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of timesteps t ([B] or 0-d): sin and cos of t·10000^(−k/(dim/2))."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.to(torch.float32).reshape(-1, 1) * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class EpsMLP(nn.Module):
    """ε̂(x_t, t) for flattened 8×8 digits: a residual MLP conditioned on t in every layer.

    h = SiLU(W_in·x_t + b_0(t)); then ``blocks`` times h ← h + SiLU(W_k·h + b_k(t)); ε̂ = W_out·h. The
    per-layer biases b_k(t) are one linear map of the sinusoidal embedding of t (``embedding_dim``).
    """

    def __init__(self, width: int = 256, blocks: int = 3, embedding_dim: int = 64) -> None:
        super().__init__()
        self.embedding_dim, self.blocks = embedding_dim, blocks
        self.time = nn.Linear(embedding_dim, width * (blocks + 1))
        self.inp = nn.Linear(PIXELS, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.out = nn.Linear(width, PIXELS)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂ [B, 64] from x_t [B, 64] and t ([B] or 0-d integer timesteps)."""
        embedding = timestep_embedding(t, self.embedding_dim)
        biases = self.time(embedding).expand(x.shape[0], -1).chunk(self.blocks + 1, dim=1)
        h = nn.functional.silu(self.inp(x) + biases[0])
        for layer, bias in zip(self.hidden, biases[1:], strict=True):
            h = h + nn.functional.silu(layer(h) + bias)
        return self.out(h)


def _seeded(build: Callable[[], ModuleT], seed: int) -> ModuleT:
    """``build()`` with its weights drawn from ``seed``, leaving the global RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@dataclass
class TrainedModel:
    """A trained ε-prediction network; call it as ``model_fn(x, t)`` for :func:`ddim_sched.sample`.

    Attributes:
        network: The exponential moving average of the trained weights (the weights sampled with).
        losses: The training loss (MSE of ε̂ against ε) at each step, from the trained weights.
        seed, steps, batch_size, threads: How it was trained.
        seconds: Wall time of training.
    """

    network: EpsMLP
    losses: list[float]
    seed: int
    steps: int
    batch_size: int
    threads: int
    seconds: float

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂(x, t) without autograd: x [B, 64] float32, t a 0-d or [B] integer timestep tensor."""
        with torch.no_grad():
            return self.network(x, t)


def _learning_rate(step: int, steps: int, peak: float, warmup: int = 200) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    return peak * min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * step / steps))


def train_eps_model(
    data: DigitsData,
    steps: int,
    seed: int = 0,
    progress: Progress | None = None,
    *,
    width: int = 256,
    blocks: int = 3,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    ema_decay: float = 0.999,
    dequantize: bool = True,
    threads: int = 1,
) -> TrainedModel:
    """Train an :class:`EpsMLP` on ``data.train`` with the DDPM loss ‖ε̂(x_t, t) − ε‖², t uniform in 0..T−1.

    x_t comes from the demo scheduler's own ``add_noise`` (:func:`demo_scheduler`), so training and
    sampling share one ᾱ table. Adam, ``learning_rate`` with a 200-step warm-up and cosine decay; the
    returned network is the moving average of the weights (decay min(ema_decay, (1+i)/(10+i))).

    Args:
        data: The digits (only ``data.train`` is used).
        steps: Optimiser steps (0 returns the freshly initialised network).
        seed: Seeds the weights and every minibatch, timestep and noise draw.
        progress: Optional ``progress(done, total)``, called about 100 times.
        width, blocks: The network's hidden width and number of residual blocks.
        batch_size, learning_rate, ema_decay: Optimiser settings.
        dequantize: Add uniform noise of one grey level's width to the training images (see below).
        threads: CPU threads used while training (restored afterwards); part of what fixes the weights.

    Returns:
        A :class:`TrainedModel` (bit-identical for the same arguments on the same machine).

    Dequantization matters for inversion: trained on the 17 exact grey levels, the network learns to
    snap nearly clean inputs onto them (ε̂ then varies like 1/√(1−ᾱ_t) = 100× its input near t = 0),
    and ``invert`` diverged on held-out digits at S ≥ 200; trained on dequantized digits it did not.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0; got {steps!r}")
    scheduler = demo_scheduler()
    start = time.perf_counter()
    with cpu_threads(threads):
        network = _seeded(lambda: EpsMLP(width, blocks), seed)
        average = copy.deepcopy(network).requires_grad_(False)
        optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
        generator = torch.Generator().manual_seed(seed)
        losses: list[float] = []
        every = max(1, steps // 100)
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(step, steps, learning_rate)
            x_t, t, noise = _noisy_batch(data.train, scheduler, batch_size, dequantize, generator)
            loss = nn.functional.mse_loss(network(x_t, t), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                decay = min(ema_decay, (1 + step) / (10 + step))
                torch._foreach_lerp_(list(average.parameters()), list(network.parameters()), 1.0 - decay)
            losses.append(float(loss.detach()))
            if (step + 1) % every == 0 or step + 1 == steps:
                _report(progress, step + 1, steps)
    average.eval()
    return TrainedModel(average, losses, seed, steps, batch_size, threads, time.perf_counter() - start)


def _noisy_batch(
    images: torch.Tensor, scheduler: DDIMScheduler, batch_size: int, dequantize: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, ε) for a random minibatch: t uniform in 0..T−1, x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε by ``add_noise``.

    With ``dequantize`` each pixel's grey level is spread uniformly over its bin (±1/16, half the
    spacing of the 17 levels), so the model learns a continuous density rather than 17 spikes.
    """
    index = torch.randint(len(images), (batch_size,), generator=generator)
    t = torch.randint(scheduler.ddim_config.num_train_timesteps, (batch_size,), generator=generator)
    noise = torch.randn(batch_size, PIXELS, generator=generator)
    x0 = images[index]
    if dequantize:
        x0 = x0 + (torch.rand(batch_size, PIXELS, generator=generator) - 0.5) / 8
    return scheduler.add_noise(x0, noise, t), t, noise


# ---------------------------------------------------------------------- the feature classifier


class DigitClassifier(nn.Module):
    """A 64 → 128 → 64 → 10 ReLU MLP classifying digits; :meth:`features` is its last hidden layer (64 units)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(PIXELS, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations (after ReLU), [B, 64], for images x [B, 64]."""
        return self.hidden(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, 10]."""
        return self.head(self.features(x))


def train_classifier(
    data: DigitsData,
    steps: int = 2000,
    seed: int = 0,
    progress: Progress | None = None,
    *,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    threads: int = 1,
) -> DigitClassifier:
    """Train a :class:`DigitClassifier` on ``data.train`` (cross-entropy, Adam, seeded minibatches).

    Args:
        data: The digits (only the training split and its labels are used).
        steps: Optimiser steps.
        seed: Seeds the weights and the minibatches.
        progress: Optional ``progress(done, total)``.
        batch_size, learning_rate: Optimiser settings.
        threads: CPU threads used while training (restored afterwards).

    Returns:
        The classifier in eval mode, without gradients (bit-identical for the same arguments and machine).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0; got {steps!r}")
    with cpu_threads(threads):
        classifier = _seeded(DigitClassifier, seed)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=learning_rate)
        generator = torch.Generator().manual_seed(seed)
        every = max(1, steps // 20)
        for step in range(steps):
            index = torch.randint(len(data.train), (batch_size,), generator=generator)
            loss = nn.functional.cross_entropy(classifier(data.train[index]), data.train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if (step + 1) % every == 0 or step + 1 == steps:
                _report(progress, step + 1, steps)
    return classifier.eval().requires_grad_(False)


def accuracy(classifier: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` [N, 64] whose predicted class equals ``labels`` [N]."""
    with torch.no_grad():
        return float((classifier(images).argmax(dim=1) == labels).to(torch.float64).mean())
