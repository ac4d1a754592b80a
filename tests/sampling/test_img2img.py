"""img2img: set_begin_index / begin_index / step_index, img2img_timesteps, and diffusers' img2img pipeline."""

import warnings

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    UNet2DConditionModel,
)
from diffusers import (
    DDIMScheduler as DiffusersDDIM,
)

import ddim_sched
from ddim_sched import DDIMScheduler, img2img_timesteps
from tests.tolerances import PARITY_RTOL, rel_l2

SD = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


# ------------------------------------------------------------------ begin_index / step_index


def euler():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EulerDiscreteScheduler()


def step_indices(scheduler, begin_index, first, steps):
    """step_index before and after each of `steps` steps starting at timesteps[first]."""
    scheduler.set_timesteps(10)
    if begin_index is not None:
        scheduler.set_begin_index(begin_index)
    seen = [scheduler.step_index]
    x = torch.ones(1, 4)
    for t in scheduler.timesteps[first : first + steps]:
        x = scheduler.step(0.1 * x, t, x).prev_sample
        seen.append(scheduler.step_index)
    return seen


@pytest.mark.parametrize("begin_index, first", [(None, 0), (None, 3), (4, 4), (0, 0)])
def test_step_index_follows_diffusers(begin_index, first):
    # diffusers' newer schedulers (Euler here): None before the first step, then the index of the next step.
    ours = step_indices(DDIMScheduler(), begin_index, first, 3)
    assert ours == step_indices(euler(), begin_index, first, 3)
    assert ours == [None, first + 1, first + 2, first + 3]


def test_begin_index_lifecycle():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    assert scheduler.begin_index is None and scheduler.step_index is None
    scheduler.set_begin_index(6)
    assert scheduler.begin_index == 6
    scheduler.set_begin_index()
    assert scheduler.begin_index == 0
    x = torch.ones(1, 4)
    scheduler.step(x, scheduler.timesteps[0], x)
    assert scheduler.step_index == 1
    scheduler.set_timesteps(10)  # a new schedule forgets both
    assert scheduler.begin_index is None and scheduler.step_index is None


def test_step_index_with_a_timestep_not_in_the_schedule():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    x = torch.ones(1, 4)
    scheduler.step(x, 5, x)
    assert scheduler.step_index is None


@pytest.mark.parametrize(
    "value, error",
    [(-1, ValueError), (10, ValueError), (1.0, TypeError), (True, TypeError), ("2", TypeError)],
)
def test_set_begin_index_rejects(value, error):
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    with pytest.raises(error, match="begin_index"):
        scheduler.set_begin_index(value)


# ------------------------------------------------------------------ img2img_timesteps


@pytest.fixture(scope="module")
def components():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    return unet.eval(), vae.eval()


def pipeline(components, scheduler):
    unet, vae = components
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionImg2ImgPipeline(
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("make", [lambda: DDIMScheduler(**SD), lambda: DiffusersDDIM(**SD)], ids=["ours", "diffusers"])
@pytest.mark.parametrize("steps, strength", [(10, 0.3), (10, 1.0), (25, 0.75), (50, 0.61), (7, 0.5)])
def test_helper_equals_the_pipelines_get_timesteps(components, make, steps, strength):
    pipe = pipeline(components, make())
    pipe.scheduler.set_timesteps(steps)
    expected, n = pipe.get_timesteps(steps, strength, "cpu")
    expected_begin = getattr(pipe.scheduler, "begin_index", None)
    scheduler = make()
    timesteps, latent_timestep = img2img_timesteps(scheduler, steps, strength, device="cpu")
    assert timesteps.tolist() == expected.tolist() and len(timesteps) == n
    assert latent_timestep.tolist() == expected[:1].tolist()
    assert getattr(scheduler, "begin_index", None) == expected_begin


def test_helper_rejects():
    with pytest.raises(ValueError, match="strength"):
        img2img_timesteps(DDIMScheduler(), 10, 1.5)
    with pytest.raises(ValueError, match="strength"):
        img2img_timesteps(DDIMScheduler(), 10, -0.1)
    with pytest.raises(TypeError, match="strength"):
        img2img_timesteps(DDIMScheduler(), 10, "0.5")
    with pytest.raises(ValueError, match="keeps no step"):
        img2img_timesteps(DDIMScheduler(), 10, 0.05)


def test_helper_is_exported():
    assert ddim_sched.img2img_timesteps is img2img_timesteps
    assert "img2img_timesteps" in ddim_sched.__all__


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_img2img_pipeline_gives_equal_images(components, eta):
    def run(scheduler):
        pipe = pipeline(components, scheduler)
        generator = torch.Generator().manual_seed(0)
        prompt_embeds = torch.randn(1, 7, 16, generator=generator)
        negative_prompt_embeds = torch.randn(1, 7, 16, generator=generator)
        image = torch.rand(1, 3, 16, 16, generator=generator)
        return pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            image=image,
            strength=0.6,
            num_inference_steps=10,
            guidance_scale=5.0,
            eta=eta,
            generator=torch.Generator().manual_seed(1),
            output_type="pt",
        ).images

    reference = DiffusersDDIM(**SD)
    expected = run(reference)
    ours = DDIMScheduler.from_config(reference.config)
    images = run(ours)
    assert images.shape == expected.shape == (1, 3, 16, 16)
    assert rel_l2(images, expected) <= PARITY_RTOL[torch.float32]
    assert ours.begin_index == 4 and ours.step_index == 10  # the pipeline ran steps 4..9 of 10


@pytest.mark.parametrize("steps, strength, kept", [(50, 0.5, 24), (1000, 0.02, 13), (50, 1.0, 49)])
def test_strength_counts_the_steps_a_spacing_keeps(steps, strength, kept):
    # quad drops repeated timesteps: S = 50 keeps 49, S = 1000 keeps 688 (T = 1000). Strength applies to those.
    scheduler = DDIMScheduler(timestep_spacing="quad", clip_sample=False)
    timesteps, latent_timestep = img2img_timesteps(scheduler, steps, strength)
    assert len(timesteps) == kept == int(len(scheduler.timesteps) * strength)
    assert torch.equal(timesteps, scheduler.timesteps[-kept:])
    assert scheduler.begin_index == len(scheduler.timesteps) - kept
    assert latent_timestep.tolist() == [int(timesteps[0])]
