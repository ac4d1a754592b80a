"""The exactly invertible samplers: BDIA-DDIM (one model call per step) and EDICT (two), over both
scheduler families. A round trip (invert, then sample from the returned pair) returns the input to float
rounding; the updates are the papers' equations, checked against hand-written ones on the VP path."""

from __future__ import annotations

import logging

import pytest
import torch

from ddim_sched import (
    BDIALatents,
    DDIMScheduler,
    EDICTLatents,
    FlowMatchDDIMScheduler,
    bdia_invert,
    bdia_sample,
    edict_invert,
    edict_sample,
    sample,
)
from tests.sampling.exact_models import data, flow_model, vp_model
from tests.tolerances import EXACT_RTOL, rel_l2

DDIM_CONFIGS = {
    "leading": {},
    "sd": {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "steps_offset": 1,
        "set_alpha_to_one": False,
    },  # fmt: skip
    "linspace-stride": {"timestep_spacing": "linspace"},
    "trailing": {"timestep_spacing": "trailing"},
    "v-zero-snr": {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
}
FLOW_CONFIGS = {"sd3": {"shift": 3.0}, "karras": {"use_karras_sigmas": True}}
CASES = [("ddim", name) for name in DDIM_CONFIGS] + [("flow", name) for name in FLOW_CONFIGS]
IDS = [f"{family}-{name}" for family, name in CASES]


def scheduler_and_model(family: str, name: str, S: int, calls: list | None = None):
    if family == "ddim":
        scheduler = DDIMScheduler(clip_sample=False, **DDIM_CONFIGS[name])
        scheduler.set_timesteps(S)
        exact = vp_model(scheduler)
    else:
        scheduler = FlowMatchDDIMScheduler(**FLOW_CONFIGS[name])
        scheduler.set_timesteps(S)
        exact = flow_model(scheduler)

    def model_fn(x, t):
        if calls is not None:
            calls.append(t)
        return exact(x, t)

    return scheduler, model_fn


# ---------------------------------------------------------------------------- BDIA


@pytest.mark.parametrize("S, gamma", [(10, 1.0), (10, 0.5), (50, 1.0)])
@pytest.mark.parametrize("family, name", CASES, ids=IDS)
def test_bdia_round_trip_is_exact_in_float64(family, name, S, gamma):
    scheduler, model_fn = scheduler_and_model(family, name, S)
    x0 = data(4)
    latents = bdia_invert(model_fn, x0, scheduler, gamma=gamma)
    assert isinstance(latents, BDIALatents)
    assert rel_l2(bdia_sample(model_fn, latents, scheduler, gamma=gamma), x0) < EXACT_RTOL[torch.float64]


@pytest.mark.parametrize("family, name", [("ddim", "sd"), ("flow", "sd3")])
def test_bdia_round_trip_in_float32(family, name):
    scheduler, model_fn = scheduler_and_model(family, name, 50)
    x0 = data(4, torch.float32)
    out = bdia_sample(model_fn, bdia_invert(model_fn, x0, scheduler), scheduler)
    assert out.dtype == torch.float32 and rel_l2(out, x0) < EXACT_RTOL[torch.float32]


@pytest.mark.parametrize("family, name", [("ddim", "linspace-stride"), ("flow", "sd3")])
def test_bdia_one_model_call_per_step_and_the_chain_is_retraced(family, name):
    calls = []
    scheduler, model_fn = scheduler_and_model(family, name, 9, calls)
    x0 = data(3)
    encoded = []
    latents = bdia_invert(model_fn, x0, scheduler, callback=lambda i, t, x: encoded.append((t.item(), x)))
    assert len(calls) == 9  # one classic inverse step, then one call per BDIA step
    assert [t for t, _ in encoded] == scheduler.timesteps.flip(0).tolist()
    assert torch.equal(encoded[-1][1], latents.x_T) and torch.equal(encoded[-2][1], latents.x_next)
    del calls[:]
    decoded = []
    out = bdia_sample(model_fn, latents, scheduler, callback=lambda j, t, x: decoded.append((t.item(), x)))
    assert len(calls) == 8  # from the pair, step 0 is already taken
    assert [float(t) for t in calls] == scheduler.timesteps[1:].tolist()
    # Step j lands on the state the inversion passed through one timestep later (then x0 itself).
    states = [x for _, x in reversed(encoded)][2:] + [x0]
    for (_, x), expected in zip(decoded, states, strict=True):
        assert rel_l2(x, expected) < EXACT_RTOL[torch.float64]
    assert torch.equal(out, decoded[-1][1])
    del calls[:]
    bdia_sample(model_fn, torch.randn(3, 16, dtype=torch.float64), scheduler)
    assert len(calls) == 9  # from noise: step 0 is a plain DDIM step


def test_bdia_is_the_papers_update():
    # The README's form on the VP path (ε-prediction): with α = √ᾱ, σ = √(1 − ᾱ) and x̂0 = (z_i − σ_i ε̂)/α_i,
    # z_{i−1} = γ z_{i+1} − γ (α_{i+1} x̂0 + σ_{i+1} ε̂) + (α_{i−1} x̂0 + σ_{i−1} ε̂); the first step is DDIM.
    scheduler, model_fn = scheduler_and_model("ddim", "leading", 4)  # timesteps 750, 500, 250, 0; then ᾱ = 1
    alpha_bar = scheduler.alpha_bar
    levels = [float(alpha_bar[t]) for t in scheduler.timesteps.tolist()] + [1.0]
    gamma = 0.7
    z = x_T = torch.randn(2, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected, previous = [], None
    for i, t in enumerate(scheduler.timesteps):
        eps = model_fn(z, t)
        x0 = (z - (1 - levels[i]) ** 0.5 * eps) / levels[i] ** 0.5
        new = levels[i + 1] ** 0.5 * x0 + (1 - levels[i + 1]) ** 0.5 * eps
        if previous is not None:
            new = new + gamma * previous - gamma * (levels[i - 1] ** 0.5 * x0 + (1 - levels[i - 1]) ** 0.5 * eps)
        previous, z = z, new
        expected.append(z)
    got = []
    bdia_sample(model_fn, x_T, scheduler, gamma=gamma, callback=lambda j, t, x: got.append(x))
    for a, b in zip(got, expected, strict=True):
        assert rel_l2(a, b) < EXACT_RTOL[torch.float64]


def test_bdia_with_gamma_zero_is_ddim():
    scheduler, model_fn = scheduler_and_model("ddim", "sd", 12)
    x_T = torch.randn(3, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(bdia_sample(model_fn, x_T, scheduler, gamma=0.0), sample(model_fn, x_T, scheduler))


def test_bdia_warns_when_the_backward_recursion_blows_up(caplog):
    # γ = 0.5 over 50 steps: the parasitic root −1/γ amplifies by up to 2^49 (measured: latents ~1e12).
    scheduler, model_fn = scheduler_and_model("ddim", "leading", 50)
    with caplog.at_level(logging.WARNING, logger="ddim_sched"):
        bdia_invert(model_fn, data(2), scheduler, gamma=1.0)
        assert not caplog.records
        bdia_invert(model_fn, data(2), scheduler, gamma=0.5)
    assert any("gamma closer to 1" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "function, kwargs, error, match",
    [
        (bdia_invert, {"gamma": 0.0}, ValueError, "gamma must be > 0"),
        (bdia_sample, {"gamma": -0.1}, ValueError, "gamma must be >= 0"),
        (bdia_sample, {"gamma": 1.5}, ValueError, r"gamma must lie in \[0, 1\]"),
        (bdia_invert, {"gamma": "1"}, TypeError, "gamma"),
        (bdia_sample, {"callback": 1}, TypeError, "callback"),
        (bdia_sample, {"scheduler": object()}, TypeError, "scheduler"),
    ],
)
def test_bdia_bad_arguments(function, kwargs, error, match):
    scheduler, model_fn = scheduler_and_model("ddim", "leading", 3)
    arguments = {"scheduler": scheduler, **kwargs}
    with pytest.raises(error, match=match):
        function(model_fn, data(1), arguments.pop("scheduler"), **arguments)


def test_bdia_pair_of_different_shapes():
    scheduler, model_fn = scheduler_and_model("ddim", "leading", 3)
    with pytest.raises(ValueError, match="differ in shape"):
        bdia_sample(model_fn, BDIALatents(data(2), data(3)), scheduler)


# ---------------------------------------------------------------------------- EDICT


@pytest.mark.parametrize("S", [7, 8])
@pytest.mark.parametrize("leapfrog", [True, False])
@pytest.mark.parametrize("family, name", CASES, ids=IDS)
def test_edict_round_trip_is_exact_in_float64(family, name, leapfrog, S):
    # Odd and even S: a leapfrog order counted from the wrong end of the schedule mirrors for one of them only.
    scheduler, model_fn = scheduler_and_model(family, name, S)
    x0 = data(4)
    latents = edict_invert(model_fn, x0, scheduler, leapfrog=leapfrog)
    assert isinstance(latents, EDICTLatents)
    assert rel_l2(edict_sample(model_fn, latents, scheduler, leapfrog=leapfrog), x0) < EXACT_RTOL[torch.float64]


@pytest.mark.parametrize("family, name", [("ddim", "sd"), ("flow", "sd3")])
def test_edict_round_trip_in_float32(family, name):
    scheduler, model_fn = scheduler_and_model(family, name, 50)
    x0 = data(4, torch.float32)
    out = edict_sample(model_fn, edict_invert(model_fn, x0, scheduler), scheduler)
    assert out.dtype == torch.float32 and rel_l2(out, x0) < EXACT_RTOL[torch.float32]


def test_edict_two_model_calls_per_step():
    calls = []
    scheduler, model_fn = scheduler_and_model("flow", "sd3", 6, calls)
    latents = edict_invert(model_fn, data(2), scheduler)
    assert len(calls) == 12
    assert [float(t) for t in calls[::2]] == scheduler.timesteps.flip(0).tolist()
    del calls[:]
    edict_sample(model_fn, latents, scheduler)
    assert len(calls) == 12 and [float(t) for t in calls[1::2]] == scheduler.timesteps.tolist()


def test_edict_is_the_papers_update():
    # Eq. 14 with a_t = √(ᾱ_prev/ᾱ_t), b_t = √(1 − ᾱ_prev) − √(ᾱ_prev(1 − ᾱ_t)/ᾱ_t), ε-prediction, no leapfrog.
    scheduler, model_fn = scheduler_and_model("ddim", "leading", 4)
    alpha_bar = scheduler.alpha_bar
    levels = [float(alpha_bar[t]) for t in scheduler.timesteps.tolist()] + [1.0]
    p = 0.9
    x = y = torch.randn(2, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for i, t in enumerate(scheduler.timesteps):
        a = (levels[i + 1] / levels[i]) ** 0.5
        b = (1 - levels[i + 1]) ** 0.5 - (levels[i + 1] * (1 - levels[i]) / levels[i]) ** 0.5
        x_inter = a * x + b * model_fn(y, t)
        y_inter = a * y + b * model_fn(x_inter, t)
        x = p * x_inter + (1 - p) * y_inter
        y = p * y_inter + (1 - p) * x
    start = torch.randn(2, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rel_l2(edict_sample(model_fn, start, scheduler, mixing=p, leapfrog=False), x) < EXACT_RTOL[torch.float64]


def test_edict_leapfrog_changes_the_order():
    scheduler, model_fn = scheduler_and_model("ddim", "leading", 6)
    x_T = torch.randn(2, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rel_l2(edict_sample(model_fn, x_T, scheduler), edict_sample(model_fn, x_T, scheduler, leapfrog=False)) > 1e-6


@pytest.mark.parametrize(
    "config, kwargs, error, match",
    [
        ({"clip_sample": True}, {}, ValueError, "clip_sample"),
        ({"thresholding": True}, {}, ValueError, "thresholding"),
        ({}, {"mixing": 0.0}, ValueError, "mixing must be > 0"),
        ({}, {"mixing": 1.2}, ValueError, r"mixing must lie in \(0, 1\]"),
        ({}, {"leapfrog": 1}, TypeError, "leapfrog"),
        ({"prediction_type": "sample"}, {}, ValueError, "EDICT cannot invert"),
    ],
)
def test_edict_bad_arguments(config, kwargs, error, match):
    scheduler = DDIMScheduler(**{"clip_sample": False, **config})
    scheduler.set_timesteps(3)
    with pytest.raises(error, match=match):
        edict_invert(lambda x, t: x, data(1), scheduler, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_bdia_round_trip(dtype):
    # The steps run in float32 and round to the latents' dtype once per step.
    scheduler, exact = scheduler_and_model("ddim", "leading", 10)

    def model_fn(x, t):
        return exact(x.double(), t).to(x.dtype)

    x0 = data(4).to(dtype)
    out = bdia_sample(model_fn, bdia_invert(model_fn, x0, scheduler), scheduler)
    assert out.dtype == dtype and rel_l2(out, x0) < EXACT_RTOL[dtype]
