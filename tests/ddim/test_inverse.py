"""DDIMInverseScheduler: differential parity with diffusers' DDIMInverseScheduler, and exact reversal of
DDIMScheduler."""

import warnings

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler as DiffusersInverse
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ddim_sched import DDIMInverseScheduler, DDIMScheduler, invert
from tests.oracle import exact_gaussian_model as exact_model
from tests.oracle import gaussian_data as data
from tests.tolerances import EXACT_RTOL, PARITY_RTOL, rel_l2


def toy_model(x, t):
    """A smooth, nonlinear stand-in for a network (any prediction type)."""
    return 0.3 * x + 0.1 * torch.sin(3 * x) + 1e-4 * float(t)


def diffusers_inverse(**config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DiffusersInverse(**config)


@st.composite
def inverse_configs(draw):
    T = draw(st.sampled_from([1000, 500, 100, 37]))
    beta_schedule = draw(st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]))
    config = {
        "num_train_timesteps": T,
        "beta_schedule": beta_schedule,
        "clip_sample": draw(st.booleans()),
        "set_alpha_to_one": draw(st.booleans()),
        "prediction_type": draw(st.sampled_from(["epsilon", "sample", "v_prediction"])),
        "timestep_spacing": draw(st.sampled_from(["leading", "trailing"])),
        "rescale_betas_zero_snr": draw(st.booleans()),
    }
    if beta_schedule != "squaredcos_cap_v2":
        start = draw(st.floats(1e-5, 1e-2))
        # The zero-SNR rescale divides by √ᾱ_0 − √ᾱ_T; with nearly constant tiny betas that difference
        # is ~1e-3 and diffusers' float32 loses the 1e-4 we compare at. Real schedules end far higher.
        lowest_end = max(start, 5e-3) if config["rescale_betas_zero_snr"] else start
        config.update(beta_start=start, beta_end=draw(st.floats(lowest_end, 0.03)))
    if config["timestep_spacing"] == "leading":
        config["steps_offset"] = draw(st.integers(0, 2))
    # An x0-predicting step from a clean sample (ᾱ = 1) divides by √(1−ᾱ) = 0 in both libraries.
    assume(not (config["prediction_type"] == "sample" and config["set_alpha_to_one"]))
    S = draw(st.integers(1, min(T, 60)))
    return config, S


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inverse_configs(), st.sampled_from([torch.float32, torch.float64]))
def test_matches_diffusers(config_and_steps, dtype):
    config, S = config_and_steps
    reference = diffusers_inverse(**config)
    reference.set_timesteps(S)
    assume(len(reference.timesteps) == S)  # diffusers' trailing sometimes adds a timestep -1 (tested below)
    assume(int(reference.timesteps.max()) < config["num_train_timesteps"])  # steps_offset past T
    ours = DDIMInverseScheduler(**config)
    ours.set_timesteps(S)
    if config["prediction_type"] == "sample":
        # ε̂ = (x − √ᾱ·x̂0)/√(1−ᾱ) from ᾱ_0 ≈ 1 − β_0: diffusers' float32 table loses about half of
        # the digits of 1 − ᾱ_0 when β_0 ~ 1e-5; give its arithmetic our float64 table instead.
        reference.alphas_cumprod = ours.alpha_bar
        reference.initial_alpha_cumprod = torch.tensor(
            1.0 if config["set_alpha_to_one"] else float(ours.alpha_bar[0]), dtype=torch.float64
        )
    assert ours.timesteps.tolist() == reference.timesteps.tolist()
    assert ours.timesteps.dtype == reference.timesteps.dtype
    x = y = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(S)).to(dtype)
    for t in ours.timesteps:
        x = ours.step(toy_model(x, t), t, x).prev_sample
        y = reference.step(toy_model(y, t), t, y).prev_sample
        assert x.dtype == dtype
    assert torch.isfinite(x).all()
    assert rel_l2(x, y) <= PARITY_RTOL[dtype]


def test_trailing_never_visits_timestep_minus_one():
    # diffusers' trailing inverse schedule for T=1000, S=61 has 62 entries starting at -1, which then
    # indexes alphas_cumprod[-1] (the noisiest level); ours has the 61 others.
    reference = diffusers_inverse(timestep_spacing="trailing")
    reference.set_timesteps(61)
    ours = DDIMInverseScheduler(timestep_spacing="trailing")
    ours.set_timesteps(61)
    assert reference.timesteps[0] == -1 and len(reference.timesteps) == 62
    assert ours.timesteps.tolist() == reference.timesteps[1:].tolist()


def test_deprecated_set_alpha_to_zero():
    for value in (True, False):
        with pytest.warns(FutureWarning, match="set_alpha_to_zero"):
            ours = DDIMInverseScheduler(set_alpha_to_one=not value, set_alpha_to_zero=value)
        reference = diffusers_inverse(set_alpha_to_one=not value, set_alpha_to_zero=value, beta_start=0.01)
        ours_ref_betas = DDIMInverseScheduler(set_alpha_to_one=value, beta_start=0.01)
        assert ours.config.set_alpha_to_one is value
        assert float(ours_ref_betas.initial_alpha_cumprod) == pytest.approx(float(reference.initial_alpha_cumprod))
        with pytest.warns(FutureWarning, match="set_alpha_to_zero"):
            loaded = DDIMInverseScheduler.from_config({"set_alpha_to_zero": value})
        assert loaded.config.set_alpha_to_one is value


def test_no_warning_without_the_deprecated_kwarg():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DDIMInverseScheduler(set_alpha_to_one=False)
        DDIMInverseScheduler.from_config(DDIMScheduler().config)


@pytest.mark.parametrize(
    "config",
    [
        {"timestep_spacing": "leading", "steps_offset": 1},
        {"timestep_spacing": "trailing"},
        {"timestep_spacing": "linspace"},  # stride rule: sampling steps land off the schedule
        {"timestep_spacing": "linspace", "prev_timestep_rule": "schedule"},
        {"timestep_spacing": "quad", "prev_timestep_rule": "schedule"},
        {"timestep_spacing": "karras", "prev_timestep_rule": "schedule"},
    ],
)
@pytest.mark.parametrize("S", [7, 13])
def test_schedule_is_the_exact_reverse_of_ddim_scheduler(config, S):
    forward = DDIMScheduler(**config)
    forward.set_timesteps(S)
    for inverse in (DDIMInverseScheduler(**config), DDIMInverseScheduler.from_scheduler(forward)):
        if inverse.num_inference_steps is None:
            inverse.set_timesteps(S)
        assert inverse.timesteps.tolist() == forward.timesteps.flip(0).tolist()
        for t in forward.timesteps.tolist():
            assert inverse.previous_timestep(t) == forward.previous_timestep(t)


def test_from_scheduler_with_custom_timesteps():
    forward = DDIMScheduler()
    forward.set_timesteps(timesteps=[950, 700, 333, 90, 4])
    inverse = DDIMInverseScheduler.from_scheduler(forward)
    assert inverse.timesteps.tolist() == [4, 90, 333, 700, 950]
    assert [inverse.previous_timestep(t) for t in [4, 90, 333, 700, 950]] == [-1, 4, 90, 333, 700]
    same = DDIMInverseScheduler()
    same.set_timesteps(timesteps=[4, 90, 333, 700, 950])
    assert [same.previous_timestep(t) for t in [4, 90, 333, 700, 950]] == [-1, 4, 90, 333, 700]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace", "karras"])
def test_stepping_equals_classic_invert(spacing):
    # Two independent routes to classic DDIM inversion (ε-prediction): the inverse scheduler's
    # swapped update, and invert(k=0) written with the forward step and its slope.
    forward = DDIMScheduler(clip_sample=False, timestep_spacing=spacing, set_alpha_to_one=False)
    forward.set_timesteps(12)
    model_fn = exact_model(forward)
    x0 = data()
    inverse = DDIMInverseScheduler.from_scheduler(forward)
    x = x0
    for t in inverse.timesteps:
        x = inverse.step(model_fn(x, t), t, x).prev_sample
    assert rel_l2(x, invert(model_fn, x0, forward)) < EXACT_RTOL[torch.float64]


def test_per_sample_timesteps_equal_single_steps():
    inverse = DDIMInverseScheduler(clip_sample=False, prediction_type="v_prediction")
    inverse.set_timesteps(10)
    sample = torch.randn(3, 2, 5, dtype=torch.float64)
    output = toy_model(sample, 0)
    timesteps = torch.tensor([0, 500, 900])
    batched = inverse.step(output, timesteps, sample).prev_sample
    single = torch.cat(
        [inverse.step(output[i : i + 1], int(t), sample[i : i + 1]).prev_sample for i, t in enumerate(timesteps)]
    )
    assert rel_l2(batched, single) < EXACT_RTOL[torch.float64]


def test_first_step_from_a_clean_sample_uses_initial_alpha():
    # With ε-prediction and set_alpha_to_one, x̂0 is the sample itself: x_t = √ᾱ_t·x + √(1−ᾱ_t)·ε.
    inverse = DDIMInverseScheduler(clip_sample=False, steps_offset=1)
    inverse.set_timesteps(5)
    x, eps = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    t = int(inverse.timesteps[0])
    assert t == 1 and inverse.previous_timestep(t) == -1
    a = inverse.alpha_bar[t]
    out = inverse.step(eps, t, x)
    assert rel_l2(out.prev_sample, a.sqrt() * x + (1 - a).sqrt() * eps) < EXACT_RTOL[torch.float64]
    assert rel_l2(out.pred_original_sample, x) < EXACT_RTOL[torch.float64]
    prev, x0 = inverse.step(eps, t, x, return_dict=False)
    assert torch.equal(prev, out.prev_sample) and torch.equal(x0, out.pred_original_sample)


@pytest.mark.parametrize("clip_sample", [False, True])
def test_an_x0_model_from_alpha_bar_one_is_refused_at_construction(clip_sample):
    # The first inversion step starts from ᾱ = 1: ε̂ = (x − √ᾱ·x̂0)/√(1 − ᾱ) is 0/0 (NaN latents before).
    match = r"prediction_type='sample', set_alpha_to_one=True\) cannot invert.*set_alpha_to_one=False"
    with pytest.raises(ValueError, match=match):
        DDIMInverseScheduler(prediction_type="sample", clip_sample=clip_sample)
    with pytest.raises(ValueError, match=match):
        DDIMInverseScheduler.from_scheduler(DDIMScheduler(prediction_type="sample", clip_sample=clip_sample))
    allowed = DDIMInverseScheduler(prediction_type="sample", clip_sample=clip_sample, set_alpha_to_one=False)
    with pytest.raises(ValueError, match=match):
        allowed.config.set_alpha_to_one = True
    assert allowed.config.set_alpha_to_one is False
    # From ᾱ_0 < 1 the first step is defined: ε̂ = (x − √ᾱ_0·m)/√(1 − ᾱ_0) (from the model output as given,
    # as in diffusers), then x_t = √ᾱ_t·x̂0 + √(1 − ᾱ_t)·ε̂ with x̂0 = m, clamped with clip_sample.
    allowed.set_timesteps(5)
    x = torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    m = 0.5 * x
    t = int(allowed.timesteps[0])
    a0, a = allowed.alpha_bar[0], allowed.alpha_bar[t]
    x0 = m.clamp(-1, 1) if clip_sample else m
    eps = (x - a0.sqrt() * m) / (1 - a0).sqrt()
    out = allowed.step(m, t, x).prev_sample
    assert torch.isfinite(out).all()
    assert rel_l2(out, a.sqrt() * x0 + (1 - a).sqrt() * eps) < EXACT_RTOL[torch.float64]


@pytest.mark.parametrize(
    "make",
    [
        lambda cls: cls(),
        lambda cls: cls(timestep_spacing="trailing", clip_sample=False),
        lambda cls: cls.from_config(DDIMScheduler(beta_schedule="scaled_linear", steps_offset=1).config),
    ],
    ids=["defaults", "options", "from_a_ddim_config"],
)
def test_config_shows_the_keys_diffusers_inverse_scheduler_shows(make, tmp_path, warnings_logged):
    """The config (and so scheduler_config.json) holds diffusers' inverse-scheduler keys, not the forward
    scheduler's thresholding options at their defaults, which diffusers warns about on loading."""
    ours, reference = make(DDIMInverseScheduler), make(DiffusersInverse)
    assert {k for k in ours.config if not k.startswith("_")} == {k for k in reference.config if not k.startswith("_")}
    assert sorted(ours.config.get("_use_default_values", [])) == sorted(reference.config.get("_use_default_values", []))
    ours.save_pretrained(tmp_path)
    DiffusersInverse.from_pretrained(tmp_path)
    assert [r.getMessage() for r in warnings_logged()] == []


def test_save_and_load_with_diffusers(tmp_path):
    ours = DDIMInverseScheduler(timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False)
    ours.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = DiffusersInverse.from_pretrained(tmp_path)
    assert reference.config.timestep_spacing == "trailing" and reference.config.set_alpha_to_one is False
    again = DDIMInverseScheduler.from_pretrained(tmp_path)
    assert again.config == {k: v for k, v in ours.config.items() if k != "_use_default_values"}
    from_reference = DDIMInverseScheduler.from_config(reference.config)
    for scheduler in (again, from_reference):
        scheduler.set_timesteps(20)
    reference.set_timesteps(20)
    assert again.timesteps.tolist() == reference.timesteps.tolist() == from_reference.timesteps.tolist()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({}, ValueError, "exactly one"),
        ({"num_inference_steps": 5, "timesteps": [1, 2]}, ValueError, "exactly one"),
        ({"num_inference_steps": 5.0}, TypeError, "num_inference_steps"),
        ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
        ({"timesteps": [5, 3]}, ValueError, "strictly increasing"),
        ({"timesteps": [3, 3]}, ValueError, "repeat"),
        ({"timesteps": [3, 1000]}, ValueError, r"timesteps\[1\] = 1000"),
    ],
)
def test_set_timesteps_rejects(kwargs, error, match):
    with pytest.raises(error, match=match):
        DDIMInverseScheduler().set_timesteps(**kwargs)


def test_step_rejects():
    inverse = DDIMInverseScheduler()
    x = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="set_timesteps"):
        inverse.step(x, 1, x)
    inverse.set_timesteps(4)
    with pytest.raises(ValueError, match="same shape"):
        inverse.step(torch.zeros(1, 5), 1, x)
    with pytest.raises(ValueError, match="timestep"):
        inverse.step(x, 1000, x)
    with pytest.raises(TypeError, match="timestep"):
        inverse.step(x, 1.5, x)
    with pytest.raises(TypeError, match="from_scheduler|DDIMScheduler"):
        DDIMInverseScheduler.from_scheduler(inverse)
    with pytest.raises(TypeError, match="scheduler"):
        invert(toy_model, x, inverse)


def test_timesteps_are_ascending_before_set_timesteps_too():
    assert DDIMInverseScheduler(num_train_timesteps=10).timesteps.tolist() == list(range(10))
    assert np.all(np.diff(DiffusersInverse(num_train_timesteps=10).timesteps.numpy()) > 0)


def test_clean_sample_straight_to_zero_terminal_snr():
    # One step from ᾱ = 1 to ᾱ_T = 0 with ε-prediction: x̂0 = x and x_T = √0·x̂0 + √1·ε = ε, finite.
    inverse = DDIMInverseScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False)
    inverse.set_timesteps(1)
    assert inverse.timesteps.tolist() == [999] and float(inverse.alpha_bar[999]) == 0.0
    x, eps = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    assert rel_l2(inverse.step(eps, 999, x).prev_sample, eps) < EXACT_RTOL[torch.float64]
