"""ddim_sched.DDIMScheduler as a drop-in inside real diffusers pipelines and a hand-written loop.

Each case runs twice — with diffusers' DDIMScheduler and with
``ddim_sched.DDIMScheduler.from_config(pipe.scheduler.config, ...)`` — on tiny random-weight
components (tests/tiny_models.py), and requires equal outputs within the float32 parity tolerance.
StableDiffusionPipeline needs transformers installed (it is in the test extra).
"""

from __future__ import annotations

import json

import diffusers
import numpy as np
import pytest
import torch

import ddim_sched
from tests.tiny_models import NO_TEXT_ENCODER, ddim_pipeline, sd_loop, stable_diffusion_pipeline
from tests.tolerances import PARITY_RTOL, rel_l2

pytestmark = pytest.mark.usefixtures("one_thread")

SD = sd_loop.SD_SCHEDULER_CONFIG
STEPS = 10
# Align Your Steps' published 10-step SD 1.5 timesteps (docs/reference.md (align your steps)).
AYS_SD15_TIMESTEPS = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]

# case -> (scheduler config overrides, pipeline kwargs, one generator per image?)
SD_CASES = {
    "sd": ({}, {}, False),
    "zero_snr": (sd_loop.ZERO_SNR_OVERRIDES, {"guidance_rescale": 0.7}, False),
    "eta0.5_generators": ({}, {"eta": 0.5}, True),
}


def generators(per_image: bool, batch: int = 2):
    """A fresh seeded generator, or a list of one per image (seeds 0..batch-1)."""
    if per_image:
        return [torch.Generator().manual_seed(i) for i in range(batch)]
    return torch.Generator().manual_seed(0)


def run_both(pipe, config, overrides, call):
    """call(pipe) with diffusers' scheduler, then with ours from the same config: (ours, reference)."""
    pipe.scheduler = diffusers.DDIMScheduler.from_config(config, **overrides)
    reference = call(pipe)
    pipe.scheduler = ddim_sched.DDIMScheduler.from_config(pipe.scheduler.config, **overrides)
    assert isinstance(pipe.scheduler, ddim_sched.DDIMScheduler)
    ours = call(pipe)
    return ours, reference


# ---------------------------------------------------------------------------- DDIMPipeline


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_pipeline_matches_diffusers(tiny_pixel_unet, parity, eta):
    # diffusers' default DDIM config (linear betas, clip_sample=True): a pixel-space model.
    pipe = ddim_pipeline(tiny_pixel_unet, diffusers.DDIMScheduler())

    def call(p):
        generator = torch.Generator().manual_seed(0)
        return p(batch_size=2, generator=generator, eta=eta, num_inference_steps=STEPS, output_type="np").images

    ours, reference = run_both(pipe, pipe.scheduler.config, {}, call)
    # Images are clamped to [0, 1]: most pixels must be inside, or the comparison would be vacuous.
    assert ((ours > 0) & (ours < 1)).mean() > 0.5
    parity(f"DDIMPipeline eta={eta}", ours, reference)


def test_ddim_pipeline_converts_our_scheduler_to_diffusers(tiny_pixel_unet):
    # DDIMPipeline.__init__ calls diffusers' DDIMScheduler.from_config(scheduler.config): our config
    # view must load there with every diffusers field intact.
    ours = ddim_sched.DDIMScheduler(clip_sample=False, timestep_spacing="trailing", beta_schedule="scaled_linear")
    pipe = ddim_pipeline(tiny_pixel_unet, ours)
    assert type(pipe.scheduler) is diffusers.DDIMScheduler
    for key in ddim_sched.ddim.config.DIFFUSERS_FIELDS:
        assert pipe.scheduler.config[key] == ours.config[key], key


# ---------------------------------------------------------------------------- StableDiffusionPipeline


def sd_call(tiny_sd, output_type, per_image, **kwargs):
    def call(pipe):
        return pipe(
            prompt_embeds=tiny_sd.prompt_embeds,
            negative_prompt_embeds=tiny_sd.negative_prompt_embeds,
            guidance_scale=7.5,
            num_inference_steps=kwargs.pop("num_inference_steps", STEPS),
            height=sd_loop.IMAGE_SIZE,
            width=sd_loop.IMAGE_SIZE,
            generator=generators(per_image),
            output_type=output_type,
            **kwargs,
        ).images

    return call


@pytest.mark.parametrize("case", list(SD_CASES))
@pytest.mark.parametrize("output_type", ["latent", "np"])
def test_stable_diffusion_pipeline_matches_diffusers(tiny_sd, parity, case, output_type):
    overrides, kwargs, per_image = SD_CASES[case]
    pipe = stable_diffusion_pipeline(tiny_sd.unet, tiny_sd.vae, diffusers.DDIMScheduler(**SD))
    ours, reference = run_both(
        pipe, pipe.scheduler.config, overrides, sd_call(tiny_sd, output_type, per_image, **kwargs)
    )
    parity(f"StableDiffusionPipeline {case} ({output_type})", ours, reference)


def test_parity_check_detects_a_one_timestep_shift(tiny_sd):
    # The comparison is sensitive: steps_offset 0 instead of 1 (every timestep one lower) is caught.
    pipe = stable_diffusion_pipeline(tiny_sd.unet, tiny_sd.vae, diffusers.DDIMScheduler(**SD))
    call = sd_call(tiny_sd, "latent", False)
    reference = call(pipe)
    pipe.scheduler = ddim_sched.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0)
    assert rel_l2(call(pipe), reference) > 10 * PARITY_RTOL[torch.float32]


def test_zero_snr_eta_one_pipeline_is_finite(tiny_sd, observe):
    # docs/migration.md (diffusers defects): with zero terminal SNR, η = 1 makes diffusers' float32
    # 1 − ᾱ_prev − σ² a rounding error at the first step, NaN on CPUs where it rounds below 0. ddim_sched has
    # no such cancellation
    # (its first step equals the float64 closed form: tests/parity/test_ddim.py). Diffusers' result is recorded.
    pipe = stable_diffusion_pipeline(tiny_sd.unet, tiny_sd.vae, diffusers.DDIMScheduler(**SD))
    ours, reference = run_both(
        pipe, pipe.scheduler.config, sd_loop.ZERO_SNR_OVERRIDES, sd_call(tiny_sd, "latent", False, eta=1.0)
    )
    assert torch.isfinite(ours).all()
    nan = bool(torch.isnan(reference).any())
    observe(f"diffusers' zero-SNR eta=1 pipeline output {'has NaN' if nan else 'is finite'} on this CPU")


def test_pipeline_init_patches_our_scheduler_config(tiny_sd, parity):
    # StableDiffusionPipeline.__init__ forces steps_offset=1 and clip_sample=False on outdated configs
    # by assigning scheduler._internal_dict = FrozenDict(new_config): ours must take the new config.
    outdated = {**SD, "steps_offset": 0, "clip_sample": True}
    with pytest.warns(FutureWarning):
        pipe = stable_diffusion_pipeline(tiny_sd.unet, tiny_sd.vae, ddim_sched.DDIMScheduler(**outdated))
    assert isinstance(pipe.scheduler, ddim_sched.DDIMScheduler)
    assert pipe.scheduler.config.steps_offset == 1
    assert pipe.scheduler.config.clip_sample is False
    pipe.scheduler.set_timesteps(5)
    assert pipe.scheduler.timesteps.tolist() == [801, 601, 401, 201, 1]  # docs/concepts.md (timestep spacings)

    call = sd_call(tiny_sd, "latent", False)
    ours = call(pipe)
    with pytest.warns(FutureWarning):
        reference_pipe = stable_diffusion_pipeline(tiny_sd.unet, tiny_sd.vae, diffusers.DDIMScheduler(**outdated))
    parity("StableDiffusionPipeline constructed with ours, patched config (latent)", ours, call(reference_pipe))


def test_internal_dict_setter_rebuilds_the_tables():
    from diffusers.configuration_utils import FrozenDict

    scheduler = ddim_sched.DDIMScheduler()
    scheduler._internal_dict = FrozenDict({**scheduler.config, "beta_schedule": "scaled_linear", "beta_end": 0.012})
    expected = ddim_sched.DDIMScheduler(beta_schedule="scaled_linear", beta_end=0.012)
    fields = ddim_sched.DDIMConfig.field_names()
    assert {k: scheduler.config[k] for k in fields} == {k: expected.config[k] for k in fields}
    assert torch.equal(scheduler.alphas_cumprod, expected.alphas_cumprod)


def test_signature_inspection_that_pipelines_do(tiny_sd, observe):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

    pipe = stable_diffusion_pipeline(tiny_sd.unet, tiny_sd.vae, ddim_sched.DDIMScheduler(**SD))
    generator = torch.Generator()
    # accepts_eta / accepts_generator, from inspect.signature(scheduler.step)
    assert pipe.prepare_extra_step_kwargs(generator, 0.3) == {"eta": 0.3, "generator": generator}
    # accepts_timesteps, from inspect.signature(scheduler.set_timesteps)
    timesteps, steps = retrieve_timesteps(pipe.scheduler, timesteps=[901, 501, 101, 1])
    assert timesteps.tolist() == [901, 501, 101, 1] and steps == 4
    # diffusers' own DDIMScheduler has no `timesteps` parameter (docs/migration.md, diffusers defects)
    try:
        retrieve_timesteps(diffusers.DDIMScheduler(**SD), timesteps=[901, 501, 101, 1])
        observe("diffusers' DDIMScheduler accepted custom timesteps")
    except ValueError as err:
        observe(f"diffusers' DDIMScheduler with custom timesteps: {err}")
    # accept_sigmas, likewise: k-diffusion levels to the nearest timesteps (docs/recipes.md)
    timesteps, steps = retrieve_timesteps(pipe.scheduler, sigmas=ddim_sched.ays.ays_sigmas("sd15", 10))
    assert timesteps.tolist() == AYS_SD15_TIMESTEPS and steps == 10
    try:
        retrieve_timesteps(diffusers.DDIMScheduler(**SD), sigmas=[1.0, 0.5, 0.0])
        observe("diffusers' DDIMScheduler accepted custom sigmas")
    except ValueError as err:
        observe(f"diffusers' DDIMScheduler with custom sigmas: {err}")


def test_sigmas_through_the_pipeline(tiny_sd):
    # pipe(sigmas=Align Your Steps' SD 1.5 levels) runs the published timesteps (docs/reference.md (align your
    # steps)): the same images as pipe(timesteps=that list), and not those of the default 10 steps.
    pipe = stable_diffusion_pipeline(tiny_sd.unet, tiny_sd.vae, ddim_sched.DDIMScheduler(**SD))
    by_sigmas = sd_call(tiny_sd, "latent", False, sigmas=ddim_sched.ays.ays_sigmas("sd15", 10).tolist())(pipe)
    assert pipe.scheduler.timesteps.tolist() == AYS_SD15_TIMESTEPS
    by_timesteps = sd_call(tiny_sd, "latent", False, timesteps=AYS_SD15_TIMESTEPS)(pipe)
    assert torch.equal(by_sigmas, by_timesteps)
    assert rel_l2(by_sigmas, sd_call(tiny_sd, "latent", False)(pipe)) > 1e-3
    # diffusers' own 3-decimal list (AysSchedules) maps within one timestep of the published one.
    from diffusers.schedulers.scheduling_utils import AysSchedules

    sd_call(tiny_sd, "latent", False, sigmas=AysSchedules["StableDiffusionSigmas"])(pipe)
    assert np.abs(pipe.scheduler.timesteps.numpy() - np.array(AYS_SD15_TIMESTEPS)).max() <= 1


def test_custom_timesteps_through_the_pipeline(tiny_sd, parity):
    # pipe(timesteps=the leading schedule) equals diffusers' pipe(num_inference_steps=5): with a
    # custom list each step lands on the next listed timestep, as the leading stride does here.
    pipe = stable_diffusion_pipeline(tiny_sd.unet, tiny_sd.vae, diffusers.DDIMScheduler(**SD))
    reference = sd_call(tiny_sd, "latent", False, num_inference_steps=5)(pipe)
    pipe.scheduler = ddim_sched.DDIMScheduler.from_config(pipe.scheduler.config)
    ours = sd_call(tiny_sd, "latent", False, timesteps=[801, 601, 401, 201, 1], num_inference_steps=None)(pipe)
    parity("StableDiffusionPipeline custom timesteps (latent)", ours, reference)


@pytest.mark.parametrize("loader", ["DiffusionPipeline", "StableDiffusionPipeline"])
@pytest.mark.parametrize("scheduler_class", ["DDIMScheduler", "DDIMInverseScheduler"])
def test_pipeline_save_and_load_keep_our_scheduler(tiny_sd, tmp_path, warnings_logged, loader, scheduler_class):
    """pipe.save_pretrained writes our scheduler; loading the pipeline gives back our class with the same
    config (extension keys included), the same images, and no warning."""
    cls = getattr(ddim_sched, scheduler_class)
    pipe = stable_diffusion_pipeline(tiny_sd.unet, tiny_sd.vae, diffusers.DDIMScheduler(**SD))
    pipe.scheduler = cls.from_config(pipe.scheduler.config, prev_timestep_rule="schedule", timestep_spacing="linspace")
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["ddim_sched", scheduler_class]
    assert (
        json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())["prev_timestep_rule"] == "schedule"
    )
    pipeline_class = getattr(diffusers, loader)
    loaded = pipeline_class.from_pretrained(tmp_path, torch_dtype=torch.float32, **NO_TEXT_ENCODER)
    assert type(loaded.scheduler) is cls
    fields = ddim_sched.DDIMConfig.field_names()
    assert {k: loaded.scheduler.config[k] for k in fields} == {k: pipe.scheduler.config[k] for k in fields}
    assert loaded.scheduler.config == {k: v for k, v in pipe.scheduler.config.items() if k != "_use_default_values"}
    assert not warnings_logged(), [r.getMessage() for r in warnings_logged()]
    if scheduler_class == "DDIMScheduler":
        loaded.set_progress_bar_config(disable=True)
        images = [sd_call(tiny_sd, "latent", False, num_inference_steps=4)(p) for p in (loaded, pipe)]
        assert rel_l2(*images) <= 1e-6


def test_pipeline_constructed_with_ours_logs_nothing(tiny_pixel_unet, warnings_logged):
    # DDIMPipeline converts its scheduler with diffusers' DDIMScheduler.from_config(ours.config): our
    # extension keys at their defaults are not in the config, so diffusers has nothing to warn about.
    pipe = ddim_pipeline(tiny_pixel_unet, ddim_sched.DDIMScheduler())
    assert type(pipe.scheduler) is diffusers.DDIMScheduler
    ours = ddim_sched.DDIMScheduler.from_config(pipe.scheduler.config)
    assert not warnings_logged(), [r.getMessage() for r in warnings_logged()]
    # A key that changes behaviour and which diffusers would drop still warns once.
    diffusers.DDIMScheduler.from_config(ddim_sched.DDIMScheduler(prev_timestep_rule="schedule").config)
    assert len(warnings_logged()) == 1 and "prev_timestep_rule" in warnings_logged()[0].getMessage()
    assert ours.config["prev_timestep_rule"] == "stride"


# ---------------------------------------------------------------------------- hand-written loop


@pytest.mark.parametrize("case", list(SD_CASES))
def test_sd_loop_matches_diffusers(tiny_sd, parity, case):
    overrides, kwargs, per_image = SD_CASES[case]
    config = {**SD, **overrides}
    results = []
    for cls in (ddim_sched.DDIMScheduler, diffusers.DDIMScheduler):
        results.append(
            sd_loop.generate(
                tiny_sd.unet,
                tiny_sd.vae,
                cls.from_config(config),
                tiny_sd.prompt_embeds,
                tiny_sd.negative_prompt_embeds,
                num_inference_steps=STEPS,
                generator=generators(per_image),
                **kwargs,
            )
        )
    parity(f"examples/sd_loop.py {case} (np)", *results)


def test_sd_loop_is_what_the_pipeline_does(tiny_sd, parity):
    # The hand-written loop reproduces StableDiffusionPipeline (same scheduler, same seed).
    config = {**SD, **sd_loop.ZERO_SNR_OVERRIDES}
    pipe = stable_diffusion_pipeline(tiny_sd.unet, tiny_sd.vae, diffusers.DDIMScheduler(**config))
    reference = sd_call(tiny_sd, "np", True, eta=0.5, guidance_rescale=0.7)(pipe)
    loop = sd_loop.generate(
        tiny_sd.unet,
        tiny_sd.vae,
        diffusers.DDIMScheduler(**config),
        tiny_sd.prompt_embeds,
        tiny_sd.negative_prompt_embeds,
        num_inference_steps=STEPS,
        generator=generators(True),
        eta=0.5,
        guidance_rescale=0.7,
    )
    parity("examples/sd_loop.py vs StableDiffusionPipeline, both diffusers' scheduler", loop, reference)


def requests(tiny_sd, arrivals=(0, 3)):
    return [
        sd_loop.Request(
            tiny_sd.prompt_embeds[i : i + 1],
            tiny_sd.negative_prompt_embeds[i : i + 1],
            torch.Generator().manual_seed(10 + i),
            arrival,
        )
        for i, arrival in enumerate(arrivals)
    ]


@pytest.mark.parametrize("case", ["sd", "zero_snr", "eta0.5_generators"])
def test_per_sample_timesteps_batched_equal_separate_requests(tiny_sd, parity, case):
    # Two requests at different denoising steps share every UNet call and every step() call (the
    # timestep is a [B] int64 tensor); each must get the image diffusers gives it alone.
    overrides, kwargs, _ = SD_CASES[case]
    config = {**SD, **overrides}
    ours = ddim_sched.DDIMScheduler.from_config(config)
    batched = sd_loop.generate_staggered(
        tiny_sd.unet, tiny_sd.vae, ours, requests(tiny_sd), num_inference_steps=STEPS, **kwargs
    )
    for i, request in enumerate(requests(tiny_sd)):
        reference = diffusers.DDIMScheduler.from_config(config)
        alone = sd_loop.generate(
            tiny_sd.unet,
            tiny_sd.vae,
            reference,
            request.prompt_embeds,
            request.negative_prompt_embeds,
            num_inference_steps=STEPS,
            generator=request.generator,
            **kwargs,
        )
        parity(
            f"examples/sd_loop.py staggered {case}, request {i} (arrives at tick {request.arrival})", batched[i], alone
        )


def test_sd_loop_script_runs(capsys):
    sd_loop.main(["--steps", "4"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    errors = [float(line.rsplit(" ", 1)[1]) for line in lines]
    assert all(np.isfinite(errors)) and max(errors) <= PARITY_RTOL[torch.float32], lines
