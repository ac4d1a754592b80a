"""Bad input raises ValueError or TypeError naming the argument and the value received, before any work."""

from __future__ import annotations

import math
import re

import pytest
import torch

from ddim_sched import ConfigFileNotFoundError, DDIMScheduler
from ddim_sched.core.update import prediction_weights
from ddim_sched.ddim.config import PREDICTION_TYPES
from ddim_sched.tables.betas import BETA_SCHEDULES
from ddim_sched.tables.spacing import SPACINGS
from tests.diffusers_oracle import diffusers_scheduler

SHAPE = (2, 2, 4, 4)


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)


def ready(**config) -> DDIMScheduler:
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(10)
    return scheduler


# --------------------------------------------------------------------------------------- option names


@pytest.mark.parametrize(
    "argument, registry",
    [("beta_schedule", BETA_SCHEDULES), ("timestep_spacing", SPACINGS), ("prediction_type", PREDICTION_TYPES)],
)
def test_unknown_option_names_the_argument_value_and_every_accepted_value(argument, registry):
    with pytest.raises(ValueError, match=re.escape(argument)) as info:
        DDIMScheduler(**{argument: "no_such_option"})
    message = str(info.value)
    assert "'no_such_option'" in message
    for accepted in registry:  # unlike diffusers' "leading or trailing", every option the code accepts
        assert repr(accepted) in message


# --------------------------------------------------------------------------------------- num_inference_steps


@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_num_inference_steps_out_of_range(steps):
    with pytest.raises(ValueError, match=rf"num_inference_steps.*got {steps}\b"):
        DDIMScheduler().set_timesteps(steps)


@pytest.mark.parametrize("steps", [2.5, "10", True])
def test_num_inference_steps_not_an_int(steps):
    with pytest.raises(TypeError, match=rf"num_inference_steps.*{re.escape(repr(steps))}"):
        DDIMScheduler().set_timesteps(steps)


def test_step_before_set_timesteps():
    x, m = inputs()
    with pytest.raises(ValueError, match="set_timesteps"):
        DDIMScheduler().step(m, 999, x)


# --------------------------------------------------------------------------------------- betas


def test_trained_betas_not_one_dimensional():
    with pytest.raises(ValueError, match=r"trained_betas must be 1-D; got shape \(2, 2\)"):
        DDIMScheduler(num_train_timesteps=2, trained_betas=[[0.1, 0.2], [0.1, 0.2]])


def test_trained_betas_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"trained_betas.*num_train_timesteps=10.*got 3"):
        DDIMScheduler(num_train_timesteps=10, trained_betas=[0.1, 0.2, 0.3])


@pytest.mark.parametrize("bad, index", [(0.0, 1), (-0.25, 2), (1.5, 0)])
def test_trained_betas_outside_zero_one(bad, index):
    betas = [0.1, 0.2, 0.3]
    betas[index] = bad
    with pytest.raises(ValueError, match=re.escape(f"trained_betas[{index}] = {bad!r}")):
        DDIMScheduler(num_train_timesteps=3, trained_betas=betas)


def test_trained_beta_of_exactly_one_is_accepted():
    assert DDIMScheduler(num_train_timesteps=2, trained_betas=[0.5, 1.0]).alphas_cumprod[-1].item() == 0.0


def test_beta_start_greater_than_beta_end():
    with pytest.raises(ValueError, match=r"beta_start=0\.02 > beta_end=0\.0001"):
        DDIMScheduler(beta_start=0.02, beta_end=0.0001)


@pytest.mark.parametrize(
    "argument, value", [("beta_start", 0.0), ("beta_start", -0.1), ("beta_end", 1.0), ("beta_end", 1.5)]
)
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_beta_bounds_outside_zero_one(argument, value, schedule):
    with pytest.raises(ValueError, match=rf"{argument} must lie in \(0, 1\); got {re.escape(repr(value))}"):
        DDIMScheduler(beta_schedule=schedule, **{argument: value})


def test_zero_snr_needs_two_timesteps():
    # Algorithm 1 divides by √ᾱ_0 − √ᾱ_T = 0 for a single timestep (diffusers returns NaN tables).
    with pytest.raises(ValueError, match=r"rescale_betas_zero_snr.*num_train_timesteps=1"):
        DDIMScheduler(num_train_timesteps=1, rescale_betas_zero_snr=True)


@pytest.mark.parametrize(
    "argument, value",
    [("num_train_timesteps", "1000"), ("clip_sample", "yes"), ("beta_start", "0.1"), ("steps_offset", 1.0)],
)
def test_config_values_of_the_wrong_type(argument, value):
    with pytest.raises(TypeError, match=rf"{argument}.*{re.escape(repr(value))}"):
        DDIMScheduler(**{argument: value})


# --------------------------------------------------------------------------------------- step arguments


def test_model_output_and_sample_of_different_shapes():
    x, _ = inputs()
    m = torch.zeros(2, 2, 4, 5)
    with pytest.raises(ValueError, match=r"model_output and sample.*\(2, 2, 4, 5\).*\(2, 2, 4, 4\)"):
        ready().step(m, 900, x)


@pytest.mark.parametrize("timestep", [1000, -1, 5000, torch.tensor(1000), torch.tensor([0, 1000])])
def test_timestep_outside_the_training_range(timestep):
    x, m = inputs()
    value = timestep.max().item() if isinstance(timestep, torch.Tensor) else timestep
    with pytest.raises(ValueError, match=rf"timestep must lie in \[0, num_train_timesteps=1000\); got {value}\b"):
        ready().step(m, timestep, x)


def test_float_timestep_tensor():
    x, m = inputs()
    with pytest.raises(TypeError, match=r"timestep.*float32"):
        ready().step(m, torch.tensor(900.0), x)


def test_generator_and_variance_noise_together():
    x, m = inputs()
    with pytest.raises(ValueError, match=r"generator.*variance_noise"):
        ready().step(m, 900, x, eta=1.0, generator=torch.Generator().manual_seed(0), variance_noise=torch.zeros_like(x))


@pytest.mark.parametrize("eta", [-0.1, -1, float("nan")])
def test_negative_or_nan_eta(eta):
    x, m = inputs()
    with pytest.raises(ValueError, match=rf"eta.*{re.escape(repr(eta))}"):
        ready().step(m, 900, x, eta=eta)


def test_variance_noise_of_the_wrong_shape():
    x, m = inputs()
    with pytest.raises(ValueError, match=r"variance_noise.*\(2, 2, 4, 4\).*\(1, 2, 4, 4\)"):
        ready().step(m, 900, x, eta=1.0, variance_noise=torch.zeros(1, 2, 4, 4))


# --------------------------------------------------------------------------------------- config files


def test_missing_config_file_names_the_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ConfigFileNotFoundError, match=re.escape(str(missing))) as info:
        DDIMScheduler.from_pretrained(missing)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    # Callers catching either base class see it.
    with pytest.raises(FileNotFoundError):
        DDIMScheduler.from_pretrained(missing)
    with pytest.raises(ValueError):
        DDIMScheduler.from_pretrained(tmp_path / "scheduler_config.json")


def test_config_file_that_is_not_json_names_the_path(tmp_path):
    file = tmp_path / "scheduler_config.json"
    file.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(file))) as info:
        DDIMScheduler.from_pretrained(tmp_path)
    assert "JSON" in str(info.value)
    assert not isinstance(info.value, FileNotFoundError)


def test_config_file_with_an_invalid_value(tmp_path):
    (tmp_path / "scheduler_config.json").write_text('{"_class_name": "DDIMScheduler", "timestep_spacing": "sideways"}')
    with pytest.raises(ValueError, match=r"timestep_spacing.*'sideways'"):
        DDIMScheduler.from_pretrained(tmp_path)


# --------------------------------------------------------------------------------------- zero terminal SNR


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_zero_snr_epsilon_on_a_schedule_visiting_the_last_timestep_raises(spacing):
    scheduler = DDIMScheduler(rescale_betas_zero_snr=True, timestep_spacing=spacing, prediction_type="epsilon")
    with pytest.raises(ValueError, match=r"timestep 999.*v_prediction"):
        scheduler.set_timesteps(10)


def test_zero_snr_epsilon_with_leading_spacing_is_allowed_but_the_terminal_step_is_not():
    scheduler = DDIMScheduler(rescale_betas_zero_snr=True, prediction_type="epsilon", clip_sample=False)
    scheduler.set_timesteps(10)  # leading never visits 999
    x, m = inputs()
    assert torch.isfinite(scheduler.step(m, 900, x).prev_sample).all()
    with pytest.raises(ValueError, match=r"timestep 999.*v_prediction"):
        scheduler.step(m, 999, x)


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_zero_snr_trailing_is_finite_for_sample_and_v_prediction(prediction_type):
    """Deliberate: "sample" is not rejected, since x̂0 = model output is well defined at ᾱ = 0."""
    config = dict(
        rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type=prediction_type, clip_sample=False
    )
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(10)
    assert scheduler.timesteps[0].item() == 999 and scheduler.alpha_bar[999].item() == 0.0
    x, m = inputs()
    for t in scheduler.timesteps:
        out = scheduler.step(m, t, x, eta=1.0, generator=torch.Generator().manual_seed(int(t)))
        assert torch.isfinite(out.prev_sample).all() and torch.isfinite(out.pred_original_sample).all()
        x = out.prev_sample
    if prediction_type == "sample":
        # at ᾱ_T = 0 the model's x0 is taken as is, and ε̂ = x_T
        first = DDIMScheduler(**config)
        first.set_timesteps(10)
        x, m = inputs(1)
        assert torch.equal(first.step(m, 999, x).pred_original_sample, m)


def test_epsilon_x0_is_undefined_at_zero_snr_and_defined_for_the_other_predictions(observe):
    """Why ddim_sched refuses zero SNR with epsilon prediction (docs/migration.md, diffusers defects): x̂0 =
    (x − √(1−ᾱ)·ε)/√ᾱ divides by √ᾱ_T = 0. The other predictions read x̂0 without that division. What
    diffusers returns there is recorded, not asserted."""
    epsilon = prediction_weights(0.0, 1.0, "epsilon")
    assert math.isinf(epsilon[0]) and math.isinf(epsilon[1])
    for prediction_type in ("sample", "v_prediction"):
        x0_x, x0_m, _, _ = prediction_weights(0.0, 1.0, prediction_type)
        assert math.isfinite(x0_x) and math.isfinite(x0_m)
    config = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False)
    with pytest.raises(ValueError, match="timestep 999: alpha_bar is 0 there"):
        DDIMScheduler(**config).set_timesteps(10)
    reference = diffusers_scheduler(config)
    reference.set_timesteps(10)
    x, m = inputs()
    finite = bool(torch.isfinite(reference.step(m, int(reference.timesteps[0]), x).pred_original_sample).all())
    observe(f"diffusers' epsilon x0 at the first zero-SNR trailing step is {'finite' if finite else 'not finite'}")


def test_config_file_that_is_not_utf8_names_the_path(tmp_path):
    (tmp_path / "scheduler_config.json").write_bytes(b'{"beta_schedule": "caf\xe9"}')
    with pytest.raises(ValueError, match="scheduler_config.json.*not UTF-8"):
        DDIMScheduler.from_pretrained(tmp_path)


@pytest.mark.parametrize("value", [10**20, 2**31])
def test_huge_num_train_timesteps_names_the_field(value):
    with pytest.raises(ValueError, match=f"num_train_timesteps must be <= {2**31 - 1}; got {value}"):
        DDIMScheduler(num_train_timesteps=value)


def test_a_save_that_fails_part_way_leaves_the_old_file(tmp_path, monkeypatch):
    import os

    DDIMScheduler(timestep_spacing="trailing").save_pretrained(tmp_path)
    before = (tmp_path / "scheduler_config.json").read_bytes()
    real_write = os.write

    class DiskFull:
        """A file object that writes half of what it is given, then fails as a full disk does."""

        def __init__(self, fd, *args, **kwargs):
            self.fd = fd

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            os.close(self.fd)

        def write(self, text):
            real_write(self.fd, text[: len(text) // 2].encode())
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdopen", DiskFull)
    with pytest.raises(OSError, match="No space left"):
        DDIMScheduler(timestep_spacing="linspace").save_pretrained(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "scheduler_config.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scheduler_config.json"]  # no temporary left behind
    assert DDIMScheduler.from_pretrained(tmp_path).config.timestep_spacing == "trailing"
