"""With diffusers installed, ddim_sched's schedulers are diffusers' classes to every check a pipeline makes
(``isinstance``), while everything that runs on them is their own: each name diffusers' class defines is
defined by ddim_sched's class before diffusers' in the method resolution order, except the few inherited
on purpose (:data:`INHERITED`), each tested here. Without diffusers nothing changes (a subprocess)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types

import diffusers
import diffusers.utils.hub_utils as hub_utils
import numpy as np
import pytest
import torch

from ddim_sched import DDIMInverseScheduler, DDIMParallelScheduler, DDIMScheduler, FlowMatchDDIMScheduler

PAIRS = [
    (DDIMScheduler, diffusers.DDIMScheduler),
    (DDIMInverseScheduler, diffusers.DDIMInverseScheduler),
    (DDIMParallelScheduler, diffusers.DDIMParallelScheduler),
    (FlowMatchDDIMScheduler, diffusers.FlowMatchEulerDiscreteScheduler),
]
IDS = [ours.__name__ for ours, _ in PAIRS]

# The names ddim_sched's classes take from diffusers' on purpose; each has a test below.
INHERITED = {
    # PushToHubMixin: saves with our save_pretrained into a temporary folder, then uploads that folder
    "push_to_hub": "test_push_to_hub_uploads_what_our_save_pretrained_writes",
    "_upload_folder": "test_push_to_hub_uploads_what_our_save_pretrained_writes",
}


def is_diffusers(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "diffusers"


def owner(cls: type, name: str) -> type | None:
    """The class in cls's method resolution order that defines ``name``."""
    return next((c for c in cls.__mro__ if name in vars(c)), None)


def names_defined_by_diffusers(cls: type) -> set[str]:
    """Every attribute name (public, private and dunder) that a diffusers class in cls's MRO defines."""
    return {name for name in dir(cls) if any(is_diffusers(c) and name in vars(c) for c in cls.__mro__)}


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=IDS)
def test_instances_are_instances_of_the_diffusers_class(ours, theirs):
    scheduler = ours()
    assert isinstance(scheduler, theirs) and issubclass(ours, diffusers.SchedulerMixin)
    assert isinstance(scheduler, diffusers.configuration_utils.ConfigMixin)
    # ddim_sched's classes come first: up to diffusers' class, the whole MRO is ddim_sched's.
    first = next(i for i, c in enumerate(ours.__mro__) if is_diffusers(c))
    assert all(c.__module__.startswith("ddim_sched") for c in ours.__mro__[:first])
    assert type(scheduler).__module__ == "ddim_sched" and type(scheduler) is not theirs


def test_the_parallel_scheduler_is_also_a_ddim_scheduler():
    # as ddim_sched.DDIMParallelScheduler derives from ddim_sched.DDIMScheduler; diffusers' does not
    assert isinstance(DDIMParallelScheduler(), diffusers.DDIMScheduler)
    assert not issubclass(diffusers.DDIMParallelScheduler, diffusers.DDIMScheduler)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=IDS)
def test_every_name_of_the_diffusers_class_is_ours_or_deliberately_inherited(ours, theirs):
    theirs_names = names_defined_by_diffusers(theirs)
    assert {"step", "set_timesteps", "load_config", "__init__", "__len__", "__getattr__", "__repr__"} <= theirs_names
    missing = sorted(name for name in theirs_names if not hasattr(ours, name))
    assert missing == []
    # Every name reached on our class that a diffusers class supplies (not only theirs: DDIMParallelScheduler
    # has diffusers' DDIMScheduler in its MRO too) is one of the deliberate few.
    from_diffusers = {name for name in dir(ours) if is_diffusers(owner(ours, name) or object)}
    assert from_diffusers == set(INHERITED)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=IDS)
def test_every_attribute_a_diffusers_instance_has_is_there(ours, theirs):
    mine, reference = ours(), theirs()
    for scheduler in (mine, reference):
        scheduler.set_timesteps(10, **({"mu": 0.5} if scheduler.config.get("use_dynamic_shifting") else {}))
    missing = [name for name in vars(reference) if not hasattr(mine, name)]
    assert missing == []


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=IDS)
def test_diffusers_init_never_runs(ours, theirs, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"diffusers' {theirs.__name__}.__init__ ran")

    monkeypatch.setattr(theirs, "__init__", refuse)
    scheduler = ours.from_config(ours(num_train_timesteps=500).config)
    assert scheduler.config.num_train_timesteps == 500


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=IDS)
def test_push_to_hub_uploads_what_our_save_pretrained_writes(ours, theirs, monkeypatch):
    uploads = []

    def upload_folder(repo_id, folder_path, **kwargs):
        files = {path.name: path.read_text() for path in __import__("pathlib").Path(folder_path).iterdir()}
        uploads.append((repo_id, files, kwargs["commit_message"]))
        return "uploaded"

    monkeypatch.setattr(hub_utils, "create_repo", lambda repo_id, **kwargs: types.SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(hub_utils, "load_or_create_model_card", lambda *args, **kwargs: types.SimpleNamespace())
    monkeypatch.setattr(hub_utils, "populate_model_card", lambda card, *args, **kwargs: card)
    monkeypatch.setattr(hub_utils, "upload_folder", upload_folder)
    scheduler = ours(num_train_timesteps=500)
    assert scheduler.push_to_hub("someone/a-scheduler", subfolder="scheduler") == "uploaded"
    ((repo_id, files, message),) = uploads
    assert repo_id == "someone/a-scheduler" and message == "Upload scheduler"
    assert json.loads(files["scheduler_config.json"]) == json.loads(scheduler.to_json_string())


def test_flow_scheduler_has_an_identity_scale_model_input_for_pipelines_that_check_the_exact_type():
    # Bria: `if type(self.scheduler) != FlowMatchEulerDiscreteScheduler: scale_model_input(latents, t)`
    scheduler = FlowMatchDDIMScheduler()
    scheduler.set_timesteps(4)
    latents = torch.randn(2, 16, 8)
    assert type(scheduler) is not diffusers.FlowMatchEulerDiscreteScheduler
    assert scheduler.scale_model_input(latents, scheduler.timesteps[0]) is latents


@pytest.mark.parametrize("kind", ["exponential", "linear"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_dynamic_shifting_without_mu_shifts_by_the_static_shift(kind, shift):
    # A pipeline that passes mu only to diffusers' own flow class (EasyAnimate) calls set_timesteps without it.
    scheduler = FlowMatchDDIMScheduler(use_dynamic_shifting=True, time_shift_type=kind, shift=shift)
    scheduler.set_timesteps(8)
    without_mu = scheduler.sigmas.clone()
    scheduler.set_timesteps(8, mu=shift if kind == "linear" else math.log(shift))
    assert torch.equal(without_mu, scheduler.sigmas)
    # ... which is the static shift s·σ / (1 + (s − 1)·σ) of the unshifted grid
    grid = np.linspace(1.0, 1 / 1000, 8)
    expected = shift * grid / (1 + (shift - 1) * grid)
    assert np.allclose(without_mu[:-1].numpy(), expected, rtol=1e-6)


class _Stub:
    config = types.SimpleNamespace()


def test_pipelines_that_check_the_flow_class_keep_ours():
    # LongCat-AudioDiT replaces any scheduler that is not a FlowMatchEulerDiscreteScheduler.
    scheduler = FlowMatchDDIMScheduler(shift=1.0, invert_sigmas=True)
    pipe = diffusers.LongCatAudioDiTPipeline(
        vae=_Stub(), text_encoder=None, tokenizer=None, transformer=_Stub(), scheduler=scheduler
    )
    assert pipe.scheduler is scheduler


def test_pipelines_that_check_the_ddim_class_take_its_branch():
    from diffusers.pipelines.deprecated.audio_diffusion.pipeline_audio_diffusion import AudioDiffusionPipeline

    scheduler = DDIMScheduler()
    pipe = AudioDiffusionPipeline(vqvae=None, unet=None, mel=None, scheduler=scheduler)
    assert pipe.scheduler is scheduler and pipe.get_default_steps() == 50  # 1000 for a non-DDIM scheduler


def test_flow_private_helpers_give_what_diffusers_gives():
    ours, theirs = FlowMatchDDIMScheduler(shift=3.0), diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sigmas = np.linspace(0.95, 0.05, 6)
    assert ours._sigma_to_t(0.25) == theirs._sigma_to_t(0.25)
    for name in ("_time_shift_exponential", "_time_shift_linear"):
        assert np.allclose(getattr(ours, name)(0.7, 1.0, sigmas), getattr(theirs, name)(0.7, 1.0, sigmas), rtol=1e-12)
    for name in ("_convert_to_karras", "_convert_to_exponential"):
        assert np.allclose(getattr(ours, name)(sigmas, 5), getattr(theirs, name)(sigmas, 5), rtol=1e-12)
    if __import__("importlib").util.find_spec("scipy") is not None:  # diffusers' beta grid needs scipy
        assert np.allclose(ours._convert_to_beta(sigmas, 5), theirs._convert_to_beta(sigmas, 5), rtol=1e-9)
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(6)
    ours._init_step_index(ours.timesteps[2])
    theirs._init_step_index(theirs.timesteps[2])
    assert ours.step_index == ours._step_index == theirs.step_index == 2
    ours._step_index = 4  # (LEDITS++ advances diffusers' schedulers this way)
    x = torch.randn(1, 4)
    ours.step(x, ours.timesteps[4], x)
    assert ours.step_index == 5
    ours._step_index = None
    assert ours.step_index is None


def test_ddim_private_helpers_give_what_diffusers_gives():
    config = dict(thresholding=True, sample_max_value=2.0, dynamic_thresholding_ratio=0.9)
    ours, theirs = DDIMParallelScheduler(**config), diffusers.DDIMParallelScheduler(**config)
    x = 3 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.float16):
        mine, reference = ours._threshold_sample(x.to(dtype)), theirs._threshold_sample(x.to(dtype))
        assert mine.dtype == dtype and torch.allclose(mine.float(), reference.float(), rtol=1e-3, atol=1e-3)
    for spacing in ("leading", "trailing", "linspace"):
        ours, theirs = (
            DDIMParallelScheduler(timestep_spacing=spacing),
            diffusers.DDIMParallelScheduler(timestep_spacing=spacing),
        )
        for scheduler in (ours, theirs):
            scheduler.set_timesteps(7)
        alpha_bar = ours.alpha_bar.tolist()
        for t in theirs.timesteps:  # ParaDiGMS calls it with the timestep alone: the step lands on t − T // S
            a_t, prev = alpha_bar[int(t)], int(t) - 1000 // 7
            a_prev = alpha_bar[prev] if prev >= 0 else 1.0
            expected = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
            assert float(ours._get_variance(t)) == pytest.approx(expected, rel=1e-6, abs=1e-12)
            # (diffusers' float32 arithmetic loses up to ~2e-4 relative where ᾱ_t / ᾱ_prev is close to 1)
            assert float(ours._get_variance(t)) == pytest.approx(float(theirs._get_variance(t)), rel=1e-3, abs=1e-9)


def test_without_diffusers_nothing_changes(tmp_path):
    """DDIM_SCHED_NO_DIFFUSERS=1 in a fresh interpreter: no diffusers class in any MRO, diffusers not even
    imported, and the schedulers work as before (a pipeline importing diffusers afterwards sees a foreign
    class)."""
    code = f"""
import sys
import torch, ddim_sched
from ddim_sched.compat import scheduler_mixin
assert "diffusers" not in sys.modules, "ddim_sched imported diffusers"
assert scheduler_mixin.DIFFUSERS_INTEGRATION.startswith("off"), scheduler_mixin.DIFFUSERS_INTEGRATION
classes = (ddim_sched.DDIMScheduler, ddim_sched.DDIMInverseScheduler, ddim_sched.DDIMParallelScheduler,
           ddim_sched.FlowMatchDDIMScheduler)
for cls in classes:
    assert all(c.__module__.startswith(("ddim_sched", "builtins")) for c in cls.__mro__), cls.__mro__
s = ddim_sched.DDIMScheduler(clip_sample=False)
s.set_timesteps(10)
x = torch.randn(1, 4)
assert torch.isfinite(s.step(x, 901, x).prev_sample).all()
s.save_pretrained({str(tmp_path)!r})
assert ddim_sched.DDIMScheduler.from_pretrained({str(tmp_path)!r}).ddim_config == s.ddim_config
flow = ddim_sched.FlowMatchDDIMScheduler(use_dynamic_shifting=True)
flow.set_timesteps(10)  # a pipeline's branch for other classes passes no mu
import diffusers
assert not isinstance(s, diffusers.DDIMScheduler) and not isinstance(flow, diffusers.FlowMatchEulerDiscreteScheduler)
print("ok")
"""
    env = {**__import__("os").environ, "DDIM_SCHED_NO_DIFFUSERS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
