"""ddim_sched.training: SNR, min-SNR-γ weights (Hang et al. 2023) for every target, and SD3's flow timestep
densities (Esser et al. 2024); against closed forms and diffusers' training_utils computed live."""

import math

import diffusers
import pytest
import torch
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3, compute_snr

from ddim_sched import DDIMScheduler, training

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
GAMMA = 5.0


# ------------------------------------------------------------------ SNR


def test_snr_at_is_alpha_bar_over_one_minus_alpha_bar():
    scheduler = DDIMScheduler(**SD)
    t = torch.tensor([0, 1, 250, 500, 999])
    alpha_bar = scheduler.alpha_bar[t]
    ours = training.snr_at(scheduler, t)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, alpha_bar / (1 - alpha_bar), rtol=1e-15, atol=0)
    # diffusers' compute_snr computes the same from its float32 table (1 − ᾱ_0 ≈ 8.5e-4 keeps ~4 digits there).
    torch.testing.assert_close(ours.float(), compute_snr(diffusers.DDPMScheduler(**SD), t), rtol=1e-4, atol=0)
    torch.testing.assert_close(training.snr_at(scheduler.alpha_bar, t), ours, rtol=0, atol=0)


def test_zero_terminal_snr_is_zero_and_flow_snr_ends():
    scheduler = DDIMScheduler(rescale_betas_zero_snr=True)
    assert training.snr_at(scheduler, torch.tensor([999])).tolist() == [0.0]
    assert training.flow_snr([0.0, 0.5, 1.0]).tolist() == [math.inf, 1.0, 0.0]


def test_snr_errors():
    with pytest.raises(ValueError, match=r"alpha_bar values must lie in \[0, 1\]"):
        training.snr([1.5])
    with pytest.raises(TypeError, match="integers"):
        training.snr_at(DDIMScheduler(), torch.tensor([1.0]))
    with pytest.raises(IndexError, match=r"\[0, 1000\)"):
        training.snr_at(DDIMScheduler(), torch.tensor([1000]))
    with pytest.raises(TypeError, match="alpha_bar or alphas_cumprod"):
        training.snr_at(object(), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"sigmas must lie in \[0, 1\]"):
        training.flow_snr([1.5])


# ------------------------------------------------------------------ min-SNR-γ


SNRS = [0.0, 1e-6, 0.01, 0.5, 1.0, 4.999, 5.0, 5.001, 50.0, 1e6, math.inf]


def closed_form(snr, target):
    """Hang et al.'s weights (appendix: the x0-loss weight min(SNR, γ) moved to each target), with their
    limits at SNR = 0 and ∞ taken by hand."""
    clipped = min(snr, GAMMA)
    if target == "epsilon":
        return 1.0 if snr == 0 else (0.0 if snr == math.inf else clipped / snr)
    if target == "sample":
        return clipped
    if target == "v_prediction":
        return 0.0 if snr == math.inf else clipped / (snr + 1)
    sigma = 1 / (1 + math.sqrt(snr))  # flow: SNR = ((1 − σ)/σ)², x0 − x̂0 = σ·(û − u)
    return clipped * sigma**2


@pytest.mark.parametrize("target", training.MIN_SNR_TARGETS)
def test_min_snr_weights_are_the_closed_forms_with_their_limits(target):
    ours = training.min_snr_weights(torch.tensor(SNRS, dtype=torch.float64), GAMMA, target)
    assert ours.dtype == torch.float64 and ours.isfinite().all()
    for value, snr in zip(ours.tolist(), SNRS, strict=True):
        assert value == pytest.approx(closed_form(snr, target), rel=1e-12, abs=1e-300), snr


def test_weights_at_zero_terminal_snr():
    scheduler = DDIMScheduler(rescale_betas_zero_snr=True)
    snr = training.snr_at(scheduler, torch.tensor([999, 998, 500]))
    eps = training.min_snr_weights(snr, prediction_type="epsilon")
    v = training.min_snr_weights(snr, prediction_type="v_prediction")
    assert eps[0] == 1.0 and v[0] == 0.0  # the limits, not 0/0
    assert eps.isfinite().all() and v.isfinite().all()


def test_flow_weight_is_the_x0_weight_moved_to_the_velocity():
    # x0 − x̂0 = σ·(û − u) on x_σ = (1 − σ)·x0 + σ·ε: the velocity loss weight is min(SNR, γ)·σ².
    sigma = torch.linspace(0, 1, 101, dtype=torch.float64)
    ours = training.min_snr_weights(training.flow_snr(sigma), GAMMA, "flow_prediction")
    snr = ((1 - sigma) / sigma) ** 2
    expected = torch.where(sigma > 0, snr.clamp(max=GAMMA) * sigma**2, torch.zeros_like(sigma))
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-300)


def test_diffusers_script_formula_at_zero_snr_is_observed(observe):
    # What the example scripts compute (min(SNR, γ)/SNR for ε): recorded, not asserted.
    snr = torch.tensor([0.0])
    scripts = torch.stack([snr, GAMMA * torch.ones_like(snr)], dim=1).min(dim=1)[0] / snr
    observe(f"diffusers' example-script ε weight at SNR = 0: {scripts.tolist()}")


def test_min_snr_errors():
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        training.min_snr_weights([1.0], prediction_type="velocity")
    with pytest.raises(ValueError, match="gamma must be > 0.0"):
        training.min_snr_weights([1.0], gamma=0.0)
    with pytest.raises(ValueError, match="snr_values must be >= 0"):
        training.min_snr_weights([-1.0])


# ------------------------------------------------------------------ SD3 timestep densities


@pytest.mark.parametrize(
    ("scheme", "kwargs"),
    [("logit_normal", dict(logit_mean=0.0, logit_std=1.0)), ("logit_normal", dict(logit_mean=0.5, logit_std=0.8)),
     ("mode", dict(mode_scale=1.29)), ("uniform", {})],
)  # fmt: skip
def test_samplers_draw_what_diffusers_draws(scheme, kwargs):
    ours = training.sample_timesteps(scheme, 64, generator=torch.Generator().manual_seed(3), **kwargs)
    theirs = compute_density_for_timestep_sampling(
        scheme, 64, logit_mean=kwargs.get("logit_mean"), logit_std=kwargs.get("logit_std"),
        mode_scale=kwargs.get("mode_scale"), generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("scheme", "kwargs"),
    [("logit_normal", {}), ("logit_normal", dict(logit_mean=-0.5, logit_std=0.6)), ("mode", dict(mode_scale=1.29)),
     ("mode", dict(mode_scale=-0.5)), ("cosmap", {}), ("uniform", {})],
)  # fmt: skip
def test_densities_integrate_to_one_and_match_their_samplers(scheme, kwargs):
    grid = torch.linspace(0, 1, 40_001, dtype=torch.float64)
    density = training.timestep_density(scheme, grid, **kwargs)
    assert density.isfinite().all() and (density >= 0).all()
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-4)
    # The empirical CDF of 20 000 draws against the density's CDF (Kolmogorov–Smirnov distance).
    draws = training.sample_timesteps(scheme, 20_000, generator=torch.Generator().manual_seed(0), **kwargs)
    cdf = torch.cumulative_trapezoid(density, grid)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), cdf])
    model_cdf = torch.from_numpy(
        __import__("numpy").interp(draws.sort().values.double().numpy(), grid.numpy(), cdf.numpy())
    )
    empirical = torch.arange(1, len(draws) + 1, dtype=torch.float64) / len(draws)
    assert (model_cdf - empirical).abs().max().item() < 0.015


def test_logit_normal_density_is_the_papers_formula():
    t = torch.tensor([0.1, 0.3, 0.5, 0.9], dtype=torch.float64)
    m, s = 0.3, 0.7
    logit = torch.log(t / (1 - t))
    expected = torch.exp(-((logit - m) ** 2) / (2 * s * s)) / (s * math.sqrt(2 * math.pi) * t * (1 - t))
    torch.testing.assert_close(training.timestep_density("logit_normal", t, logit_mean=m, logit_std=s), expected)


def test_sd3_loss_weights_are_diffusers():
    sigmas = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    for scheme in ("sigma_sqrt", "cosmap", "logit_normal", None):
        torch.testing.assert_close(
            training.sd3_loss_weights(scheme, sigmas), compute_loss_weighting_for_sd3(scheme, sigmas).double()
        )


def test_density_errors():
    with pytest.raises(ValueError, match="scheme must be one of 'logit_normal', 'mode', 'cosmap', 'uniform'"):
        training.sample_timesteps("lognorm", 4)
    with pytest.raises(ValueError, match="mode_scale must lie in"):
        training.sample_timesteps("mode", 4, mode_scale=2.0)
    with pytest.raises(ValueError, match="logit_std must be > 0.0"):
        training.timestep_density("logit_normal", [0.5], logit_std=0.0)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        training.timestep_density("uniform", [1.5])
