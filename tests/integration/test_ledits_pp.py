"""LEDITS++ (diffusers' LEditsPPPipelineStableDiffusion) with ddim_sched's DDIMScheduler, as users swap it in.

The pipeline takes its DDIM branch only for a ``diffusers.DDIMScheduler`` instance: any other scheduler is
replaced by DPMSolver at construction, and inversion dispatches on the same check (``compute_noise``). It
also changes the scheduler as diffusers allows: ``scheduler.config.timestep_spacing = "leading"`` before
``set_timesteps``, and ``add_noise`` with a float tensor of timesteps. Inversion (noise maps and latents)
and editing run with ours — assigned after construction, and passed at construction — and with diffusers'
DDIMScheduler, on tiny random-weight components, and must agree to float32 rounding.

diffusers' own DDIMScheduler cannot run this inversion: its ``add_noise`` indexes its table with the
float tensor ``torch.Tensor([t])`` LEDITS++ passes and raises IndexError (diffusers 0.42.1; the pipeline's
fast tests use DPMSolver). The reference is therefore diffusers' DDIMScheduler with timesteps cast to int64
in ``add_noise`` — its own arithmetic otherwise — and the failure is recorded, not asserted.
"""

from __future__ import annotations

import string

import diffusers
import pytest
import torch

import ddim_sched
from tests.tiny_models import sd_loop
from tests.tolerances import PARITY_RTOL

pytestmark = pytest.mark.usefixtures("one_thread")

SD = {**sd_loop.SD_SCHEDULER_CONFIG, "steps_offset": 1}
INVERSION_STEPS = 8


class IntegerTimestepsDDIMScheduler(diffusers.DDIMScheduler):
    """diffusers' DDIMScheduler, its add_noise given int64 timesteps (what its table indexing needs)."""

    def add_noise(self, original_samples, noise, timesteps):
        return super().add_noise(original_samples, noise, timesteps.long())


def clip_tokenizer():
    """A CLIP tokenizer built offline: one token per character (with and without end-of-word)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for character in string.ascii_lowercase + string.digits + " .,!?'-":
        vocab.setdefault(character, len(vocab))
        vocab.setdefault(character + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


@pytest.fixture(scope="module")
def components():
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = clip_tokenizer()
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=sd_loop.CROSS_ATTENTION_DIM,
        intermediate_size=16,
        num_attention_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    image = torch.Generator().manual_seed(0)
    pixels = (255 * torch.rand(32, 32, 3, generator=image)).to(torch.uint8).numpy()
    from PIL import Image

    return dict(
        unet=sd_loop.tiny_unet(),
        vae=sd_loop.tiny_vae(),
        text_encoder=CLIPTextModel(config).eval(),
        tokenizer=tokenizer,
        image=Image.fromarray(pixels, "RGB"),
    )


def pipeline(components, scheduler):
    pipe = diffusers.LEditsPPPipelineStableDiffusion(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=components["tokenizer"],
        unet=components["unet"],
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def invert_and_edit(pipe, image):
    """(noise maps, inverted latents, edited latents) of one LEDITS++ inversion and edit."""
    pipe.invert(image=image, num_inversion_steps=INVERSION_STEPS, skip=0.25, generator=torch.Generator().manual_seed(0))
    zs, init = pipe.zs.clone(), pipe.init_latents.clone()
    edited = pipe(
        editing_prompt=["glasses", "sun"],
        reverse_editing_direction=[False, True],
        edit_guidance_scale=[5.0, 3.0],
        edit_threshold=0.8,
        use_intersect_mask=False,  # (its attention masks need cross-attention at 1/4 of the latent size)
        generator=torch.Generator().manual_seed(1),
        output_type="latent",
    ).images
    return zs, init, edited


@pytest.fixture(scope="module")
def reference(components):
    pipe = pipeline(components, IntegerTimestepsDDIMScheduler(**SD))
    assert type(pipe.scheduler) is IntegerTimestepsDDIMScheduler  # the pipeline kept it: its DDIM branch
    return invert_and_edit(pipe, components["image"])


def assert_equal_to_float32_rounding(ours, reference):
    for name, mine, theirs in zip(("noise maps", "inverted latents", "edited latents"), ours, reference, strict=True):
        assert mine.shape == theirs.shape and torch.isfinite(mine).all(), name
        error = float((mine.double() - theirs.double()).norm() / theirs.double().norm())
        assert error <= PARITY_RTOL[torch.float32], (name, error)


def test_ours_assigned_after_construction(components, reference):
    pipe = pipeline(components, diffusers.DDIMScheduler(**SD))
    pipe.scheduler = ddim_sched.DDIMScheduler.from_config(pipe.scheduler.config)
    ours = invert_and_edit(pipe, components["image"])
    assert type(pipe.scheduler) is ddim_sched.DDIMScheduler
    assert pipe.scheduler.config.timestep_spacing == "leading"  # written by the pipeline
    assert_equal_to_float32_rounding(ours, reference)


def test_ours_passed_at_construction(components, reference, warnings_logged):
    scheduler = ddim_sched.DDIMScheduler(**SD)
    pipe = pipeline(components, scheduler)
    assert pipe.scheduler is scheduler  # not replaced by DPMSolverMultistepScheduler
    assert not [r for r in warnings_logged() if "DPMSolverMultistepScheduler" in r.getMessage()]
    assert_equal_to_float32_rounding(invert_and_edit(pipe, components["image"]), reference)


def test_diffusers_own_ddim_inversion_is_observed(components, observe):
    pipe = pipeline(components, diffusers.DDIMScheduler(**SD))
    try:
        pipe.invert(image=components["image"], num_inversion_steps=2, generator=torch.Generator().manual_seed(0))
    except IndexError as err:
        observe(f"diffusers' DDIMScheduler in LEDITS++ inversion raises IndexError: {err}")
    else:
        observe("diffusers' DDIMScheduler in LEDITS++ inversion runs")


def test_add_noise_reads_a_floating_tensor_of_whole_numbers_as_integers():
    scheduler = ddim_sched.DDIMScheduler(**SD)
    x0, noise = torch.randn(2, 4), torch.randn(2, 4)
    as_integers = scheduler.add_noise(x0, noise, torch.tensor([500, 20]))
    assert torch.equal(scheduler.add_noise(x0, noise, torch.Tensor([500, 20])), as_integers)
    assert torch.equal(
        scheduler.get_velocity(x0, noise, torch.Tensor([500, 20])),
        scheduler.get_velocity(x0, noise, torch.tensor([500, 20])),
    )
    for bad in (torch.Tensor([500.5, 20]), torch.tensor([float("nan"), 1.0])):
        with pytest.raises(TypeError, match="timesteps must be whole numbers"):
            scheduler.add_noise(x0, noise, bad)
