"""Epsilon scaling (Ning et al. 2024, ADM-ES; docs/recipes.md (exposure bias)): ε̂/λ with x̂0 consistent with x_t."""

import math

import pytest
import torch

from ddim_sched import DDIMScheduler, FlowMatchDDIMScheduler, epsilon_scaling, epsilon_scaling_hook
from tests.tolerances import EXACT_RTOL, rel_l2


def x0_eps(kind, m, x, a, b):
    """Eq. 9 written out: (x̂0, ε̂) of a model output m at x_t = a·x0 + b·ε."""
    if kind == "epsilon":
        return (x - b * m) / a, m
    if kind == "sample":
        return m, (x - a * m) / b
    if kind == "v_prediction":
        return a * x - b * m, a * m + b * x
    return x - b * m, x + a * m  # flow velocity u = ε − x0 with a = 1 − σ, b = σ


def tensors(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 2, 4, 4, generator=g, dtype=dtype), torch.randn(3, 2, 4, 4, generator=g, dtype=dtype)


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scaled_output_reads_as_eps_over_lambda(kind, dtype):
    scheduler = DDIMScheduler(prediction_type=kind)
    m, x = tensors(dtype=dtype)
    lam = 1.017
    for t in (999, 500, 3):
        a, b = math.sqrt(float(scheduler.alpha_bar[t])), math.sqrt(1 - float(scheduler.alpha_bar[t]))
        scaled = epsilon_scaling(scheduler, m, t, x, lam)
        _, eps = x0_eps(kind, m.double(), x.double(), a, b)
        x0_scaled, eps_scaled = x0_eps(kind, scaled.double(), x.double(), a, b)
        assert scaled.dtype == dtype
        assert rel_l2(eps_scaled, eps / lam) <= EXACT_RTOL[dtype] * 10
        assert rel_l2(x0_scaled, (x.double() - b * eps / lam) / a) <= EXACT_RTOL[dtype] * 10 * (1 + b / a)


def test_epsilon_prediction_is_division_and_one_changes_nothing():
    scheduler = DDIMScheduler()
    m, x = tensors()
    assert torch.equal(epsilon_scaling(scheduler, m, 400, x, 1.0), m)
    torch.testing.assert_close(epsilon_scaling(scheduler, m, 400, x, 1.005), m / 1.005, rtol=1e-15, atol=0)
    per_sample = epsilon_scaling(scheduler, m, torch.tensor([400, 10, 999]), x, 1.005)
    torch.testing.assert_close(per_sample, m / 1.005, rtol=1e-15, atol=0)


def test_flow_velocity():
    scheduler = FlowMatchDDIMScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    u, x = tensors()
    t = scheduler.timesteps[4]
    sigma = float(scheduler.noise_levels[4])
    scaled = epsilon_scaling(scheduler, u, t, x, 1.01)
    _, eps = x0_eps("flow", u, x, 1 - sigma, sigma)
    _, eps_scaled = x0_eps("flow", scaled, x, 1 - sigma, sigma)
    assert rel_l2(eps_scaled, eps / 1.01) <= 1e-12


def test_pure_noise_is_left_unchanged():
    scheduler = DDIMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    m, x = tensors()
    out = epsilon_scaling(scheduler, m, 999, x, 1.01)  # ᾱ = 0: x_t is the noise itself
    assert torch.equal(out, m) and out.isfinite().all()


def test_forward_hook_rewrites_a_denoisers_output():
    scheduler = DDIMScheduler(prediction_type="v_prediction")

    class Denoiser(torch.nn.Module):
        def forward(self, sample, timestep, return_dict=True):
            return (sample * 0.5,) if not return_dict else type("Out", (), {"sample": sample * 0.5})()

    net = Denoiser()
    x = tensors()[1]
    handle = net.register_forward_hook(epsilon_scaling_hook(scheduler, 1.01), with_kwargs=True)
    try:
        expected = epsilon_scaling(scheduler, x * 0.5, 300, x, 1.01)
        assert torch.equal(net(x, 300, return_dict=False)[0], expected)
        assert torch.equal(net(sample=x, timestep=torch.tensor(300)).sample, expected)
    finally:
        handle.remove()


def test_errors():
    m, x = tensors()
    with pytest.raises(ValueError, match="scale must be > 0.0"):
        epsilon_scaling(DDIMScheduler(), m, 1, x, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        epsilon_scaling(DDIMScheduler(), m[:1], 1, x, 1.01)
    with pytest.raises(ValueError, match="invert_sigmas"):
        epsilon_scaling_hook(FlowMatchDDIMScheduler(invert_sigmas=True), 1.01)
