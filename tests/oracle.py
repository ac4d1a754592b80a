"""The tests' independent references: the DDIM step as a float64 closed form, and the models they step.

Written from the formulas (docs/concepts.md: eqs. 9, 12 and 16 of the DDIM paper), not from ddim_sched's
code: ᾱ in, x_prev and x̂0 out, term by term. Only tests import this module.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck

MU, C = 0.0, 0.5  # the Gaussian data N(μ, c²·I) of the inversion tests


def _per_sample(value, like: torch.Tensor) -> torch.Tensor:
    """A float, [] or [B] value as a float64 tensor shaped [B or 1, 1, ..., 1] against ``like``."""
    value = torch.as_tensor(value, dtype=torch.float64)
    return value.reshape((-1,) + (1,) * (like.dim() - 1)) if value.dim() else value


def closed_form_step(
    m: torch.Tensor,
    x: torch.Tensor,
    alpha_bar_t,
    alpha_bar_prev,
    eta=0.0,
    prediction_type: str = "epsilon",
    clip: str = "none",
    use_clipped: bool = False,
    noise: torch.Tensor | None = None,
    clip_range: float = 1.0,
    ratio: float = 0.9,
    max_value: float = 3.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM eqs. 9, 16 and 12 in float64 for ᾱ_t → ᾱ_prev (floats, [] or [B] tensors): (x_prev, x̂0).

    ``clip``: "none", "clip" (clamp x̂0 to ±clip_range) or "threshold" (Imagen: per sample, s = the
    ``ratio`` quantile of |x̂0| clamped to [1, max_value], x̂0 = clamp(x̂0, −s, s)/s). The ε̂ weight
    √(1 − ᾱ_prev − σ²) is written without cancellation, as
    √((1 − ᾱ_prev)/(1 − ᾱ_t) · ((1 − η²)(1 − ᾱ_t/ᾱ_prev) + ᾱ_t/ᾱ_prev · (1 − ᾱ_prev))).
    """
    m, x = m.double(), x.double()
    a_t, a_prev, eta = (_per_sample(v, x) for v in (alpha_bar_t, alpha_bar_prev, eta))
    b_t = 1 - a_t
    if prediction_type == "epsilon":
        x0, eps = (x - b_t.sqrt() * m) / a_t.sqrt(), m
    elif prediction_type == "sample":
        x0 = m
        eps = (x - a_t.sqrt() * x0) / b_t.sqrt()
    else:  # v = √ᾱ·ε − √(1−ᾱ)·x0
        x0, eps = a_t.sqrt() * x - b_t.sqrt() * m, a_t.sqrt() * m + b_t.sqrt() * x
    if clip == "clip":
        x0 = x0.clamp(-clip_range, clip_range)
    elif clip == "threshold":
        flat = x0.reshape(x0.shape[0], -1)
        s = torch.quantile(flat.abs(), ratio, dim=1).clamp(1, max_value).reshape((-1,) + (1,) * (x.dim() - 1))
        x0 = torch.maximum(torch.minimum(x0, s), -s) / s
    if clip != "none" and use_clipped:
        eps = (x - a_t.sqrt() * x0) / b_t.sqrt()
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
    q = a_t / a_prev
    direction = ((1 - a_prev) / (1 - a_t) * ((1 - eta**2) * (1 - q) + q * (1 - a_prev))).clamp(min=0).sqrt()
    prev = a_prev.sqrt() * x0 + direction * eps
    if noise is not None:
        prev = prev + sigma * noise.double()
    return prev, x0


def dummy_model(sample: torch.Tensor, t) -> torch.Tensor:
    """diffusers' scheduler-test model m(x, t) = x · t/(t + 1), for any timestep shape ([], [B] or a
    per-element shape); evaluated in at least float32 (x · t overflows float16), in x's dtype."""
    dtype = torch.promote_types(sample.dtype, torch.float32)
    t = torch.as_tensor(t, device=sample.device).to(dtype)
    t = t.reshape(tuple(t.shape) + (1,) * (sample.dim() - t.dim())) if t.dim() else t
    return (sample.to(dtype) * t / (t + 1)).to(sample.dtype)


def exact_gaussian_model(scheduler, mu: float = MU, c: float = C):
    """model_fn(x, t) returning the exact prediction, for the scheduler's prediction_type, for data N(μ, c²I).

    x_t = √ᾱ·x0 + √(1−ᾱ)·ε is Gaussian; the MMSE predictions are ε* = √(1−ᾱ)·r and x0* = μ + √ᾱ·c²·r with
    r = (x_t − √ᾱ·μ)/(ᾱ·c² + 1 − ᾱ), and v* = √ᾱ·ε* − √(1−ᾱ)·x0*.
    """
    alpha_bar = scheduler.alpha_bar
    prediction_type = scheduler.config.prediction_type

    def model_fn(x, t):
        a = alpha_bar[int(t)].to(x.dtype)
        residual = (x - a.sqrt() * mu) / (a * c * c + 1 - a)
        eps = (1 - a).sqrt() * residual
        if prediction_type == "epsilon":
            return eps
        x0 = mu + a.sqrt() * c * c * residual  # E[x0 | x_t], finite at ᾱ = 0 too
        if prediction_type == "sample":
            return x0
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    return model_fn


def gaussian_data(shape=(4, 128), dtype=torch.float64, seed: int = 0, mu: float = MU, c: float = C) -> torch.Tensor:
    """Samples of N(μ, c²I), seeded."""
    generator = torch.Generator().manual_seed(seed)
    return (mu + c * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)


# Shared by the step tests: hypothesis settings, the three ways to bound x̂0, seeded inputs, one step's closed form.
HYPOTHESIS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
CLIPS = {
    "none": dict(clip_sample=False),
    "clip": dict(clip_sample=True, clip_sample_range=1.5),
    "threshold": dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0),
}


def sample_inputs(shape, dtype=torch.float64, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn((3,) + tuple(shape), generator=g, dtype=torch.float64)).to(dtype).unbind(0)


def expected_step(scheduler, m, x, t, eta, clip, noise):
    """The float64 closed form for one step of ``scheduler`` from timestep(s) t ([] or [B])."""
    t = torch.as_tensor(t)
    prev = scheduler.previous_timestep(t)
    alpha_bar = torch.cat([torch.tensor([scheduler.final_alpha_cumprod.double().item()]), scheduler.alpha_bar])
    return closed_form_step(
        m,
        x,
        alpha_bar[t + 1],
        alpha_bar[prev + 1],
        eta,
        scheduler.config.prediction_type,
        clip,
        noise=noise,
        clip_range=1.5,
        ratio=0.9,
        max_value=3.0,
    )
