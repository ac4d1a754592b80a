"""ddim_sched.toy: exact denoisers of Gaussian mixtures, against dense closed forms and Monte Carlo."""

import math

import pytest
import torch

from ddim_sched import DDIMScheduler
from ddim_sched.toy import GaussianMixture, sliced_wasserstein
from tests.tolerances import EXACT_RTOL, rel_l2

SCHEDULER = DDIMScheduler(clip_sample=False)
ALPHA_BAR = SCHEDULER.alpha_bar  # float64
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def ab(t):
    a2 = ALPHA_BAR[t]
    return a2.sqrt(), (1 - a2).sqrt()


def three_mode_mixture():
    """Unequal weights, anisotropic stds, 3-D: exercises every parameter of the class."""
    means = torch.tensor([[1.0, -0.5, 0.2], [-1.0, 0.3, 0.0], [0.2, 1.2, -0.8]], dtype=torch.float64)
    stds = torch.tensor([[0.3, 0.1, 0.5], [0.2, 0.4, 0.1], [0.6, 0.2, 0.3]], dtype=torch.float64)
    return GaussianMixture(means, stds, weights=[0.5, 0.3, 0.2], alpha_bar=SCHEDULER)


# ---------------------------------------------------------------------- single Gaussian closed form


@pytest.mark.parametrize("t", [0, 10, 250, 700, 999])
def test_single_gaussian_matches_dense_gaussian_conditioning(t):
    # x0 ~ N(μ, Σ0) and x_t = a x0 + b ε are jointly Gaussian, so with C = a²Σ0 + b²I:
    # E[x0|x_t] = μ + aΣ0 C⁻¹(x_t − aμ), E[ε|x_t] = b C⁻¹(x_t − aμ). Dense solve, not the class's formula.
    g = torch.Generator().manual_seed(0)
    d = 5
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    c = torch.rand(d, generator=g, dtype=torch.float64) + 0.05
    model = GaussianMixture.gaussian(mu, c, alpha_bar=SCHEDULER)
    x_t = torch.randn(7, d, generator=g, dtype=torch.float64)
    a, b = ab(t)
    sigma0 = torch.diag(c**2)
    C = a**2 * sigma0 + b**2 * torch.eye(d, dtype=torch.float64)
    solved = torch.linalg.solve(C, (x_t - a * mu).T).T
    x0_expected = mu + a * solved @ sigma0
    eps_expected = b * solved
    v_expected = a * eps_expected - b * x0_expected
    tol = EXACT_RTOL[torch.float64]
    assert rel_l2(model.x0(x_t, t), x0_expected) < tol
    assert rel_l2(model.eps(x_t, t), eps_expected) < tol
    assert rel_l2(model.v(x_t, t), v_expected) < tol


def test_identical_components_are_one_gaussian():
    mu, c = torch.tensor([0.3, -0.7]), torch.tensor([0.2, 0.9])
    single = GaussianMixture.gaussian(mu, c, alpha_bar=SCHEDULER)
    tripled = GaussianMixture(mu.expand(3, 2), c.expand(3, 2), weights=[0.2, 0.5, 0.3], alpha_bar=SCHEDULER)
    x = torch.randn(11, 2, dtype=torch.float64)
    for p in PREDICTION_TYPES:
        assert rel_l2(tripled.predict(x, 400, p), single.predict(x, 400, p)) < EXACT_RTOL[torch.float64]


def test_zero_snr_timestep_predicts_the_data_mean():
    # ᾱ = 0: x_t carries no information about x0, so E[x0|x_t] is the data mean for every x_t.
    scheduler = DDIMScheduler(rescale_betas_zero_snr=True)
    model = three_mode_mixture()
    model = GaussianMixture(model.means, model.stds, model.weights, alpha_bar=scheduler)
    x = 3 * torch.randn(6, 3, dtype=torch.float64)
    expected = model.mean().expand(6, 3)
    assert rel_l2(model.x0(x, 999), expected) < EXACT_RTOL[torch.float64]
    assert rel_l2(model.eps(x, 999), x) < EXACT_RTOL[torch.float64]  # b = 1: ε̂ = x_t − 0·x̂0


# ---------------------------------------------------------------------- identities and batching


@pytest.mark.parametrize("t", [0, 100, 600, 999])
def test_predictions_are_consistent_with_the_forward_marginal(t):
    # x_t = a·x̂0 + b·ε̂ exactly, and v = a·ε̂ − b·x̂0 (docs/reference.md (k-diffusion's view)).
    model = three_mode_mixture()
    x = torch.randn(9, 3, dtype=torch.float64)
    a, b = ab(t)
    x0, eps, v = model.x0(x, t), model.eps(x, t), model.v(x, t)
    assert rel_l2(a * x0 + b * eps, x) < EXACT_RTOL[torch.float64]
    assert rel_l2(v, a * eps - b * x0) < EXACT_RTOL[torch.float64]


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_every_prediction_type_gives_the_same_ddim_step(eta):
    # The three parameterisations describe one denoiser, so DDIMScheduler steps them identically.
    x = torch.randn(5, 3, dtype=torch.float64)
    noise = torch.randn(5, 3, dtype=torch.float64)
    outputs = []
    for p in PREDICTION_TYPES:
        scheduler = DDIMScheduler(clip_sample=False, prediction_type=p)
        scheduler.set_timesteps(20)
        model = GaussianMixture(
            three_mode_mixture().means, three_mode_mixture().stds, [0.5, 0.3, 0.2], alpha_bar=scheduler
        )
        t = int(scheduler.timesteps[3])
        outputs.append(scheduler.step(model.predict(x, t, p), t, x, eta=eta, variance_noise=noise))
    for out in outputs[1:]:
        assert rel_l2(out.prev_sample, outputs[0].prev_sample) < EXACT_RTOL[torch.float64]
        assert rel_l2(out.pred_original_sample, outputs[0].pred_original_sample) < EXACT_RTOL[torch.float64]


def test_per_sample_timesteps_equal_one_call_per_sample():
    model = three_mode_mixture()
    x = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0, 17, 500, 999])
    batched = model.eps(x, t)
    single = torch.cat([model.eps(x[i : i + 1], int(t[i])) for i in range(4)])
    assert torch.equal(batched, single)


def test_image_shaped_inputs_are_flattened_per_sample():
    d = 2 * 3 * 4
    model = GaussianMixture(torch.randn(2, d, dtype=torch.float64), 0.5, alpha_bar=SCHEDULER)
    x = torch.randn(3, 2, 3, 4, dtype=torch.float64)
    out = model.x0(x, 300)
    assert out.shape == x.shape
    assert torch.equal(out.reshape(3, d), model.x0(x.reshape(3, d), 300))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", PREDICTION_TYPES)
def test_float32_agrees_with_float64(device, p):
    model = GaussianMixture.ring(alpha_bar=SCHEDULER)
    x = 1.2 * torch.randn(500, 2, dtype=torch.float64)
    # t = 999 is left out: there x̂0 is near the mixture mean 0 and a relative error is ill-conditioned.
    for t in (0, 50, 500):
        got = model.predict(x.to(device, torch.float32), t, p)
        assert got.device.type == device and got.dtype == torch.float32
        assert rel_l2(got, model.predict(x, t, p)) < EXACT_RTOL[torch.float32]


def test_alpha_bar_from_tensor_scheduler_or_diffusers_scheduler():
    from_tensor = GaussianMixture.ring(alpha_bar=ALPHA_BAR)
    from_scheduler = GaussianMixture.ring(alpha_bar=SCHEDULER)
    assert torch.equal(from_tensor.alpha_bar, from_scheduler.alpha_bar)
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDIMScheduler()
    from_reference = GaussianMixture.ring(alpha_bar=reference)
    # diffusers keeps ᾱ in float32: the same table to float32 precision.
    assert rel_l2(from_reference.alpha_bar, ALPHA_BAR) < EXACT_RTOL[torch.float32]


# ---------------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize("t", [100, 400, 800])
def test_posterior_mean_matches_importance_sampling(t):
    # E[x0 | x_t] = ∫ x0 p(x_t|x0) p(x0) dx0 / ∫ p(x_t|x0) p(x0) dx0, estimated with x0 drawn from the data.
    model = three_mode_mixture()
    n = 400_000
    x0 = model.sample(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, b = ab(t)
    g = torch.Generator().manual_seed(2)
    points = a * model.sample(4, generator=g, dtype=torch.float64) + b * torch.randn(
        4, 3, generator=g, dtype=torch.float64
    )
    exact = model.x0(points, t)
    for i in range(points.shape[0]):
        log_w = -((points[i] - a * x0) ** 2).sum(dim=1) / (2 * b**2)
        w = (log_w - log_w.max()).exp()
        w = w / w.sum()
        estimate = (w[:, None] * x0).sum(dim=0)
        # Standard error of a self-normalised importance-sampling mean.
        se = ((w[:, None] ** 2) * (x0 - estimate) ** 2).sum(dim=0).sqrt()
        assert ((exact[i] - estimate).abs() <= 5 * se + 1e-9).all(), (t, i, exact[i], estimate, se)


def _orthogonality_z_scores(predict, model, t, n=400_000):
    """z-scores of E[(ε − ε̂(x_t))·φ(x_t)] = 0 for φ in {1, x_t, tanh(3 x_t)}, per dimension."""
    g = torch.Generator().manual_seed(3)
    x0 = model.sample(n, generator=g, dtype=torch.float64)
    eps = torch.randn(n, model.dim, generator=g, dtype=torch.float64)
    a, b = ab(t)
    x_t = a * x0 + b * eps
    residual = eps - predict(x_t, t)
    scores = []
    for phi in (torch.ones_like(x_t), x_t, torch.tanh(3 * x_t)):
        product = residual * phi
        scores.append(product.mean(dim=0) / (product.std(dim=0) / math.sqrt(n)))
    return torch.cat(scores).abs()


@pytest.mark.parametrize("t", [50, 300, 700])
def test_eps_prediction_is_orthogonal_to_functions_of_x_t(t):
    # The MMSE predictor E[ε|x_t] leaves a residual uncorrelated with every function of x_t.
    model = three_mode_mixture()
    assert _orthogonality_z_scores(model.eps, model, t).max() < 5
    # The check has power: a 3 % error in the predictor is detected.
    assert _orthogonality_z_scores(lambda x, s: 1.03 * model.eps(x, s), model, t).max() > 5


def test_sampling_matches_the_mixture_moments():
    model = three_mode_mixture()
    n = 200_000
    x = model.sample(n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    se_mean = x.std(dim=0) / math.sqrt(n)
    assert ((x.mean(dim=0) - model.mean()).abs() < 5 * se_mean).all()
    cov = torch.cov(x.T)
    # Standard error of a sample covariance entry ≈ sqrt((σ_ii σ_jj + σ_ij²)/n) (Gaussian approximation;
    # the mixture is not Gaussian, so allow a margin).
    var = torch.diag(model.covariance())
    se_cov = ((var[:, None] * var[None, :] + model.covariance() ** 2) / n).sqrt()
    assert ((cov - model.covariance()).abs() < 8 * se_cov).all()
    again = model.sample(n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(x, again)


@pytest.mark.parametrize("t", [None, 30, 500])
def test_log_density_integrates_to_one(t):
    model = GaussianMixture.ring(alpha_bar=SCHEDULER)
    lim, m = 4.0, 801
    grid = torch.linspace(-lim, lim, m, dtype=torch.float64)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    cell = (2 * lim / (m - 1)) ** 2
    assert abs(float(model.log_prob(points, t).exp().sum() * cell) - 1) < 1e-3


# ---------------------------------------------------------------------- sliced W2


def test_sliced_wasserstein_of_a_shift_is_its_length_over_sqrt_d():
    # Shifting a sample by δ moves every projection by θ·δ: SW2² = E[(θ·δ)²] = |δ|²/d exactly.
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    delta = torch.tensor([0.3, -0.4, 1.2], dtype=torch.float64)
    got = sliced_wasserstein(x + delta, x, projections=20_000, generator=torch.Generator().manual_seed(6))
    assert got == pytest.approx(float(delta.norm()) / math.sqrt(3), rel=0.03)
    assert sliced_wasserstein(x, x) == 0.0


# ---------------------------------------------------------------------- input errors


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="alpha_bar"):
        GaussianMixture.ring().eps(torch.zeros(1, 2), 0)
    model = GaussianMixture.ring(alpha_bar=SCHEDULER)
    with pytest.raises(ValueError, match="2 values per sample"):
        model.eps(torch.zeros(4, 3), 0)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1000\)"):
        model.eps(torch.zeros(4, 2), 1000)
    with pytest.raises(ValueError, match="prediction_type"):
        model.predict(torch.zeros(4, 2), 0, "x0")
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture(torch.zeros(2, 2), 0.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(2, 2), 1.0, weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="alpha_bar must be < 1"):
        GaussianMixture.ring(alpha_bar=torch.ones(10))
