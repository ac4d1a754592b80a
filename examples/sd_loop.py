"""A hand-written Stable-Diffusion-style sampling loop, with any DDIM scheduler.

Run it as a script (tiny random-weight components, no download, a few seconds on a CPU):

    python examples/sd_loop.py

It samples with diffusers' ``DDIMScheduler`` and with ``ddim_sched.DDIMScheduler`` built from the
same config and prints how far apart the two images are; then it serves two requests that arrive
at different times in one batch (each batch element at its own timestep, which ddim_sched's
``step`` accepts as a [B] tensor) and checks that each request gets the image it would get alone.

The loop is what ``StableDiffusionPipeline.__call__`` does, without the pipeline: draw latents,
then per timestep run the UNet on [unconditional, conditional] inputs, combine them with
classifier-free guidance (optionally rescaled, Lin et al. 2023 §3.4), step the scheduler, and
finally decode with the VAE. The tests import it (``tests/integration/test_pipelines.py``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import diffusers
import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

import ddim_sched
from ddim_sched import rescale_noise_cfg

# ---------------------------------------------------------------------------- tiny components

# 4×8×8 latents decode to 3×16×16 images; 5 "text tokens" of width 8 stand in for CLIP's output.
LATENT_CHANNELS = 4
LATENT_SIZE = 8
IMAGE_SIZE = 16
TEXT_TOKENS = 5
CROSS_ATTENTION_DIM = 8

# Stable Diffusion v1's scheduler config (diffusers field names).
SD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}
# Lin et al. 2023: zero terminal SNR, trailing timesteps, v-prediction (use guidance_rescale=0.7).
ZERO_SNR_OVERRIDES = {
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "prediction_type": "v_prediction",
}


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    """A random-weight, text-conditioned latent UNet with Stable Diffusion's layout, in eval mode."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=4,
    ).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A random-weight AutoencoderKL mapping 3×16×16 images to 4×8×8 latents, in eval mode."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=LATENT_CHANNELS,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        sample_size=IMAGE_SIZE,
    ).eval()


def prompt_embeddings(batch_size: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, negative_prompt_embeds), each [batch_size, TEXT_TOKENS, CROSS_ATTENTION_DIM],
    standing in for a text encoder's output."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, TEXT_TOKENS, CROSS_ATTENTION_DIM)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


# ---------------------------------------------------------------------------- the loop


def initial_latents(unet: UNet2DConditionModel, scheduler, batch_size: int, generator) -> torch.Tensor:
    """x_T ~ N(0, I) scaled by init_noise_sigma, drawn as StableDiffusionPipeline draws it."""
    size = unet.config.sample_size
    shape = (batch_size, unet.config.in_channels, size, size)
    latents = randn_tensor(shape, generator=generator, device=unet.device, dtype=unet.dtype)
    return latents * scheduler.init_noise_sigma


def guided_prediction(
    unet: UNet2DConditionModel,
    scheduler,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    embeddings: torch.Tensor,
    guidance_scale: float,
    guidance_rescale: float = 0.0,
) -> torch.Tensor:
    """Classifier-free guidance: m = m_neg + w·(m_pos − m_neg), then optionally rescaled.

    Args:
        latents: x_t, [B, C, H, W].
        timestep: 0-d (one timestep for the batch) or [B] (one per batch element).
        embeddings: [2B, tokens, dim], negative prompts first, then positive ones.
    """
    model_input = scheduler.scale_model_input(torch.cat([latents, latents]), timestep)
    unet_timestep = timestep if timestep.dim() == 0 else torch.cat([timestep, timestep])
    prediction = unet(model_input, unet_timestep, encoder_hidden_states=embeddings).sample
    negative, positive = prediction.chunk(2)
    guided = negative + guidance_scale * (positive - negative)
    if guidance_rescale > 0:
        guided = rescale_noise_cfg(guided, positive, guidance_rescale=guidance_rescale)
    return guided


def decode(vae: AutoencoderKL, latents: torch.Tensor) -> np.ndarray:
    """Latents → images in [0, 1] as a [B, H, W, 3] float32 array (the pipeline's output_type="np")."""
    images = vae.decode(latents / vae.config.scaling_factor).sample
    return (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()


@torch.no_grad()
def generate(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor,
    *,
    num_inference_steps: int = 10,
    guidance_scale: float = 7.5,
    guidance_rescale: float = 0.0,
    eta: float = 0.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    output_type: str = "np",
) -> np.ndarray | torch.Tensor:
    """Sample a batch the way StableDiffusionPipeline does, with any DDIM-style scheduler.

    Returns:
        [B, H, W, 3] images in [0, 1] (``output_type="np"``) or the final latents ("latent").
    """
    latents = initial_latents(unet, scheduler, prompt_embeds.shape[0], generator)
    embeddings = torch.cat([negative_prompt_embeds, prompt_embeds])
    scheduler.set_timesteps(num_inference_steps, device=unet.device)
    for t in scheduler.timesteps:
        guided = guided_prediction(unet, scheduler, latents, t, embeddings, guidance_scale, guidance_rescale)
        latents = scheduler.step(guided, t, latents, eta=eta, generator=generator).prev_sample
    return latents if output_type == "latent" else decode(vae, latents)


# ---------------------------------------------------------------------------- per-sample timesteps


@dataclass
class Request:
    """One image to generate: its prompt embeddings ([1, tokens, dim] each), its own generator, and
    the tick of the serving loop at which it arrives."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    generator: torch.Generator
    arrival: int = 0


@torch.no_grad()
def generate_staggered(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler,
    requests: Sequence[Request],
    *,
    num_inference_steps: int = 10,
    guidance_scale: float = 7.5,
    guidance_rescale: float = 0.0,
    eta: float = 0.0,
) -> list[np.ndarray]:
    """Serve requests that arrive at different ticks in one batch ("continuous batching").

    Each tick runs one UNet call and one ``scheduler.step`` for all requests in flight, each at its
    own denoising step: the timestep argument is a [B] int64 tensor. A request's generator draws
    its initial latents on arrival and, with η > 0, its own noise at every step (a list of
    generators draws one batch element per generator), so every request gets exactly the image
    it would get alone. Needs a scheduler whose ``step`` accepts per-sample timesteps
    (ddim_sched's does; diffusers' raises, issue #1784).

    Returns:
        One [1, H, W, 3] image array per request, in request order.
    """
    scheduler.set_timesteps(num_inference_steps, device=unet.device)
    timesteps = scheduler.timesteps
    latents: dict[int, torch.Tensor] = {}
    progress: dict[int, int] = {}
    finished: dict[int, torch.Tensor] = {}
    tick = 0
    while len(finished) < len(requests):
        for r, request in enumerate(requests):
            if request.arrival == tick:
                latents[r] = initial_latents(unet, scheduler, 1, request.generator)
                progress[r] = 0
        active = [r for r in sorted(latents) if r not in finished]
        if active:
            x = torch.cat([latents[r] for r in active])
            t = timesteps[torch.tensor([progress[r] for r in active])]  # [B]: one timestep per request
            embeddings = torch.cat(
                [requests[r].negative_prompt_embeds for r in active] + [requests[r].prompt_embeds for r in active]
            )
            guided = guided_prediction(unet, scheduler, x, t, embeddings, guidance_scale, guidance_rescale)
            generators = [requests[r].generator for r in active]
            x = scheduler.step(guided, t, x, eta=eta, generator=generators).prev_sample
            for i, r in enumerate(active):
                latents[r] = x[i : i + 1]
                progress[r] += 1
                if progress[r] == len(timesteps):
                    finished[r] = latents[r]
        tick += 1
    return [decode(vae, finished[r]) for r in range(len(requests))]


# ---------------------------------------------------------------------------- script


def main(argv: Sequence[str] | None = None) -> None:
    """Compare ddim_sched with diffusers in the loop, then serve two staggered requests in one batch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="number of inference steps")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    args = parser.parse_args(argv)

    unet, vae = tiny_unet(), tiny_vae()
    prompt_embeds, negative_prompt_embeds = prompt_embeddings(2)
    config = {**SD_SCHEDULER_CONFIG, **ZERO_SNR_OVERRIDES}
    options = dict(num_inference_steps=args.steps, guidance_rescale=0.7, eta=args.eta)

    def sample(scheduler, embeds, negative_embeds, seed):
        generator = torch.Generator().manual_seed(seed)
        return generate(unet, vae, scheduler, embeds, negative_embeds, generator=generator, **options)

    reference = sample(diffusers.DDIMScheduler.from_config(config), prompt_embeds, negative_prompt_embeds, 0)
    ours = sample(ddim_sched.DDIMScheduler.from_config(config), prompt_embeds, negative_prompt_embeds, 0)
    error = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
    print(f"images {ours.shape}: ddim_sched vs diffusers relative error {error:.2e}")

    requests = [
        Request(prompt_embeds[i : i + 1], negative_prompt_embeds[i : i + 1], torch.Generator().manual_seed(i), arrival)
        for i, arrival in enumerate((0, 3))
    ]
    batched = generate_staggered(unet, vae, ddim_sched.DDIMScheduler.from_config(config), requests, **options)
    for i, (request, image) in enumerate(zip(requests, batched, strict=True)):
        scheduler = ddim_sched.DDIMScheduler.from_config(config)
        alone = sample(scheduler, request.prompt_embeds, request.negative_prompt_embeds, i)
        error = np.linalg.norm(image - alone) / np.linalg.norm(alone)
        print(f"request {i} (arrives at tick {request.arrival}): batched vs alone relative error {error:.2e}")


if __name__ == "__main__":
    main()
