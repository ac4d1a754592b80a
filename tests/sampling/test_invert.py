"""ddim_sched.invert on a model whose ε is known exactly (Gaussian data, closed-form posterior mean).

Data x0 ~ N(μ, c²I). Then x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε is Gaussian and the MMSE noise prediction is
ε*(x_t, t) = E[ε | x_t] = √(1−ᾱ_t)·r with r = (x_t − √ᾱ_t·μ) / (ᾱ_t·c² + 1 − ᾱ_t): a perfect
"trained model". Likewise E[x0 | x_t] = μ + √ᾱ_t·c²·r, and v = √ᾱ_t·ε − √(1−ᾱ_t)·x0.
"""

import pytest
import torch

import ddim_sched
from ddim_sched import DDIMScheduler, invert
from tests.oracle import exact_gaussian_model as exact_model
from tests.oracle import gaussian_data as data
from tests.tolerances import EXACT_RTOL, rel_l2


def decode(model_fn, x, scheduler):
    for t in scheduler.timesteps:
        x = scheduler.step(model_fn(x, t), t, x).prev_sample
    return x


def round_trip_error(S, k, dtype=torch.float64, **config):
    scheduler = DDIMScheduler(clip_sample=False, **config)
    scheduler.set_timesteps(S)
    model_fn = exact_model(scheduler)
    x0 = data(dtype=dtype)
    latent = invert(model_fn, x0, scheduler, fixed_point_iterations=k)
    return rel_l2(decode(model_fn, latent, scheduler), x0)


def test_classic_inversion_error_falls_like_one_over_S():
    steps = (10, 20, 50, 100)
    errors = [round_trip_error(S, 0) for S in steps]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    # First order in the step size: S · error is roughly constant (measured 2.6 to 2.7).
    scaled = [S * e for S, e in zip(steps, errors, strict=True)]
    assert max(scaled) / min(scaled) < 1.3, scaled
    # A few percent at S = 100 on N(0, 0.25·I) (docs/beyond.md's table: 1.8e-2 for its config): the order of magnitude.
    assert 0.01 < errors[-1] < 0.1, errors


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"timestep_spacing": "trailing"},
        # diffusers' stride rule with linspace lands off the schedule (999 → 899, then 888 is visited):
        # inversion must undo exactly those steps.
        {"timestep_spacing": "linspace"},
        {"timestep_spacing": "linspace", "prev_timestep_rule": "schedule"},
        {
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "steps_offset": 1,
            "set_alpha_to_one": False,
        },
        {"prediction_type": "v_prediction"},
        {"prediction_type": "sample"},
        {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
    ],
    ids=["leading", "trailing", "linspace-stride", "linspace-schedule", "sd", "v", "sample", "v-zero-snr"],
)
def test_fixed_point_inversion_is_exact(config):
    # With k = 10 the round trip at S = 50 is exact to 1e-6 relative in float64 (docs/beyond.md).
    assert round_trip_error(50, 10, **config) < 1e-6


def test_more_fixed_point_iterations_reduce_the_error():
    errors = [round_trip_error(20, k) for k in (0, 1, 2, 5)]
    assert all(b < a / 3 for a, b in zip(errors, errors[1:], strict=False)), errors


def test_float32_fixed_point_inversion():
    assert round_trip_error(50, 10, dtype=torch.float32) < 1e-4


def test_classic_step_is_the_swapped_ddim_update():
    # k = 0, epsilon: x_i = √ᾱ_i·x̂0 + √(1−ᾱ_i)·ε̂, with ε̂ = ε(x_{i+1}, t_i) and x̂0 read at x_{i+1}
    # on the level ᾱ_{i+1} it sits at (docs/reference.md (k-diffusion's view), "Inversion").
    scheduler = DDIMScheduler(clip_sample=False, steps_offset=1, set_alpha_to_one=False)
    scheduler.set_timesteps(4)
    model_fn = exact_model(scheduler)
    x0 = data()
    alpha_bar = scheduler.alpha_bar
    levels = scheduler.timesteps.tolist()  # [751, 501, 251, 1]; the final level is ᾱ[0]
    expected, a_next = x0, alpha_bar[0]
    for t in reversed(levels):
        eps = model_fn(expected, torch.tensor(t))
        x0_hat = (expected - (1 - a_next).sqrt() * eps) / a_next.sqrt()
        a_t = alpha_bar[t]
        expected, a_next = a_t.sqrt() * x0_hat + (1 - a_t).sqrt() * eps, a_t
    assert rel_l2(invert(model_fn, x0, scheduler), expected) < EXACT_RTOL[torch.float64]


def test_visits_the_reverse_of_the_sampling_loop_points():
    scheduler = DDIMScheduler(clip_sample=False, timestep_spacing="linspace")
    scheduler.set_timesteps(7)
    model_fn = exact_model(scheduler)
    x0 = data()
    seen = []
    latent = invert(
        model_fn, x0, scheduler, fixed_point_iterations=60, callback=lambda i, t, x: seen.append((i, int(t), x.clone()))
    )
    assert [i for i, _, _ in seen] == list(range(7))
    assert [t for _, t, _ in seen] == scheduler.timesteps.flip(0).tolist()
    assert torch.equal(seen[-1][2], latent)
    # Each forward step from an inverted point lands on the point inverted just before it.
    points = [x for _, _, x in reversed(seen)] + [x0]
    for i, t in enumerate(scheduler.timesteps):
        landed = scheduler.step(model_fn(points[i], t), t, points[i]).prev_sample
        assert rel_l2(landed, points[i + 1]) < 1e-9


def test_model_calls_and_scheduler_untouched():
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(5)
    exact = exact_model(scheduler)
    calls = []

    def model_fn(x, t):
        calls.append((tuple(x.shape), t.dtype, t.dim(), int(t)))
        return exact(x, t)

    timesteps = scheduler.timesteps.clone()
    invert(model_fn, data(), scheduler, fixed_point_iterations=2)
    assert len(calls) == 5 * 4  # k = 2: x_next, x_1, x_2, x_3 evaluated per step
    assert {c[:3] for c in calls} == {((4, 128), torch.int64, 0)}
    assert [c[3] for c in calls[::4]] == timesteps.flip(0).tolist()
    assert torch.equal(scheduler.timesteps, timesteps)
    assert scheduler.step_index is None  # no progress was recorded on the caller's scheduler


def test_batch_elements_are_inverted_independently():
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    model_fn = exact_model(scheduler)
    x0 = data()
    batched = invert(model_fn, x0, scheduler, fixed_point_iterations=1)
    single = torch.cat([invert(model_fn, x0[i : i + 1], scheduler, fixed_point_iterations=1) for i in range(4)])
    assert rel_l2(batched, single) < EXACT_RTOL[torch.float64]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"model_fn": None}, TypeError, "model_fn"),
        ({"x0": [1.0]}, TypeError, "x0"),
        ({"x0": torch.ones(2, 3, dtype=torch.int64)}, TypeError, "x0"),
        ({"x0": torch.tensor(1.0)}, ValueError, "x0"),
        ({"scheduler": object()}, TypeError, "scheduler"),
        ({"fixed_point_iterations": 1.0}, TypeError, "fixed_point_iterations"),
        ({"fixed_point_iterations": -1}, ValueError, "fixed_point_iterations"),
        ({"fixed_point_iterations": True}, TypeError, "fixed_point_iterations"),
        ({"callback": 3}, TypeError, "callback"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(3)
    arguments = {"model_fn": exact_model(scheduler), "x0": data(), "scheduler": scheduler, **kwargs}
    with pytest.raises(error, match=match):
        invert(arguments.pop("model_fn"), arguments.pop("x0"), arguments.pop("scheduler"), **arguments)


def test_needs_set_timesteps():
    scheduler = DDIMScheduler(clip_sample=False)
    with pytest.raises(ValueError, match="set_timesteps"):
        invert(exact_model(scheduler), data(), scheduler)


def test_a_step_that_forgets_its_input_cannot_be_inverted():
    # From ᾱ = 0 (zero terminal SNR) straight to ᾱ = 1, an x0-predicting step returns the model output.
    scheduler = DDIMScheduler(
        clip_sample=False,
        prediction_type="sample",
        set_alpha_to_one=True,
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
    )
    scheduler.set_timesteps(1)
    calls = []
    with pytest.raises(ValueError, match="cannot be inverted"):
        invert(lambda x, t: calls.append(t) or x, data(), scheduler)
    assert calls == []  # raised before any model call


def test_sample_is_the_scheduler_loop_and_reports_each_step():
    """``sample`` runs exactly the hand-written loop (η > 0, seeded) and calls back once per step."""
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(12)
    model_fn = exact_model(scheduler)
    x_T = torch.randn(3, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected, generator = x_T, torch.Generator().manual_seed(2)
    for t in scheduler.timesteps:
        expected = scheduler.step(model_fn(expected, t), t, expected, eta=0.5, generator=generator).prev_sample
    seen = []
    got = ddim_sched.sample(
        model_fn,
        x_T,
        scheduler,
        eta=0.5,
        generator=torch.Generator().manual_seed(2),
        callback=lambda i, t, x: seen.append((i, int(t))),
    )
    assert torch.equal(got, expected)
    assert seen == list(enumerate(scheduler.timesteps.tolist()))


def test_sample_rejects_an_inverse_scheduler_and_a_missing_schedule():
    with pytest.raises(ValueError, match="set_timesteps"):
        ddim_sched.sample(lambda x, t: x, torch.zeros(1, 2), DDIMScheduler())
    with pytest.raises(TypeError, match="scheduler must be a ddim_sched.DDIMScheduler"):
        ddim_sched.sample(lambda x, t: x, torch.zeros(1, 2), ddim_sched.DDIMInverseScheduler())
    with pytest.raises(TypeError, match="x_T must be a floating-point"):
        ddim_sched.sample(lambda x, t: x, torch.zeros(1, 2, dtype=torch.int64), DDIMScheduler())


def test_report_residuals_fall_with_iterations_and_tol_stops_early():
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(20)
    model_fn = exact_model(scheduler)
    x0 = data()
    _, classic = invert(model_fn, x0, scheduler, return_report=True)
    _, exact = invert(model_fn, x0, scheduler, fixed_point_iterations=10, return_report=True)
    assert (
        len(classic.residuals) == len(exact.residuals) == 20 and exact.timesteps == scheduler.timesteps.tolist()[::-1]
    )
    assert max(exact.residuals) < 1e-6 < max(classic.residuals)
    assert all(m <= r for m, r in zip(exact.median_residuals, exact.residuals, strict=True))
    latent, stopped = invert(model_fn, x0, scheduler, fixed_point_iterations=50, tol=1e-8, return_report=True)
    assert stopped.converged and max(stopped.residuals) <= 1e-8
    assert max(stopped.iterations) < 50  # stopped early
    assert rel_l2(decode(model_fn, latent, scheduler), x0) < 1e-6


def test_a_diverging_iteration_is_reported(caplog):
    """On the 8-mode ring with its exact denoiser the fixed-point map is not a contraction for samples
    between modes at high noise: the worst residual grows while typical samples converge. invert says so."""
    import logging

    from ddim_sched.toy import GaussianMixture

    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(50)
    mixture = GaussianMixture.ring(8, radius=1.0, std=0.1, alpha_bar=scheduler)
    x0 = mixture.sample(256, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="ddim_sched"):
        _, report = invert(mixture.model("epsilon"), x0, scheduler, fixed_point_iterations=10, return_report=True)
    diverged = [i for i, flag in enumerate(report.diverged) if flag]
    assert diverged
    for i in diverged:  # a few samples far off while most converged, and a warning naming the step
        assert report.residuals[i] > 1e3 * report.median_residuals[i]
        assert any(f"at timestep {report.timesteps[i]} " in r.getMessage() for r in caplog.records)
    assert not any(report.diverged[i] for i in range(50) if report.residuals[i] < 1e-9)


def test_a_diverging_sample_keeps_its_best_iterate():
    """One inverse step (custom timesteps [20]) on the ring, where the fixed-point map diverges for some
    samples: with k = 10 every sample still ends no further from a solution than classic inversion (k = 0)
    leaves it, while the converging samples gain orders of magnitude."""
    from ddim_sched.toy import GaussianMixture

    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(timesteps=[20])
    mixture = GaussianMixture.ring(8, radius=1.0, std=0.1, alpha_bar=scheduler)
    x0 = mixture.sample(256, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    model_fn, t = mixture.model("epsilon"), scheduler.timesteps[0]

    def residual(latent):
        landed = scheduler.step(model_fn(latent, t), t, latent).prev_sample
        return (landed - x0).norm(dim=1) / x0.norm(dim=1)

    classic = residual(invert(model_fn, x0, scheduler))
    latent, report = invert(model_fn, x0, scheduler, fixed_point_iterations=10, return_report=True)
    iterated = residual(latent)
    assert report.diverged == [True]
    assert bool((iterated <= classic).all())
    assert report.residuals[0] == pytest.approx(float(iterated.max()), rel=1e-12)
    assert float(iterated.median()) < 1e-3 * float(classic.median())


def test_tol_and_iterations_are_validated():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(5)
    with pytest.raises(ValueError, match="tol"):
        invert(lambda x, t: x, data(), scheduler, tol=-1.0)
    with pytest.raises(TypeError, match="tol"):
        invert(lambda x, t: x, data(), scheduler, tol="small")
    with pytest.raises(TypeError, match="fixed_point_iterations"):
        invert(lambda x, t: x, data(), scheduler, fixed_point_iterations=1.5)


def test_invert_under_autograd_raises_no_warning():
    """Differentiating through invert (x0 requires grad) warns nothing: the report's residuals are read
    off the graph. torch warns about a scalar read of a grad tensor only once per process unless told to
    warn always, so the test turns that on."""
    import warnings

    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(4)
    model_fn = exact_model(scheduler)
    x0 = data().requires_grad_(True)
    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _, classic = invert(model_fn, x0, scheduler, return_report=True)
            latent, iterated = invert(model_fn, x0, scheduler, fixed_point_iterations=2, tol=1e-3, return_report=True)
            latent.sum().backward()
    finally:
        torch.set_warn_always(warn_always)
    assert x0.grad is not None and bool(torch.isfinite(x0.grad).all())
    assert all(isinstance(r, float) for r in classic.residuals + iterated.residuals)
