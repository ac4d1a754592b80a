"""Tiny random-weight diffusers components and pipelines for the integration tests.

The Stable Diffusion pieces (UNet2DConditionModel, AutoencoderKL, prompt embeddings, scheduler
configs) and the hand-written sampling loop come from ``examples/sd_loop.py``, loaded by path so
the tests run exactly what a user reads. diffusers is imported here, never in ``src/``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (cached in sys.modules as ``examples_<name>``)."""
    module_name = f"examples_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def __getattr__(name: str):
    # ``from tests.tiny_models import sd_loop`` loads the example on first use, so modules that need
    # only the helpers below do not import what the example imports.
    if name == "sd_loop":
        try:
            return load_example("sd_loop")
        except ImportError as err:
            raise ImportError(
                f"examples/sd_loop.py could not be imported ({err}); the integration tests need the test "
                "extra installed (pip install -e '.[test]'), which includes transformers for diffusers' "
                "StableDiffusionPipeline"
            ) from err
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one CPU thread: tiny models gain nothing from more, and on a busy 2-core machine
    two OpenMP threads contending with other processes make each UNet call ~100× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_pixel_unet(seed: int = 0):
    """An unconditional 3×8×8 pixel-space UNet2DModel for DDIMPipeline, in eval mode."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()


# StableDiffusionPipeline's optional components, absent: prompts come as embeddings.
NO_TEXT_ENCODER = dict(text_encoder=None, tokenizer=None, safety_checker=None, feature_extractor=None)


def stable_diffusion_pipeline(unet, vae, scheduler):
    """A StableDiffusionPipeline without text encoder or safety checker (needs transformers to import)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, unet=unet, scheduler=scheduler, requires_safety_checker=False, **NO_TEXT_ENCODER
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ddim_pipeline(unet, scheduler):
    """diffusers' DDIMPipeline (it converts any scheduler to diffusers' DDIMScheduler on construction)."""
    from diffusers import DDIMPipeline

    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe
