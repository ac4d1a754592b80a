"""FlowMatchDDIMScheduler as a drop-in inside diffusers' flow pipelines: StableDiffusion3Pipeline and
FluxPipeline on tiny random-weight components (no download; prompts come as embeddings, the text
encoders and tokenizers are None).

At η = 0 each pipeline gives the images it gives with diffusers' FlowMatchEulerDiscreteScheduler; at η > 0
it runs reproducibly; saving and loading the pipeline keeps our scheduler and its config.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch

import ddim_sched
from ddim_sched import FlowMatchDDIMScheduler

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 8
SIZE = 16
SD3_SCHEDULER = {"shift": 3.0}
FLUX_SCHEDULER = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                  "base_image_seq_len": 256, "max_image_seq_len": 4096}  # fmt: skip
SD3_NO_TEXT = {f"{kind}{suffix}": None for kind in ("text_encoder", "tokenizer") for suffix in ("", "_2", "_3")}
FLUX_NO_TEXT = {f"{kind}{suffix}": None for kind in ("text_encoder", "tokenizer") for suffix in ("", "_2")}


@pytest.fixture(scope="module")
def tiny():
    """A tiny VAE (one block: latents at image size), SD3 and Flux transformers, and 2 prompts' embeddings."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4, layers_per_block=1,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()  # fmt: skip
    sd3 = diffusers.SD3Transformer2DModel(
        sample_size=SIZE, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
        pos_embed_max_size=32,
    ).eval()  # fmt: skip
    flux = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    ).eval()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    embeds = [torch.randn(shape, generator=g) for shape in ((2, 8, 16), (2, 16), (2, 8, 16), (2, 16))]
    return SimpleNamespace(vae=vae, sd3=sd3, flux=flux, embeds=embeds)


def sd3_pipeline(tiny, scheduler):
    pipe = diffusers.StableDiffusion3Pipeline(transformer=tiny.sd3, vae=tiny.vae, scheduler=scheduler, **SD3_NO_TEXT)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_pipeline(tiny, scheduler):
    pipe = diffusers.FluxPipeline(transformer=tiny.flux, vae=tiny.vae, scheduler=scheduler, **FLUX_NO_TEXT)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(tiny, pipe, generator, output_type="np"):
    """Images for the two prompts (classifier-free guidance for SD3, distilled guidance for Flux)."""
    prompt, pooled, negative, negative_pooled = tiny.embeds
    kwargs = dict(prompt_embeds=prompt, pooled_prompt_embeds=pooled, height=SIZE, width=SIZE, generator=generator,
                  num_inference_steps=STEPS, output_type=output_type)  # fmt: skip
    if isinstance(pipe, diffusers.StableDiffusion3Pipeline):
        kwargs.update(
            negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled, guidance_scale=4.0
        )
    else:
        kwargs.update(guidance_scale=3.5)
    return pipe(**kwargs).images


PIPELINES = {"sd3": (sd3_pipeline, SD3_SCHEDULER, SD3_NO_TEXT), "flux": (flux_pipeline, FLUX_SCHEDULER, FLUX_NO_TEXT)}


@pytest.mark.parametrize("output_type", ["latent", "np"])
@pytest.mark.parametrize("name", list(PIPELINES))
def test_eta_zero_gives_diffusers_images(tiny, parity, name, output_type):
    build, config, _ = PIPELINES[name]
    pipe = build(tiny, diffusers.FlowMatchEulerDiscreteScheduler(**config))
    reference = generate(tiny, pipe, torch.Generator().manual_seed(0), output_type)
    pipe.scheduler = FlowMatchDDIMScheduler.from_config(pipe.scheduler.config)
    ours = generate(tiny, pipe, torch.Generator().manual_seed(0), output_type)
    if output_type == "np":  # images are clamped to [0, 1]: most pixels must be inside, or the check is vacuous
        assert ((reference > 0) & (reference < 1)).mean() > 0.9
    parity(f"{name} pipeline eta=0 vs FlowMatchEulerDiscreteScheduler ({output_type})", ours, reference)


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("name", list(PIPELINES))
def test_eta_runs_reproducibly_with_a_generator_list(tiny, name, eta):
    # Pipelines pass no generator to step: the step noise comes from torch's global generator (as diffusers'
    # stochastic flow sampler draws it), the initial latents from the generator list.
    build, config, _ = PIPELINES[name]
    pipe = build(tiny, FlowMatchDDIMScheduler(**config, eta=eta))
    runs = []
    for _ in range(2):
        torch.manual_seed(1234)
        runs.append(generate(tiny, pipe, [torch.Generator().manual_seed(i) for i in range(2)], "latent"))
    assert torch.isfinite(runs[0]).all() and torch.equal(runs[0], runs[1])
    pipe.scheduler = FlowMatchDDIMScheduler(**config)
    deterministic = generate(tiny, pipe, [torch.Generator().manual_seed(i) for i in range(2)], "latent")
    assert not torch.allclose(runs[0], deterministic, rtol=0, atol=1e-3)  # η adds noise
    torch.manual_seed(4321)
    other = generate(
        tiny,
        build(tiny, FlowMatchDDIMScheduler(**config, eta=eta)),
        [torch.Generator().manual_seed(i) for i in range(2)],
        "latent",
    )
    assert not torch.equal(other, runs[0])  # and the noise is drawn from the global generator


@pytest.mark.parametrize("loader", ["DiffusionPipeline", "own class"])
@pytest.mark.parametrize("name", list(PIPELINES))
def test_pipeline_save_and_load_keep_our_scheduler(tiny, tmp_path, warnings_logged, name, loader):
    build, config, no_text = PIPELINES[name]
    pipe = build(tiny, FlowMatchDDIMScheduler(**config, eta=0.3))
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["ddim_sched", "FlowMatchDDIMScheduler"]
    assert json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())["eta"] == 0.3
    pipeline_class = diffusers.DiffusionPipeline if loader == "DiffusionPipeline" else type(pipe)
    loaded = pipeline_class.from_pretrained(tmp_path, **no_text)
    assert type(loaded) is type(pipe) and type(loaded.scheduler) is FlowMatchDDIMScheduler
    assert loaded.scheduler.flow_config == pipe.scheduler.flow_config
    assert loaded.scheduler.config == {k: v for k, v in pipe.scheduler.config.items() if k != "_use_default_values"}
    assert not warnings_logged(), [r.getMessage() for r in warnings_logged()]
    loaded.set_progress_bar_config(disable=True)
    images = []
    for p in (loaded, pipe):
        torch.manual_seed(0)
        images.append(generate(tiny, p, torch.Generator().manual_seed(0), "latent"))
    assert torch.equal(*images)


def test_pipelines_see_the_diffusers_interface(tiny):
    # What the pipelines inspect: set_timesteps' `sigmas` and `mu`, config.get, the begin index, scale_noise
    # for img2img; and a custom sigma schedule through the pipeline's own `sigmas=` argument.
    from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

    scheduler = FlowMatchDDIMScheduler(**FLUX_SCHEDULER)
    sigmas = np.linspace(1.0, 1 / STEPS, STEPS)
    timesteps, steps = retrieve_timesteps(scheduler, sigmas=sigmas, mu=0.9)
    reference = diffusers.FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    expected, _ = retrieve_timesteps(reference, sigmas=sigmas, mu=0.9)
    assert steps == STEPS and torch.allclose(timesteps, expected, rtol=1e-6)
    assert scheduler.config.get("use_dynamic_shifting") is True and scheduler.config.get("base_shift") == 0.5
    assert ddim_sched.FlowMatchDDIMScheduler in scheduler.compatibles
