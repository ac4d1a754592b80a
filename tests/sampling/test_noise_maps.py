"""Edit-friendly noise maps: edit_friendly_noise finds the z that makes each scheduler step land on the next
latent of a trajectory; replay_noise_maps steps with them. Replaying with the model the maps came from
reproduces the trajectory, for both scheduler families, every spacing and successor rule, per-sample
timesteps, and steps that add no noise (σ = 0: the offset closes the gap there)."""

from __future__ import annotations

import pytest
import torch

from ddim_sched import (
    DDIMScheduler,
    FlowMatchDDIMScheduler,
    NoiseMaps,
    edit_friendly_noise,
    noise_space_trajectory,
    replay_noise_maps,
)
from tests.sampling.exact_models import data, flow_model, vp_model
from tests.tolerances import EXACT_RTOL, rel_l2

DDIM_CONFIGS = {
    "leading-stride": {},
    "sd": {
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "steps_offset": 1,
        "set_alpha_to_one": False,
    },  # fmt: skip
    "linspace-stride": {"timestep_spacing": "linspace"},  # lands off the schedule (999 -> 899, then 888)
    "linspace-schedule": {"timestep_spacing": "linspace", "prev_timestep_rule": "schedule"},
    "trailing": {"timestep_spacing": "trailing"},
    "v-zero-snr": {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
    "sample": {"prediction_type": "sample"},
    "quad": {"timestep_spacing": "quad"},
}
FLOW_CONFIGS = {
    "sd3": {"shift": 3.0},
    "dynamic": {"use_dynamic_shifting": True},
    "karras": {"use_karras_sigmas": True},
}


def ddim(S: int, **config) -> DDIMScheduler:
    scheduler = DDIMScheduler(clip_sample=False, **config)
    scheduler.set_timesteps(S)
    return scheduler


def flow(S: int, **config) -> FlowMatchDDIMScheduler:
    scheduler = FlowMatchDDIMScheduler(**config)
    scheduler.set_timesteps(S, mu=0.8 if scheduler.flow_config.use_dynamic_shifting else None)
    return scheduler


def scheduler_and_model(family: str, name: str, S: int):
    if family == "ddim":
        scheduler = ddim(S, **DDIM_CONFIGS[name])
        return scheduler, vp_model(scheduler)
    scheduler = flow(S, **FLOW_CONFIGS[name])
    return scheduler, flow_model(scheduler)


CASES = [("ddim", name) for name in DDIM_CONFIGS] + [("flow", name) for name in FLOW_CONFIGS]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("eta", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("family, name", CASES, ids=[f"{f}-{n}" for f, n in CASES])
def test_replay_reproduces_the_noise_space_trajectory(family, name, eta, dtype):
    scheduler, model_fn = scheduler_and_model(family, name, 8)
    x0 = data(3, dtype)
    trajectory = noise_space_trajectory(x0, scheduler, generator=torch.Generator().manual_seed(0))
    maps = edit_friendly_noise(trajectory, scheduler, model_fn=model_fn, eta=eta)
    seen = []
    out = replay_noise_maps(model_fn, maps, scheduler, callback=lambda i, t, x: seen.append(x))
    assert out.dtype == dtype and len(maps) == len(seen) == len(scheduler.timesteps)
    for i, x in enumerate(seen):  # every latent of the trajectory, not only the end
        assert rel_l2(x, trajectory[i + 1]) < EXACT_RTOL[dtype], i


def test_the_noise_a_stochastic_loop_drew_is_recovered():
    # Sample with known z at η = 1; the maps of that trajectory are those z (where σ > 0: all but the last
    # step, which lands on ᾱ = 1 and adds no noise), to float64 rounding.
    for scheduler, model_fn in (
        scheduler_and_model("ddim", "leading-stride", 10),
        scheduler_and_model("flow", "sd3", 10),
    ):
        generator = torch.Generator().manual_seed(3)
        x = torch.randn(4, 16, generator=generator, dtype=torch.float64)
        trajectory, drawn = [x], []
        for t in scheduler.timesteps:
            z = torch.randn(4, 16, generator=generator, dtype=torch.float64)
            x = scheduler.step(model_fn(x, t), t, x, eta=1.0, variance_noise=z).prev_sample
            trajectory.append(x)
            drawn.append(z)
        maps = edit_friendly_noise(trajectory, scheduler, model_fn=model_fn, eta=1.0)
        for i in range(len(drawn) - 1):
            assert rel_l2(maps.noises[i], drawn[i]) < EXACT_RTOL[torch.float64], i
        assert all(offset is None for offset in maps.offsets[:-1])
        assert torch.count_nonzero(maps.noises[-1]) == 0 and maps.offsets[-1] is not None


@pytest.mark.parametrize("family", ["ddim", "flow"])
def test_per_sample_timesteps(family):
    # Three samples on three schedules at once: the first on the schedule, the second one step behind
    # (its first step repeated), the third two steps behind; each step gets a [3] timestep tensor.
    scheduler, exact = scheduler_and_model(family, "leading-stride" if family == "ddim" else "sd3", 8)
    timesteps = scheduler.timesteps
    per_sample = [torch.stack([timesteps[i], timesteps[max(i - 1, 0)], timesteps[max(i - 2, 0)]]) for i in range(8)]
    seen = []

    def model_fn(x, t):
        seen.append(t)
        return exact(x, t)

    x0 = data(3)
    trajectory = noise_space_trajectory(x0, scheduler, generator=torch.Generator().manual_seed(1), timesteps=per_sample)
    maps = edit_friendly_noise(trajectory, scheduler, model_fn=model_fn, timesteps=per_sample)
    assert len(seen) == 8 and all(torch.equal(t, s) for t, s in zip(seen, per_sample, strict=True))
    out = replay_noise_maps(model_fn, maps, scheduler)
    assert rel_l2(out, x0) < EXACT_RTOL[torch.float64]
    # Each sample's maps are those it gets alone.
    for b in range(3):
        alone = edit_friendly_noise(
            [x[b : b + 1] for x in trajectory], scheduler, model_fn=exact, timesteps=[t[b : b + 1] for t in per_sample]
        )
        for i in range(8):
            assert rel_l2(alone.noises[i], maps.noises[i][b : b + 1]) < EXACT_RTOL[torch.float64]


def test_steps_without_noise_give_zero_noise_and_an_offset():
    scheduler, model_fn = scheduler_and_model("ddim", "leading-stride", 6)
    x0 = data(2)
    trajectory = noise_space_trajectory(x0, scheduler, generator=torch.Generator().manual_seed(2))
    maps = edit_friendly_noise(trajectory, scheduler, model_fn=model_fn, eta=0.0)
    assert all(torch.count_nonzero(z) == 0 for z in maps.noises)
    assert all(offset is not None and offset.abs().max() > 0 for offset in maps.offsets)
    assert min(maps.residuals) > 1e-3  # the gaps the offsets close: no η = 0 step lands there by itself
    assert rel_l2(replay_noise_maps(model_fn, maps, scheduler), x0) < EXACT_RTOL[torch.float64]
    assert rel_l2(replay_noise_maps(model_fn, maps, scheduler, add_offsets=False), x0) > 1e-3
    # A [B] η mixing both: sample 0 noiseless (z = 0, offset), sample 1 at η = 1 (z, no offset but the last).
    mixed = edit_friendly_noise(trajectory, scheduler, model_fn=model_fn, eta=torch.tensor([0.0, 1.0]))
    for i in range(5):
        assert torch.count_nonzero(mixed.noises[i][0]) == 0 and torch.count_nonzero(mixed.noises[i][1]) > 0
        assert mixed.offsets[i][0].abs().max() > 0 and torch.count_nonzero(mixed.offsets[i][1]) == 0
    assert rel_l2(replay_noise_maps(model_fn, mixed, scheduler), x0) < EXACT_RTOL[torch.float64]


def test_stochastic_sampling_flow_scheduler_with_its_own_noise():
    # diffusers' stochastic sampler re-noises x̂0 completely (σ = b_s); η is then the config's (None).
    scheduler = flow(6, shift=3.0, stochastic_sampling=True)
    model_fn = flow_model(scheduler)
    x0 = data(2)
    trajectory = noise_space_trajectory(x0, scheduler, generator=torch.Generator().manual_seed(0))
    maps = edit_friendly_noise(trajectory, scheduler, model_fn=model_fn, eta=None)
    assert rel_l2(replay_noise_maps(model_fn, maps, scheduler), x0) < EXACT_RTOL[torch.float64]


def test_model_outputs_instead_of_model_fn_and_the_model_calls():
    scheduler, exact = scheduler_and_model("ddim", "sd", 7)
    calls = []

    def model_fn(x, t):
        calls.append(t)
        return exact(x, t)

    trajectory = noise_space_trajectory(data(2), scheduler, generator=torch.Generator().manual_seed(5))
    maps = edit_friendly_noise(trajectory, scheduler, model_fn=model_fn)
    assert len(calls) == 7 and [int(t) for t in calls] == scheduler.timesteps.tolist()
    outputs = [exact(trajectory[i], t) for i, t in enumerate(scheduler.timesteps)]
    given = edit_friendly_noise(trajectory, scheduler, model_outputs=outputs)
    assert all(torch.equal(a, b) for a, b in zip(maps.noises, given.noises, strict=True))
    del calls[:]
    replay_noise_maps(model_fn, maps, scheduler)
    assert len(calls) == 7
    assert scheduler.step_index is None  # the caller's scheduler was not advanced


def test_an_edit_keeps_the_noise_and_changes_the_image():
    # Replaying with another model (another "prompt"): the mixture with its modes moved.
    from ddim_sched.toy import GaussianMixture
    from tests.sampling.exact_models import mixture_parameters

    scheduler, model_fn = scheduler_and_model("ddim", "leading-stride", 10)
    means, stds = mixture_parameters()
    edited = GaussianMixture(means + 0.5, stds, alpha_bar=scheduler).model("epsilon")
    x0 = data(4)
    maps = edit_friendly_noise(
        noise_space_trajectory(x0, scheduler, generator=torch.Generator().manual_seed(6)), scheduler, model_fn=model_fn
    )
    out = replay_noise_maps(edited, maps, scheduler)
    assert 0.2 < float((out - x0).mean()) < 0.8  # moved towards the new modes, by about their shift


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({}, ValueError, "exactly one of model_fn and model_outputs"),
        ({"model_fn": lambda x, t: x, "model_outputs": []}, ValueError, "exactly one"),
        ({"model_fn": 3}, TypeError, "model_fn"),
        ({"model_fn": lambda x, t: x, "trajectory": [torch.zeros(1, 2)] * 3}, ValueError, "one latent per step"),
        (
            {"model_fn": lambda x, t: x, "trajectory": [torch.zeros(1, 2)] * 4 + [torch.zeros(2, 2)]},
            ValueError,
            r"trajectory\[4\] has shape",
        ),  # fmt: skip
        ({"model_fn": lambda x, t: x, "trajectory": 5}, TypeError, "trajectory"),
        ({"model_outputs": [torch.zeros(1, 2)]}, ValueError, "one output per step"),
        ({"model_fn": lambda x, t: x, "scheduler": object()}, TypeError, "scheduler"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    scheduler = ddim(4)
    arguments = {"trajectory": [torch.zeros(1, 2)] * 5, "scheduler": scheduler, **kwargs}
    with pytest.raises(error, match=match):
        edit_friendly_noise(arguments.pop("trajectory"), arguments.pop("scheduler"), **arguments)


def test_replay_bad_arguments():
    scheduler = ddim(2)
    maps = edit_friendly_noise([torch.zeros(1, 2)] * 3, scheduler, model_fn=lambda x, t: x)
    with pytest.raises(TypeError, match="maps must be NoiseMaps"):
        replay_noise_maps(lambda x, t: x, [torch.zeros(1, 2)], scheduler)
    with pytest.raises(ValueError, match="x_T must have the maps' shape"):
        replay_noise_maps(lambda x, t: x, maps, scheduler, x_T=torch.zeros(2, 2))
    assert isinstance(maps, NoiseMaps)
    with pytest.raises(ValueError, match="set_timesteps"):
        noise_space_trajectory(torch.zeros(1, 2), DDIMScheduler())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_precision_replay(dtype):
    scheduler, exact = scheduler_and_model("ddim", "leading-stride", 10)

    def model_fn(x, t):
        return exact(x.double(), t).to(x.dtype)

    x0 = data(4).to(dtype)
    trajectory = noise_space_trajectory(x0, scheduler, generator=torch.Generator().manual_seed(0))
    maps = edit_friendly_noise(trajectory, scheduler, model_fn=model_fn)
    assert all(z.dtype == dtype for z in maps.noises)
    out = replay_noise_maps(model_fn, maps, scheduler)
    assert out.dtype == dtype and rel_l2(out, x0) < EXACT_RTOL[dtype]
