"""ddim_sched: a drop-in, sync-free PyTorch implementation of the DDIM diffusion scheduler.

>>> from ddim_sched import DDIMScheduler
>>> scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
...                           clip_sample=False, set_alpha_to_one=False, steps_offset=1)
>>> scheduler.set_timesteps(5)
>>> scheduler.timesteps.tolist()
[801, 601, 401, 201, 1]
"""

from . import flow_schedule, flow_sigmas, flow_update, kernel, schedules, spacing, testing, toy, update
from ._diffusers import SchedulerMixin as SchedulerMixin  # diffusers' pipeline loader looks for it here
from .config import DDIMConfig
from .config_io import ConfigFileNotFoundError
from .flow_config import FlowMatchDDIMConfig
from .flow_scheduler import FlowMatchDDIMScheduler
from .guidance import rescale_noise_cfg, slerp
from .img2img import img2img_timesteps
from .inverse_scheduler import DDIMInverseScheduler
from .output import DDIMSchedulerOutput
from .parallel_scheduler import DDIMParallelScheduler, DDIMParallelSchedulerOutput
from .sampling import invert, sample
from .scheduler import DDIMScheduler

# Pipelines that hold a ddim_sched scheduler record its module in model_index.json: name the package, so
# that saved pipelines load whatever module the class is defined in.
for _cls in (DDIMScheduler, DDIMInverseScheduler, DDIMParallelScheduler, FlowMatchDDIMScheduler):
    _cls.__module__ = __name__
del _cls

__version__ = "0.1.0"

__all__ = [
    "ConfigFileNotFoundError",
    "DDIMConfig",
    "DDIMInverseScheduler",
    "DDIMParallelScheduler",
    "DDIMParallelSchedulerOutput",
    "DDIMScheduler",
    "DDIMSchedulerOutput",
    "FlowMatchDDIMConfig",
    "FlowMatchDDIMScheduler",
    "flow_schedule",
    "flow_update",
    "flow_sigmas",
    "img2img_timesteps",
    "invert",
    "kernel",
    "rescale_noise_cfg",
    "sample",
    "schedules",
    "slerp",
    "spacing",
    "testing",
    "toy",
    "update",
]
