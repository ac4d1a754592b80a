"""CFG++ (Chung et al. 2024; docs/recipes.md (cfg++)): x̂0 from the guided output, the direction term of DDIM
eq. 12 from the unconditional one, through the scheduler's public step."""

import math

import pytest
import torch

from ddim_sched import DDIMInverseScheduler, DDIMParallelScheduler, DDIMScheduler, cfg_pp_step
from ddim_sched.toy import GaussianMixture, sliced_wasserstein
from tests.tolerances import EXACT_RTOL, rel_l2

PREDICTION_TYPES = ["epsilon", "sample", "v_prediction"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def scheduler_for(prediction_type="epsilon", steps=10, **config):
    config = {"clip_sample": False, **config}
    scheduler = DDIMScheduler(prediction_type=prediction_type, **config)
    scheduler.set_timesteps(steps)
    return scheduler


def tensors(shape=(3, 2, 4, 4), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(4)]


def x0_eps(kind, m, x, a_t):
    """Eq. 9 written out on the VP path: (x̂0, ε̂) of a model output m at x_t with ᾱ_t = a_t."""
    if kind == "epsilon":
        return (x - math.sqrt(1 - a_t) * m) / math.sqrt(a_t), m
    if kind == "sample":
        return m, (x - math.sqrt(a_t) * m) / math.sqrt(1 - a_t)
    return math.sqrt(a_t) * x - math.sqrt(1 - a_t) * m, math.sqrt(a_t) * m + math.sqrt(1 - a_t) * x


def reference(scheduler, m_u, m_c, t, x, lam, eta=0.0, z=None, clip=None):
    """The CFG++ step written out in float64 from ᾱ (eqs. 9, 12, 16), t per sample ([B] ints)."""
    alpha_bar = scheduler.alpha_bar
    kind = scheduler.config.prediction_type
    final = 1.0 if scheduler.config.set_alpha_to_one else float(alpha_bar[0])
    out = []
    for i, ti in enumerate(t):
        prev = scheduler.previous_timestep(int(ti))
        a_t, a_s = float(alpha_bar[ti]), (float(alpha_bar[prev]) if prev >= 0 else final)
        xi = x[i].double()
        guided = m_u[i].double() + lam * (m_c[i].double() - m_u[i].double())
        x0, _ = x0_eps(kind, guided, xi, a_t)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        _, eps_u = x0_eps(kind, m_u[i].double(), xi, a_t)
        sigma = eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(1 - a_t / a_s)
        xs = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps_u
        if z is not None:
            xs = xs + sigma * z[i].double()
        out.append(xs)
    return torch.stack(out)


# ------------------------------------------------------------------ at equal outputs it is the plain step


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_equal_outputs_give_the_plain_step_bit_for_bit(prediction_type, dtype, eta):
    scheduler = scheduler_for(prediction_type)
    m, _, x, _ = tensors(dtype=dtype)
    for t in (int(scheduler.timesteps[0]), scheduler.timesteps[4], torch.tensor([999, 499, 99])[: len(x)]):
        plain = scheduler.step(m, t, x, eta=eta, generator=torch.Generator().manual_seed(5))
        ours = cfg_pp_step(scheduler, m, m.clone(), t, x, 0.6, eta=eta, generator=torch.Generator().manual_seed(5))
        assert torch.equal(ours.prev_sample, plain.prev_sample)
        assert torch.equal(ours.pred_original_sample, plain.pred_original_sample)
        assert ours.prev_sample.dtype == dtype


def test_zero_scale_is_the_unconditional_step():
    scheduler = scheduler_for("v_prediction")
    m_u, m_c, x, _ = tensors()
    t = int(scheduler.timesteps[3])
    assert torch.equal(cfg_pp_step(scheduler, m_u, m_c, t, x, 0.0).prev_sample, scheduler.step(m_u, t, x).prev_sample)


# ------------------------------------------------------------------ against the definition


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lam", [0.3, 1.0, 1.5])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_matches_the_written_out_step(prediction_type, dtype, lam, eta):
    scheduler = scheduler_for(prediction_type, set_alpha_to_one=False)
    m_u, m_c, x, z = tensors(dtype=dtype)
    visited = scheduler.timesteps.tolist()
    for t in (visited[0], visited[5], visited[-1]):
        ours = cfg_pp_step(scheduler, m_u, m_c, t, x, lam, eta=eta, variance_noise=z).prev_sample
        expected = reference(scheduler, m_u, m_c, [t] * len(x), x, lam, eta, z)
        assert rel_l2(ours, expected) <= EXACT_RTOL[dtype] * 10
    # One timestep per sample, η per sample, as the scheduler's step takes them.
    per_sample = torch.tensor(visited[:3])
    ours = cfg_pp_step(
        scheduler, m_u, m_c, per_sample, x, lam, eta=torch.full((3,), eta, dtype=dtype), variance_noise=z
    ).prev_sample
    assert rel_l2(ours, reference(scheduler, m_u, m_c, visited[:3], x, lam, eta, z)) <= EXACT_RTOL[dtype] * 10


def test_clipping_clips_the_guided_x0_and_keeps_the_unconditional_direction():
    scheduler = scheduler_for("epsilon", clip_sample=True, clip_sample_range=1.0)
    m_u, m_c, x, _ = tensors(dtype=torch.float64)
    t = int(scheduler.timesteps[1])
    ours = cfg_pp_step(scheduler, m_u, m_c, t, x, 0.8).prev_sample
    assert rel_l2(ours, reference(scheduler, m_u, m_c, [t] * 3, x, 0.8, clip=1.0)) <= EXACT_RTOL[torch.float64]


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_thresholding_keeps_the_thresholded_x0_and_the_unconditional_direction(prediction_type):
    scheduler = scheduler_for(prediction_type, thresholding=True, sample_max_value=1.5)
    m_u, m_c, x, _ = tensors(dtype=torch.float64)
    t = int(scheduler.timesteps[2])
    prev = scheduler.previous_timestep(t)
    a_t, a_s = float(scheduler.alpha_bar[t]), float(scheduler.alpha_bar[prev])
    out = cfg_pp_step(scheduler, m_u, m_c, t, x, 0.7)
    x0 = out.pred_original_sample  # the scheduler's thresholded x̂0 of m_λ
    assert torch.equal(x0, scheduler.step(torch.add(m_u, m_c - m_u, alpha=0.7), t, x).pred_original_sample)
    _, eps_u = x0_eps(prediction_type, m_u, x, a_t)
    expected = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * eps_u
    assert rel_l2(out.prev_sample, expected) <= EXACT_RTOL[torch.float64]


def test_parallel_scheduler_and_a_pipeline_loop_variable():
    scheduler = DDIMParallelScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    m_u, m_c, x, _ = tensors()
    t = scheduler.timesteps[2]  # a 0-d tensor element, as a pipeline loop yields it
    assert torch.equal(cfg_pp_step(scheduler, m_u, m_c, t, x, 0.5).prev_sample,
                       cfg_pp_step(scheduler, m_u, m_c, int(t), x, 0.5).prev_sample)  # fmt: skip


def test_errors():
    scheduler = scheduler_for()
    m_u, m_c, x, _ = tensors()
    t = int(scheduler.timesteps[0])
    inverse = DDIMInverseScheduler()
    inverse.set_timesteps(10)
    with pytest.raises(TypeError, match="needs a ddim_sched DDIMScheduler.*got DDIMInverseScheduler"):
        cfg_pp_step(inverse, m_u, m_c, t, x, 0.5)
    with pytest.raises(ValueError, match="must have the same shape"):
        cfg_pp_step(scheduler, m_u, m_c[:2], t, x, 0.5)
    with pytest.raises(TypeError, match="guidance_scale must be a real number"):
        cfg_pp_step(scheduler, m_u, m_c, t, x, "0.5")
    with pytest.raises(ValueError, match="guidance_scale must be finite"):
        cfg_pp_step(scheduler, m_u, m_c, t, x, math.inf)
    with pytest.raises(TypeError, match="model_output_cond must be a floating-point tensor"):
        cfg_pp_step(scheduler, m_u, m_c.long(), t, x, 0.5)


# ------------------------------------------------------------------ what it changes (docs/recipes.md)


def test_on_a_class_conditional_mixture_cfg_pp_overshoots_the_class_less_than_cfg():
    """Guidance towards class 1 of a two-class mixture: CFG at w = 7.5 pushes the samples' mean past the
    class mean; CFG++ at the matched λ = w/12.5 = 0.6 stays closer to the class distribution."""
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        set_alpha_to_one=False, timestep_spacing="trailing",
    )  # fmt: skip
    data = GaussianMixture([[-1.0, 0.0], [1.0, 0.0]], 0.3, alpha_bar=scheduler)
    one = GaussianMixture.gaussian([1.0, 0.0], [0.3, 0.3], alpha_bar=scheduler)
    target = one.sample(2000, generator=torch.Generator().manual_seed(1))

    def run(plus):
        scheduler.set_timesteps(20)
        x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
        for t in scheduler.timesteps.tolist():
            u, c = data.eps(x, t), one.eps(x, t)
            x = cfg_pp_step(scheduler, u, c, t, x, 0.6) if plus else scheduler.step(u + 7.5 * (c - u), t, x)
            x = x.prev_sample
        return x

    cfg, cfg_pp = run(False), run(True)
    distance = {name: float(sliced_wasserstein(x, target, generator=torch.Generator().manual_seed(2)))
                for name, x in (("cfg", cfg), ("cfg_pp", cfg_pp))}  # fmt: skip
    assert 1.0 < cfg_pp[:, 0].mean() < cfg[:, 0].mean()
    assert distance["cfg_pp"] < distance["cfg"]
