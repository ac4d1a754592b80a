"""Closed forms and invariants of DDIM, and the diffusers-compatible configuration surface.

Closed forms (docs/reference.md (k-diffusion's view)): fed the exact ε, x0 or v of a noised x0, a deterministic step
recovers x0 and lands on the forward marginal at the previous timestep; η = 1 is the DDPM posterior.
Everything else: zero terminal SNR, spacing, config round trips with diffusers, the output type,
and that add_noise / get_velocity leave the scheduler alone and compute in at least float32.
"""

from __future__ import annotations

import json
import logging
import math

import diffusers
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ddim_sched
from ddim_sched import DDIMScheduler, DDIMSchedulerOutput
from ddim_sched.ddim.config import DIFFUSERS_FIELDS
from ddim_sched.tables.spacing import SPACINGS
from tests.diffusers_oracle import diffusers_scheduler
from tests.tolerances import EXACT_RTOL, FORWARD_RTOL, TABLE_RTOL, rel_l2

HYPOTHESIS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]
ITEM_SHAPE = (2, 4, 4)


@st.composite
def schedules(draw, min_T: int = 2):
    """(config, S) for the closed-form tests: no clipping, any schedule, spacing and prev rule."""
    T = draw(st.one_of(st.just(1000), st.integers(min_T, 1200)), label="num_train_timesteps")
    S = draw(st.one_of(st.integers(1, min(T, 50)), st.integers(1, T)), label="num_inference_steps")
    config = dict(
        num_train_timesteps=T,
        beta_schedule=draw(st.sampled_from(SCHEDULES), label="beta_schedule"),
        rescale_betas_zero_snr=draw(st.booleans(), label="rescale_betas_zero_snr"),
        timestep_spacing=draw(st.sampled_from(sorted(SPACINGS)), label="timestep_spacing"),
        prev_timestep_rule=draw(st.sampled_from(["stride", "schedule"]), label="prev_timestep_rule"),
        set_alpha_to_one=draw(st.booleans(), label="set_alpha_to_one"),
        clip_sample=False,
    )
    return config, S


def alpha_bar_prev(scheduler: DDIMScheduler, t: int) -> float:
    """ᾱ at the timestep a step from t lands on (final_alpha_cumprod past the end), in float64."""
    prev = scheduler.previous_timestep(t)
    if prev < 0:
        return 1.0 if scheduler.config.set_alpha_to_one else scheduler.alpha_bar[0].item()
    return scheduler.alpha_bar[prev].item()


# --------------------------------------------------------------------------------------- closed forms


@settings(max_examples=150, **HYPOTHESIS)
@given(case=schedules(), data=st.data())
def test_exact_prediction_recovers_x0_and_lands_on_the_forward_marginal(case, data):
    """With η = 0 and no clipping, the exact ε / x0 / v of x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε gives x̂0 = x0
    and x_prev = √ᾱ_prev·x0 + √(1−ᾱ_prev)·ε (DDIM eq. 12 with σ = 0)."""
    config, S = case
    prediction_type = data.draw(st.sampled_from(["epsilon", "sample", "v_prediction"]), label="prediction_type")
    dtype = data.draw(st.sampled_from([torch.float64, torch.float32]), label="dtype")
    seed = data.draw(st.integers(0, 2**20), label="seed")
    scheduler = DDIMScheduler(**config, prediction_type=prediction_type)
    try:
        scheduler.set_timesteps(S)
    except ValueError as err:  # zero SNR + epsilon on a schedule visiting ᾱ = 0: see tests/ddim/test_errors.py
        assert config["rescale_betas_zero_snr"] and prediction_type == "epsilon" and "v_prediction" in str(err)
        return
    index = data.draw(st.integers(0, S - 1), label="step index")
    t = scheduler.timesteps[index].item()
    a_t, a_prev = scheduler.alpha_bar[t].item(), alpha_bar_prev(scheduler, t)

    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn((2,) + ITEM_SHAPE, generator=generator, dtype=torch.float64)
    eps = torch.randn((2,) + ITEM_SHAPE, generator=generator, dtype=torch.float64)
    x_t = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps
    model_output = {
        "epsilon": eps,
        "sample": x0,
        "v_prediction": math.sqrt(a_t) * eps - math.sqrt(1 - a_t) * x0,
    }[prediction_type]
    out = scheduler.step(model_output.to(dtype), t, x_t.to(dtype), eta=0.0)
    expected_prev = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps

    # Rounding x_t to dtype is amplified by 1/√ᾱ_t when x0 is recovered from ε (ill-conditioned near ᾱ = 0).
    condition = 1 + math.sqrt((1 - a_t) / a_t) if prediction_type == "epsilon" else 2.0
    tolerance = EXACT_RTOL[dtype] * condition
    assert out.prev_sample.dtype == out.pred_original_sample.dtype == dtype
    assert rel_l2(out.pred_original_sample, x0) <= tolerance
    assert rel_l2(out.prev_sample, expected_prev) <= tolerance


@settings(max_examples=80, **HYPOTHESIS)
@given(case=schedules(), data=st.data())
def test_eta_one_is_the_ddpm_posterior(case, data):
    """η = 1: the step is the DDPM posterior q(x_prev | x_t, x0) of the spaced process, with
    α̃ = ᾱ_t/ᾱ_prev and β̃ = 1 − α̃:
    mean √ᾱ_prev·β̃/(1−ᾱ_t)·x0 + √α̃·(1−ᾱ_prev)/(1−ᾱ_t)·x_t,
    variance σ² = (1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev), read off via the step's linearity in variance_noise."""
    config, S = case
    seed = data.draw(st.integers(0, 2**20), label="seed")
    scheduler = DDIMScheduler(**config, prediction_type="sample")  # x0 given exactly: defined at ᾱ = 0 too
    scheduler.set_timesteps(S)
    t = scheduler.timesteps[data.draw(st.integers(0, S - 1), label="step index")].item()
    a_t, a_prev = scheduler.alpha_bar[t].item(), alpha_bar_prev(scheduler, t)
    generator = torch.Generator().manual_seed(seed)
    x0, x_t, z = (torch.randn((2,) + ITEM_SHAPE, generator=generator, dtype=torch.float64) for _ in range(3))

    deterministic = scheduler.step(x0, t, x_t, eta=1.0, variance_noise=torch.zeros_like(z)).prev_sample
    noisy = scheduler.step(x0, t, x_t, eta=1.0, variance_noise=z).prev_sample
    alpha_tilde = a_t / a_prev
    mean = (math.sqrt(a_prev) * (1 - alpha_tilde) * x0 + math.sqrt(alpha_tilde) * (1 - a_prev) * x_t) / (1 - a_t)
    variance = (1 - a_prev) / (1 - a_t) * (1 - alpha_tilde)
    assert rel_l2(deterministic, mean) <= 1e-9
    random_part = noisy - deterministic
    if variance == 0.0:
        assert torch.equal(random_part, torch.zeros_like(z))
    else:
        assert rel_l2(random_part, math.sqrt(variance) * z) <= 1e-9 * (1 + mean.norm().item() / z.norm().item())
    # σ(η) = η·σ(1) (eq. 16)
    half = scheduler.step(x0, t, x_t, eta=0.5, variance_noise=z).prev_sample
    half_deterministic = scheduler.step(x0, t, x_t, eta=0.5, variance_noise=torch.zeros_like(z)).prev_sample
    assert torch.allclose(half - half_deterministic, 0.5 * random_part, rtol=1e-9, atol=1e-12)


def test_eta_one_noise_has_the_ddpm_variance_statistically():
    """Drawn with a generator, the η = 1 noise has empirical variance σ² (20 000 draws, 3% band)."""
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(50)
    t = 420
    prev = scheduler.previous_timestep(t)
    a_t, a_prev = scheduler.alpha_bar[t].item(), scheduler.alpha_bar[prev].item()
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    x = torch.zeros(20_000, 1)
    m = torch.zeros(20_000, 1)
    generator = torch.Generator().manual_seed(0)
    noisy = scheduler.step(m, t, x, eta=1.0, generator=generator).prev_sample
    deterministic = scheduler.step(m, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
    empirical = (noisy - deterministic).double().var().item()
    assert abs(empirical / variance - 1) < 0.03


def test_per_sample_timesteps_equal_stepping_each_sample_alone():
    """A [B] timestep tensor steps each batch element as if alone."""
    scheduler = DDIMScheduler(clip_sample=False, prediction_type="v_prediction", timestep_spacing="trailing")
    scheduler.set_timesteps(20)
    generator = torch.Generator().manual_seed(3)
    x, m, z = (torch.randn((4,) + ITEM_SHAPE, generator=generator, dtype=torch.float64) for _ in range(3))
    timesteps = scheduler.timesteps[torch.tensor([0, 5, 19, 7])]
    batched = scheduler.step(m, timesteps, x, eta=0.7, variance_noise=z)
    for i, t in enumerate(timesteps.tolist()):
        alone = scheduler.step(m[i : i + 1], t, x[i : i + 1], eta=0.7, variance_noise=z[i : i + 1])
        for name in ("prev_sample", "pred_original_sample"):
            together, single = getattr(batched, name)[i : i + 1], getattr(alone, name)
            assert torch.allclose(together, single, rtol=1e-12, atol=1e-14), name


# --------------------------------------------------------------------------------------- zero SNR


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("T", [2, 10, 1000])
def test_zero_snr_makes_terminal_alpha_bar_zero_and_keeps_the_first(schedule, T):
    """Lin et al. Algorithm 1 (docs/concepts.md (beta schedules)): ᾱ_T = 0 exactly, ᾱ_0 unchanged, ᾱ still
    decreasing."""
    plain = DDIMScheduler(num_train_timesteps=T, beta_schedule=schedule).alpha_bar
    rescaled_scheduler = DDIMScheduler(num_train_timesteps=T, beta_schedule=schedule, rescale_betas_zero_snr=True)
    rescaled = rescaled_scheduler.alpha_bar
    assert rescaled[-1].item() == 0.0
    assert rescaled[0].item() == pytest.approx(plain[0].item(), rel=1e-12)
    assert (rescaled[1:] < rescaled[:-1]).all()
    assert rescaled_scheduler.betas[-1].item() == 1.0
    assert rescaled_scheduler.alphas_cumprod[-1].item() == 0.0


# --------------------------------------------------------------------------------------- spacing


@settings(max_examples=250, **HYPOTHESIS)
@given(T=st.one_of(st.just(1000), st.integers(1, 3000)), data=st.data(), name=st.sampled_from(sorted(SPACINGS)))
def test_spacing_is_strictly_decreasing_in_range_and_of_length_S(T, data, name):
    """Every registered spacing gives S distinct timesteps in [0, T), noisiest first; "quad" drops the
    duplicates its rule produces for large S (docs/concepts.md (timestep spacings)), so it gives the number of
    distinct values."""
    S = data.draw(st.one_of(st.integers(1, min(T, 100)), st.integers(1, T)), label="num_inference_steps")
    alpha_bar = DDIMScheduler(num_train_timesteps=T).alpha_bar
    # The largest steps_offset that keeps every timestep below T (spacings that ignore it: any value).
    offset_bound = T - 1 - int(SPACINGS[name](T, S, steps_offset=0, alpha_bar=alpha_bar).max())
    offset = data.draw(st.integers(0, min(offset_bound, 5)), label="steps_offset")
    timesteps = SPACINGS[name](T, S, steps_offset=offset, alpha_bar=alpha_bar)
    assert timesteps.dtype.kind == "i"
    if name == "quad":
        rule = (np.linspace(0, math.sqrt(0.8 * T), S) ** 2).astype(np.int64)  # docs/concepts.md (timestep spacings)
        assert len(timesteps) == len(np.unique(rule)) <= S
    else:
        assert len(timesteps) == S
    assert (timesteps >= 0).all() and (timesteps < T).all()
    assert (timesteps[1:] < timesteps[:-1]).all()
    scheduler = DDIMScheduler(num_train_timesteps=T, timestep_spacing=name, steps_offset=offset)
    scheduler.set_timesteps(S)
    assert scheduler.timesteps.tolist() == timesteps.tolist()
    assert scheduler.timesteps.dtype == torch.int64


# --------------------------------------------------------------------------------------- configs and files


def _random_scheduler(seed: int) -> DDIMScheduler:
    generator = torch.Generator().manual_seed(seed)
    return DDIMScheduler(
        num_train_timesteps=500,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
        thresholding=True,
        dynamic_thresholding_ratio=0.9,
        sample_max_value=2.5,
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
        trained_betas=(torch.rand(500, generator=generator, dtype=torch.float64) * 0.02 + 1e-4).tolist(),
    )


def test_save_load_gives_an_identical_step(tmp_path):
    scheduler = _random_scheduler(0)
    scheduler.save_pretrained(tmp_path)
    loaded = DDIMScheduler.from_pretrained(tmp_path)
    # As in diffusers, a loaded config records no defaults used (the file holds every field).
    assert dict(loaded.config) == {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}
    for s in (scheduler, loaded):
        s.set_timesteps(25)
    assert torch.equal(scheduler.timesteps, loaded.timesteps)
    generator = torch.Generator().manual_seed(1)
    x, m = torch.randn((2,) + ITEM_SHAPE, generator=generator), torch.randn((2,) + ITEM_SHAPE, generator=generator)
    for t in scheduler.timesteps[:3].tolist():
        a = scheduler.step(m, t, x, eta=0.5, generator=torch.Generator().manual_seed(t))
        b = loaded.step(m, t, x, eta=0.5, generator=torch.Generator().manual_seed(t))
        assert torch.equal(a.prev_sample, b.prev_sample) and torch.equal(a.pred_original_sample, b.pred_original_sample)


def test_save_pretrained_writes_a_config_diffusers_loads(tmp_path):
    scheduler = _random_scheduler(1)
    scheduler.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert data["_class_name"] == "DDIMScheduler"
    assert isinstance(data["_diffusers_version"], str) and data["_diffusers_version"]
    assert set(DIFFUSERS_FIELDS) <= set(data)
    reference = diffusers.DDIMScheduler.from_pretrained(tmp_path)
    for name in DIFFUSERS_FIELDS:
        assert reference.config[name] == scheduler.config[name], name


def _fields(config) -> dict:
    return {name: config[name] for name in DIFFUSERS_FIELDS}


@pytest.mark.parametrize("seed", [0, 1])
def test_from_config_round_trips_with_diffusers(seed):
    ours = _random_scheduler(seed) if seed else DDIMScheduler()
    theirs = diffusers.DDIMScheduler.from_config(ours.config)
    assert _fields(theirs.config) == _fields(ours.config)
    back = DDIMScheduler.from_config(theirs.config)
    assert _fields(back.config) == _fields(theirs.config)
    # and from a config diffusers made itself
    native = diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2", timestep_spacing="linspace", steps_offset=1)
    assert _fields(DDIMScheduler.from_config(native.config).config) == _fields(native.config)


def test_from_config_of_a_pndm_config_loads_silently_and_unknown_keys_warn_once(caplog):
    """Stable Diffusion ships a PNDMScheduler config: it loads without a warning, as in diffusers (its
    skip_prk_steps is an option of a DDIM-compatible scheduler, kept in the config); a key no compatible
    scheduler knows warns once, naming it."""
    pndm = diffusers.PNDMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True, steps_offset=1
    )
    with caplog.at_level(logging.WARNING, logger="ddim_sched"):
        scheduler = DDIMScheduler.from_config(pndm.config, clip_sample=False)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("ddim_sched")]
    assert scheduler.config["skip_prk_steps"] is True
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ddim_sched"):
        DDIMScheduler.from_config({**pndm.config, "skip_prk_stepz": True})
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("ddim_sched")]
    assert len(warnings) == 1 and "skip_prk_stepz" in warnings[0].getMessage()
    assert "_class_name" not in warnings[0].getMessage() and "_use_default_values" not in warnings[0].getMessage()
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.steps_offset == 1
    assert scheduler.config.clip_sample is False
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == [801, 601, 401, 201, 1]  # docs/concepts.md (timestep spacings)


def test_config_attribute_and_key_access_and_validated_writes():
    scheduler = DDIMScheduler(num_train_timesteps=123, timestep_spacing="trailing")
    assert scheduler.config.num_train_timesteps == scheduler.config["num_train_timesteps"] == 123
    assert scheduler.config.timestep_spacing == scheduler.config["timestep_spacing"] == "trailing"
    assert set(DIFFUSERS_FIELDS) <= set(scheduler.config)
    with pytest.raises(AttributeError, match="no_such_field"):
        _ = scheduler.config.no_such_field
    with pytest.raises(ValueError, match="num_train_timesteps"):
        scheduler.config["num_train_timesteps"] = 0
    with pytest.raises(TypeError):
        del scheduler.config["num_train_timesteps"]
    assert scheduler.config.num_train_timesteps == 123 and len(scheduler) == 123
    scheduler.config.num_train_timesteps = 5  # as diffusers allows: the scheduler changes with it
    assert scheduler.config["num_train_timesteps"] == 5 and len(scheduler) == 5 and len(scheduler.alpha_bar) == 5


def test_output_tuple_attribute_and_key_access():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    x = torch.randn((2,) + ITEM_SHAPE, generator=torch.Generator().manual_seed(0))
    out = scheduler.step(x * 0.5, 900, x)
    assert isinstance(out, DDIMSchedulerOutput)
    assert out[0] is out.prev_sample is out["prev_sample"]
    assert out[1] is out.pred_original_sample is out["pred_original_sample"]
    prev, x0 = out
    assert prev is out.prev_sample and x0 is out.pred_original_sample
    assert out.to_tuple() == (out.prev_sample, out.pred_original_sample)
    assert len(out) == 2 and tuple(out.keys()) == ("prev_sample", "pred_original_sample")
    with pytest.raises(KeyError):
        out["sample"]
    as_tuple = scheduler.step(x * 0.5, 900, x, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    assert torch.equal(as_tuple[0], out.prev_sample) and torch.equal(as_tuple[1], out.pred_original_sample)


# --------------------------------------------------------------------------------------- forward process


def _tables(scheduler: DDIMScheduler) -> dict[str, torch.Tensor]:
    return {
        name: getattr(scheduler, name).clone()
        for name in ("betas", "alphas", "alphas_cumprod", "final_alpha_cumprod", "alpha_bar")
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_add_noise_and_get_velocity_do_not_mutate_the_scheduler(dtype):
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    before = _tables(scheduler)
    generator = torch.Generator().manual_seed(0)
    x0, noise = (torch.randn((3,) + ITEM_SHAPE, generator=generator).to(dtype) for _ in range(2))
    timesteps = torch.tensor([0, 500, 999])
    scheduler.add_noise(x0, noise, timesteps)
    scheduler.get_velocity(x0, noise, timesteps)
    after = _tables(scheduler)
    for name, table in before.items():
        assert after[name].device == table.device == torch.device("cpu"), name
        assert after[name].dtype == table.dtype, name
        assert torch.equal(after[name], table), name
    assert scheduler.alphas_cumprod.dtype == torch.float32 and scheduler.alpha_bar.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_add_noise_and_get_velocity_compute_in_float32_for_half_samples(dtype):
    """The result is the float64 closed form rounded once to the sample dtype."""
    scheduler = DDIMScheduler()
    generator = torch.Generator().manual_seed(0)
    x0, noise = (torch.randn((4,) + ITEM_SHAPE, generator=generator).to(dtype) for _ in range(2))
    timesteps = torch.tensor([0, 3, 400, 999])
    a = scheduler.alpha_bar[timesteps].reshape(-1, 1, 1, 1)
    x0_64, noise_64 = x0.double(), noise.double()
    noisy = scheduler.add_noise(x0, noise, timesteps)
    velocity = scheduler.get_velocity(x0, noise, timesteps)
    assert noisy.dtype == velocity.dtype == dtype
    assert rel_l2(noisy, a.sqrt() * x0_64 + (1 - a).sqrt() * noise_64) <= FORWARD_RTOL[dtype]
    assert rel_l2(velocity, a.sqrt() * noise_64 - (1 - a).sqrt() * x0_64) <= FORWARD_RTOL[dtype]


def test_bf16_add_noise_keeps_the_noise_that_diffusers_loses():
    """docs/migration.md (diffusers defects, bfloat16 add_noise): diffusers casts ᾱ to bfloat16 before the
    square root; ᾱ_t for small t rounds to 1.0, so √(1 − ᾱ_t) = 0 and no noise is added. ddim_sched adds it."""
    config = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02)
    ours, reference = DDIMScheduler(**config), diffusers_scheduler(config)
    # Timesteps whose ᾱ rounds to 1 in bfloat16 (diffusers' cast) although 1 − ᾱ_t is about (t + 1)·1e-4.
    lost = [t for t in range(1000) if reference.alphas_cumprod[t].to(torch.bfloat16).item() == 1.0]
    assert lost and lost[0] == 0
    timesteps = torch.tensor(lost[:4])
    x0 = torch.zeros((len(timesteps),) + ITEM_SHAPE, dtype=torch.bfloat16)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)

    theirs = reference.add_noise(x0, noise, timesteps)
    assert torch.equal(theirs, x0)  # the noise is gone
    mine = ours.add_noise(x0, noise, timesteps)
    expected = (1 - ours.alpha_bar[timesteps]).sqrt().reshape(-1, 1, 1, 1) * noise.double()
    assert mine.abs().max() > 0
    assert rel_l2(mine, expected) <= FORWARD_RTOL[torch.bfloat16]


# --------------------------------------------------------------------------------------- tables


@pytest.mark.parametrize(
    "config",
    [
        {},
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False),
        dict(beta_schedule="squaredcos_cap_v2"),
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True),
        dict(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True, set_alpha_to_one=False),
        dict(num_train_timesteps=37, beta_start=0.001, beta_end=0.1),
        dict(num_train_timesteps=8, trained_betas=[0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.9]),
    ],
)
def test_table_attributes_match_diffusers(config):
    ours, reference = DDIMScheduler(**config), diffusers_scheduler(config)
    for name in ("betas", "alphas", "alphas_cumprod"):
        mine, theirs = getattr(ours, name), getattr(reference, name)
        assert mine.dtype == theirs.dtype == torch.float32, name
        assert mine.shape == theirs.shape and mine.device == theirs.device, name
        assert rel_l2(mine, theirs) <= TABLE_RTOL, name
    assert ours.final_alpha_cumprod.dtype == torch.float32
    assert ours.final_alpha_cumprod.item() == pytest.approx(reference.final_alpha_cumprod.item(), rel=TABLE_RTOL)
    assert ours.init_noise_sigma == reference.init_noise_sigma and ours.order == reference.order
    assert len(ours) == len(reference)
    assert ddim_sched.DDIMScheduler is DDIMScheduler


def test_eta_one_at_zero_snr_is_exact_in_float64():
    """At ᾱ_t = 0 and η = 1, σ² = 1 − ᾱ_prev exactly and the direction term vanishes; subtracting the two
    would leave √(rounding error) ≈ 1e-8 in float64 (diffusers: up to NaN). Regression for ddim_sched."""
    scheduler = DDIMScheduler(
        num_train_timesteps=11,
        rescale_betas_zero_snr=True,
        timestep_spacing="linspace",
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type="sample",
    )
    scheduler.set_timesteps(2)
    t = scheduler.timesteps[0].item()
    assert t == 10 and scheduler.alpha_bar[t].item() == 0.0
    a_prev = alpha_bar_prev(scheduler, t)
    generator = torch.Generator().manual_seed(0)
    x0, x_t = (torch.randn((2,) + ITEM_SHAPE, generator=generator, dtype=torch.float64) for _ in range(2))
    out = scheduler.step(x0, t, x_t, eta=1.0, variance_noise=torch.zeros_like(x_t))
    # DDPM posterior mean at ᾱ_t = 0: √ᾱ_prev·x0 (the x_t term has weight √(ᾱ_t/ᾱ_prev) = 0)
    assert rel_l2(out.prev_sample, math.sqrt(a_prev) * x0) <= 1e-14
