"""Changing a scheduler the ways diffusers allows, with the effect the change has there (diffusers run live
in each test): writes to ``scheduler.config`` (LEDITS++ sets ``config.timestep_spacing``),
``register_to_config``, and assigning ``betas`` / ``alphas`` / ``alphas_cumprod`` (kohya's sd-scripts does,
after rescaling to zero terminal SNR). Every write is validated, the tables never disagree, and a thread
that is stepping keeps the schedule it started with."""

from __future__ import annotations

import threading

import diffusers
import pytest
import torch

from ddim_sched import DDIMInverseScheduler, DDIMScheduler
from tests.tolerances import FORWARD_RTOL, PARITY_RTOL, TABLE_RTOL, rel_l2

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False)


def both(**config):
    return DDIMScheduler(**config), diffusers.DDIMScheduler(**config)


def steps(scheduler, x, model=lambda x, t: 0.3 * x + 0.01 * float(t)):
    """The whole schedule from x (a deterministic stand-in model); the samples visited."""
    out = [x]
    for t in scheduler.timesteps:
        out.append(scheduler.step(model(out[-1], t), t, out[-1]).prev_sample)
    return torch.stack(out)


# ---------------------------------------------------------------------------- config writes


@pytest.mark.parametrize("write", ["attribute", "item"])
def test_a_config_write_before_set_timesteps_takes_effect_there(write):
    ours, theirs = both(**SD)
    # LEDITS++: self.scheduler.config.timestep_spacing = "leading"; then set_timesteps
    theirs.config.timestep_spacing = "trailing"  # (an item write would not change diffusers' behaviour)
    if write == "attribute":
        ours.config.timestep_spacing = "trailing"
    else:
        ours.config["timestep_spacing"] = "trailing"
    assert ours.config.timestep_spacing == ours.config["timestep_spacing"] == "trailing"
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(10)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist() == list(range(999, 0, -100))
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    assert rel_l2(steps(ours, x), steps(theirs, x)) <= PARITY_RTOL[torch.float32]


def test_a_schedule_already_set_keeps_its_timesteps_until_the_next_set_timesteps():
    ours, theirs = both(**SD)
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(10)
        scheduler.config.timestep_spacing = "trailing"
        scheduler.config.steps_offset = 1
    assert ours.timesteps.tolist() == theirs.timesteps.tolist() == list(range(900, -1, -100))
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(10)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()


def test_a_prediction_type_write_takes_effect_at_the_next_step_as_in_diffusers():
    ours, theirs = both(**SD)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(10)
        scheduler.step(x, scheduler.timesteps[0], x)
        scheduler.config.prediction_type = "v_prediction"
        scheduler.config.clip_sample = True
    assert rel_l2(steps(ours, x), steps(theirs, x)) <= PARITY_RTOL[torch.float32]


def test_config_is_one_object_that_follows_every_change():
    scheduler = DDIMScheduler()
    config = scheduler.config
    assert scheduler.config is config
    scheduler.register_to_config(steps_offset=1, test_attribute=5)
    assert config.steps_offset == 1 and config["test_attribute"] == 5
    scheduler.config.snr_shift_scale = 2.0  # an extension field appears when it differs from its default
    assert config["snr_shift_scale"] == 2.0
    scheduler.config.snr_shift_scale = 1.0
    assert "snr_shift_scale" not in config and config.snr_shift_scale == 1.0
    # a changed field no longer counts as a default: rebuilding from the config keeps it
    assert "steps_offset" not in config["_use_default_values"]
    assert DDIMScheduler.from_config(scheduler.config).config.steps_offset == 1


@pytest.mark.parametrize(
    ("field", "value", "error", "match"),
    [
        ("timestep_spacing", "sideways", ValueError, r"timestep_spacing.*'sideways'"),
        ("steps_offset", -1, ValueError, "steps_offset"),
        ("prediction_type", "noise", ValueError, r"prediction_type.*'noise'"),
        ("clip_sample", "yes", TypeError, "clip_sample"),
        ("num_train_timesteps", 0, ValueError, "num_train_timesteps"),
    ],
)
def test_a_bad_write_raises_naming_the_field_and_changes_nothing(field, value, error, match):
    scheduler = DDIMScheduler(**SD)
    scheduler.set_timesteps(10)
    before, timesteps = dict(scheduler.config), scheduler.timesteps.tolist()
    with pytest.raises(error, match=match):
        setattr(scheduler.config, field, value)
    with pytest.raises(error, match=match):
        scheduler.config[field] = value
    with pytest.raises(error, match=match):
        scheduler.register_to_config(**{field: value})
    assert dict(scheduler.config) == before and scheduler.timesteps.tolist() == timesteps


def test_removing_keys_is_refused_and_a_copy_is_detached():
    import copy
    import pickle

    scheduler = DDIMScheduler()
    for attempt in (
        lambda c: c.pop("steps_offset"),
        lambda c: c.update(steps_offset=1),
        lambda c: c.__delitem__("steps_offset"),
    ):
        with pytest.raises(TypeError, match="cannot be removed or updated in bulk"):
            attempt(scheduler.config)
    for detached in (copy.copy(scheduler.config), pickle.loads(pickle.dumps(scheduler.config))):
        detached.steps_offset = 7
        assert detached["steps_offset"] == 7 and scheduler.config.steps_offset == 0
    twin = copy.deepcopy(scheduler)
    twin.config.steps_offset = 2
    assert twin.config.steps_offset == 2 and scheduler.config.steps_offset == 0


def test_a_new_num_train_timesteps_clears_the_schedule():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    scheduler.config.num_train_timesteps = 500
    assert len(scheduler.timesteps) == 500 and scheduler.num_inference_steps is None
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(torch.zeros(1, 2), 400, torch.zeros(1, 2))


# ---------------------------------------------------------------------------- assigning noise tables


def fix_noise_scheduler_betas_for_zero_terminal_snr(noise_scheduler):
    """kohya-ss/sd-scripts' library/custom_train_functions.py, as training scripts call it: rescale the
    scheduler's betas to zero terminal SNR (Lin et al. 2023, Algorithm 1) in float32, then assign all three."""
    betas = noise_scheduler.betas
    alphas = 1.0 - betas
    alphas_bar_sqrt = torch.cumprod(alphas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    betas = 1 - alphas
    noise_scheduler.betas = betas
    noise_scheduler.alphas = 1.0 - betas
    noise_scheduler.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)


def test_kohya_zero_terminal_snr_fix_takes_effect_as_in_diffusers():
    ours, theirs = both(**SD, prediction_type="v_prediction", timestep_spacing="trailing")
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(10)  # before the fix: the schedule already set steps on the new tables
        fix_noise_scheduler_betas_for_zero_terminal_snr(scheduler)
    assert float(theirs.alphas_cumprod[999]) == 0.0
    x0, noise = torch.randn(4, 8), torch.randn(4, 8)
    t = torch.tensor([999, 998, 500, 0])
    noisy = ours.add_noise(x0, noise, t)
    assert torch.equal(noisy[0], noise[0])  # √ᾱ_999 = 0, √(1 − ᾱ_999) = 1: the noise alone (main gave 1.0659×)
    assert rel_l2(noisy, theirs.add_noise(x0, noise, t)) <= FORWARD_RTOL[torch.float32]
    assert rel_l2(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t)) <= FORWARD_RTOL[torch.float32]
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
    assert rel_l2(steps(ours, x), steps(theirs, x)) <= PARITY_RTOL[torch.float32]
    # the tables agree with each other (and with the float64 one the step uses)
    assert (ours.alphas.double() - (1 - ours.betas.double())).abs().max() <= 2**-24  # float32 rounding
    assert rel_l2(ours.alphas_cumprod, torch.cumprod(ours.alphas.double(), 0)) <= TABLE_RTOL
    assert torch.equal(ours.alpha_bar.float(), ours.alphas_cumprod)
    # and the config says so: saved and loaded (by diffusers too), the scheduler is the same
    assert ours.config.rescale_betas_zero_snr is False and len(ours.config.trained_betas) == 1000
    loaded = diffusers.DDIMScheduler.from_config(ours.config)
    assert rel_l2(loaded.add_noise(x0, noise, t), noisy) <= FORWARD_RTOL[torch.float32]


@pytest.mark.parametrize("name", ["betas", "alphas", "alphas_cumprod"])
def test_assigning_one_table_derives_the_others_and_keeps_float64(name):
    reference = DDIMScheduler(rescale_betas_zero_snr=True)  # float64 tables with ᾱ_999 = 0
    table = {"betas": reference._betas, "alphas": 1 - reference._betas, "alphas_cumprod": reference.alpha_bar}[name]
    scheduler = DDIMScheduler()
    setattr(scheduler, name, table.clone())
    assert float(scheduler.alpha_bar[999]) == 0.0
    assert (scheduler.alpha_bar - reference.alpha_bar).abs().max() <= 1e-15  # not float32's 1e-8
    for view in ("betas", "alphas", "alphas_cumprod", "final_alpha_cumprod"):
        assert torch.equal(getattr(scheduler, view), getattr(reference, view)), view
    # a float32 table reads back as given
    scheduler.alphas_cumprod = reference.alphas_cumprod
    assert torch.equal(scheduler.alphas_cumprod, reference.alphas_cumprod)


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("betas", torch.full((10,), 0.1), "num_train_timesteps=1000 entries"),
        ("betas", torch.full((1000,), 1.5), r"betas must lie in \(0, 1\]; got betas\[0\] = 1.5"),
        ("alphas", torch.ones(1000), r"alphas must lie in \[0, 1\); got alphas\[0\] = 1.0"),
        ("alphas_cumprod", torch.linspace(0.5, 0.9, 1000), r"alphas_cumprod must decrease.*alphas_cumprod\[1\]"),
        ("alphas_cumprod", torch.tensor([0.9, 0.0, 0.1] + [0.0] * 997), r"alphas_cumprod\[2\] = 0.1"),
        ("betas", torch.full((1000,), float("nan")), "betas must lie in"),
    ],
)
def test_an_impossible_table_raises_naming_it_and_changes_nothing(name, value, match):
    scheduler = DDIMScheduler()
    before = scheduler.alphas_cumprod
    with pytest.raises(ValueError, match=match):
        setattr(scheduler, name, value)
    assert torch.equal(scheduler.alphas_cumprod, before) and scheduler.config.trained_betas is None


def test_final_alpha_cumprod_assigns_set_alpha_to_one():
    scheduler = DDIMScheduler(**SD)
    scheduler.final_alpha_cumprod = torch.tensor(1.0)
    assert scheduler.config.set_alpha_to_one is True and float(scheduler.final_alpha_cumprod) == 1.0
    scheduler.final_alpha_cumprod = scheduler.alphas_cumprod[0]
    assert scheduler.config.set_alpha_to_one is False
    with pytest.raises(ValueError, match="final_alpha_cumprod must be 1"):
        scheduler.final_alpha_cumprod = 0.5
    inverse = DDIMInverseScheduler(**SD)
    inverse.initial_alpha_cumprod = torch.tensor(1.0)
    assert inverse.config.set_alpha_to_one is True


def test_a_stepping_thread_keeps_the_schedule_it_started_with():
    """One thread steps over and over while another assigns two different tables in turn: every step
    returns exactly what one of the two tables gives, never a mixture."""
    plain = DDIMScheduler(**SD, timestep_spacing="trailing", prediction_type="v_prediction")
    fixed = DDIMScheduler(**SD, timestep_spacing="trailing", prediction_type="v_prediction")
    fix_noise_scheduler_betas_for_zero_terminal_snr(fixed)
    tables = [plain.alphas_cumprod.double(), fixed.alpha_bar]
    scheduler = DDIMScheduler(**SD, timestep_spacing="trailing", prediction_type="v_prediction")
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(3))
    expected = []
    for table in tables:
        scheduler.alphas_cumprod = table
        scheduler.set_timesteps(10)
        expected.append([scheduler.step(0.5 * x, t, x).prev_sample for t in scheduler.timesteps])
    outcomes, stop = [], threading.Event()

    def step_forever():
        while not stop.is_set():
            for i, t in enumerate(scheduler.timesteps.tolist()):
                outcomes.append((i, scheduler.step(0.5 * x, t, x).prev_sample))

    worker = threading.Thread(target=step_forever)
    worker.start()
    try:
        for k in range(40):
            scheduler.alphas_cumprod = tables[k % 2]
    finally:
        stop.set()
        worker.join()
    assert outcomes
    for i, result in outcomes:
        assert any(torch.equal(result, e[i]) for e in expected), i


@pytest.mark.parametrize("change", [dict(beta_end=0.03), dict(prediction_type="v_prediction")])
def test_a_config_change_keeps_an_inverse_schedule_inverse(change):
    """A change of the tables or the prediction type re-derives the current schedule's steps: the inverse
    scheduler's steps still go up in noise, as a fresh inverse scheduler with the new config steps."""
    changed = DDIMInverseScheduler(clip_sample=False)
    changed.set_timesteps(10)
    changed.register_to_config(**change)
    fresh = DDIMInverseScheduler(clip_sample=False, **change)
    fresh.set_timesteps(10)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    for t in fresh.timesteps:
        assert torch.equal(changed.step(0.1 * x, int(t), x).prev_sample, fresh.step(0.1 * x, int(t), x).prev_sample)
