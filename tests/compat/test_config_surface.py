"""diffusers' scheduler surface, as diffusers' own scheduler tests exercise it, in this project's words:
config metadata, register_to_config, deprecated config attributes, dict-like outputs, _get_variance,
return_unused_kwargs, and which config keys warn."""

from __future__ import annotations

import inspect
import logging
import warnings

import diffusers
import pytest
import torch

import ddim_sched
from ddim_sched import DDIMInverseScheduler, DDIMParallelScheduler, DDIMScheduler
from tests.oracle import closed_form_step

CLASSES = [DDIMScheduler, DDIMInverseScheduler, DDIMParallelScheduler]


@pytest.fixture
def ddim_warnings(caplog):
    caplog.set_level(logging.WARNING, logger="ddim_sched")
    return lambda: [
        r.getMessage() for r in caplog.records if r.name.startswith("ddim_sched") and r.levelno >= logging.WARNING
    ]


@pytest.mark.parametrize("cls", CLASSES)
def test_config_metadata_keys_as_diffusers_carries_them(cls, tmp_path):
    scheduler = cls(beta_schedule="scaled_linear", timestep_spacing="trailing")
    config = scheduler.config
    assert config["_class_name"] == cls.__name__ and config["_diffusers_version"]
    assert (
        "beta_schedule" not in config["_use_default_values"] and "num_train_timesteps" in config["_use_default_values"]
    )
    scheduler.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    assert "_use_default_values" not in loaded.config  # the file holds every field
    assert dict(loaded.config) == {k: v for k, v in config.items() if k != "_use_default_values"}
    # Keys listed in _use_default_values take the new class's defaults, as in diffusers.
    assert (
        cls.from_config({**config, "clip_sample": False, "_use_default_values": ["clip_sample"]}).config.clip_sample
        is True
    )


def test_register_to_config_changes_fields_and_stores_other_keys():
    scheduler, theirs = DDIMScheduler(), diffusers.DDIMScheduler()
    for s in (scheduler, theirs):
        s.set_timesteps(10)
        s.register_to_config(steps_offset=1, test_attribute=5)
    assert scheduler.config.steps_offset == 1 and scheduler.config["test_attribute"] == 5
    # as in diffusers, the timesteps already chosen stay; the next set_timesteps follows the new field
    assert scheduler.timesteps.tolist() == theirs.timesteps.tolist() and scheduler.timesteps.tolist()[-1] == 0
    for s in (scheduler, theirs):
        s.set_timesteps(10)
    assert scheduler.timesteps.tolist() == theirs.timesteps.tolist() and scheduler.timesteps.tolist()[-1] == 1
    with pytest.raises(ValueError, match="steps_offset"):
        scheduler.register_to_config(steps_offset=-1)


def test_config_values_read_as_attributes_warn_as_in_diffusers():
    scheduler = DDIMScheduler()
    scheduler.dummy_attribute = 5
    scheduler.register_to_config(test_attribute=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scheduler.dummy_attribute == 5  # a real attribute: no warning
        assert scheduler.save_pretrained  # a method: no warning
    with pytest.warns(FutureWarning, match="test_attribute"):
        assert scheduler.test_attribute == 5
    with pytest.warns(FutureWarning, match="num_train_timesteps"):
        assert scheduler.num_train_timesteps == 1000
    with pytest.raises(AttributeError) as error:
        scheduler.does_not_exist  # noqa: B018
    assert str(error.value) == "'DDIMScheduler' object has no attribute 'does_not_exist'"


def test_deprecated_kwargs_declared_where_the_constructor_takes_kwargs():
    for cls in CLASSES:
        takes_kwargs = "kwargs" in inspect.signature(cls.__init__).parameters
        assert takes_kwargs == bool(cls._deprecated_kwargs), cls
    assert DDIMInverseScheduler._deprecated_kwargs == ["set_alpha_to_zero"]


def test_outputs_are_dicts_and_tuples():
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    x = torch.randn(2, 3)
    out = scheduler.step(x, 901, x)
    assert out.keys() == ("prev_sample", "pred_original_sample")
    assert all(a is b for a, b in zip(out.values(), out.to_tuple(), strict=True))
    assert (
        dict(out.items())
        == dict(out)
        == {"prev_sample": out.prev_sample, "pred_original_sample": out.pred_original_sample}
    )
    prev, x0 = scheduler.step(x, 901, x, return_dict=False)
    assert torch.equal(prev, out[0]) and torch.equal(x0, out["pred_original_sample"])


@pytest.mark.parametrize("pair", [(0, 0), (420, 400), (980, 960), (487, 486), (999, 998), (100, -1)])
def test_get_variance_is_the_ddpm_posterior_variance(pair):
    scheduler = DDIMScheduler()
    t, prev = pair
    alpha_bar = scheduler.alpha_bar
    a_t, a_prev = float(alpha_bar[t]), (float(alpha_bar[prev]) if prev >= 0 else 1.0)
    expected = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    assert scheduler._get_variance(t, prev).dtype == torch.float32
    assert float(scheduler._get_variance(t, prev)) == pytest.approx(expected, rel=1e-6, abs=1e-12)
    # the same σ²(η = 1) as the step uses
    x = torch.zeros(1, 1, dtype=torch.float64)
    if t > 0:
        sigma = closed_form_step(x, x, a_t, a_prev, 1.0, noise=torch.ones_like(x))[0]
        assert float(sigma) ** 2 == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("cls", CLASSES)
def test_return_unused_kwargs(cls, tmp_path, ddim_warnings):
    scheduler, unused = cls.from_config(DDIMScheduler().config, return_unused_kwargs=True, foo=1)
    assert isinstance(scheduler, cls) and unused == {"foo": 1}
    scheduler.save_pretrained(tmp_path)
    loaded, unused = cls.from_pretrained(tmp_path, return_unused_kwargs=True, cache_dir="ignored")
    assert isinstance(loaded, cls) and unused == {}
    assert not any("return_unused_kwargs" in message for message in ddim_warnings())


def test_configs_load_without_warnings_in_both_directions(ddim_warnings, caplog):
    diffusers_logger = logging.getLogger("diffusers")
    level = diffusers_logger.level
    diffusers_logger.setLevel(logging.WARNING)
    diffusers_logger.addHandler(caplog.handler)
    try:
        ours = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        diffusers.DDIMScheduler.from_config(ours.config)
        sd15 = diffusers.PNDMScheduler(beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1).config
        DDIMScheduler.from_config(sd15)
        # (a respacing flag warns unless its spacing is taken: tests/ddim/test_carried_flags.py)
        DDIMScheduler.from_config(
            diffusers.EulerDiscreteScheduler(use_karras_sigmas=True).config, timestep_spacing="karras"
        )
        quiet = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert quiet == [], [r.getMessage() for r in quiet]
        diffusers.DDIMScheduler.from_config(DDIMScheduler(snr_shift_scale=3.0).config)  # changes behaviour: warns
        DDIMScheduler.from_config(sd15, timestep_spacng="trailing")  # a misspelled override: warns once
    finally:
        diffusers_logger.removeHandler(caplog.handler)
        diffusers_logger.setLevel(level)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(messages) == 2 and "snr_shift_scale" in messages[0] and "timestep_spacng" in messages[1]


def test_schedulers_derive_from_diffusers_scheduler_mixin_when_installed():
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

    assert ddim_sched.SchedulerMixin is SchedulerMixin
    for cls in CLASSES:
        assert issubclass(cls, SchedulerMixin) and cls.__module__ == "ddim_sched"


def test_without_diffusers_the_package_works_and_saves(tmp_path):
    """Run in a fresh interpreter where diffusers cannot be imported: the base is a stand-in, and the
    schedulers step and save as ever."""
    import subprocess
    import sys

    code = f"""
import sys
sys.modules["diffusers"] = None  # import diffusers -> ImportError
import torch, ddim_sched
assert ddim_sched.SchedulerMixin.__module__ == "ddim_sched.compat.scheduler_mixin", ddim_sched.SchedulerMixin
s = ddim_sched.DDIMScheduler(clip_sample=False)
s.set_timesteps(10)
x = torch.randn(1, 4)
assert torch.isfinite(s.step(x, 901, x).prev_sample).all()
s.save_pretrained({str(tmp_path)!r})
assert ddim_sched.DDIMScheduler.from_pretrained({str(tmp_path)!r}).ddim_config == s.ddim_config
print(ddim_sched.compat.scheduler_mixin.DIFFUSERS_INTEGRATION)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("off:")


@pytest.mark.parametrize(
    "cls", [DDIMScheduler, DDIMInverseScheduler, DDIMParallelScheduler, ddim_sched.FlowMatchDDIMScheduler]
)
def test_repr_shows_the_class_and_its_config_but_not_a_table_of_betas(cls):
    if cls is ddim_sched.FlowMatchDDIMScheduler:
        scheduler, shown = cls(shift=3.0), "shift=3.0"
    else:
        scheduler, shown = (
            cls(trained_betas=[0.01] * 1000, prediction_type="v_prediction"),
            "prediction_type='v_prediction'",
        )
    text = repr(scheduler)
    assert text.startswith(f"{cls.__name__}(num_train_timesteps=1000, ") and shown in text
    assert "0.01, 0.01" not in text and "trained_betas" not in text


def test_config_view_survives_copy_and_pickle():
    import copy
    import pickle

    config = DDIMScheduler(timestep_spacing="trailing").config
    for clone in (copy.copy(config), copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert clone == config and clone.timestep_spacing == "trailing"
        assert type(clone) is type(config)
