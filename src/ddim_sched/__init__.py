"""ddim_sched: a drop-in, sync-free PyTorch implementation of the DDIM diffusion scheduler.

>>> from ddim_sched import DDIMScheduler
>>> scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
...                           clip_sample=False, set_alpha_to_one=False, steps_offset=1)
>>> scheduler.set_timesteps(5)
>>> scheduler.timesteps.tolist()
[801, 601, 401, 201, 1]
"""

from . import kernel, schedules, spacing, testing, toy
from .config import DDIMConfig
from .config_io import ConfigFileNotFoundError
from .output import DDIMSchedulerOutput
from .scheduler import DDIMScheduler
from .inverse_scheduler import DDIMInverseScheduler
from .guidance import rescale_noise_cfg, slerp
from .img2img import img2img_timesteps
from .sampling import invert, sample

__version__ = "0.1.0"

__all__ = [
    "ConfigFileNotFoundError",
    "DDIMConfig",
    "DDIMInverseScheduler",
    "DDIMScheduler",
    "DDIMSchedulerOutput",
    "img2img_timesteps",
    "invert",
    "kernel",
    "rescale_noise_cfg",
    "schedules",
    "slerp",
    "spacing",
    "testing",
    "toy",
]
