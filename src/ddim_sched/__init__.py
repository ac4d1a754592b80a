"""ddim_sched: a drop-in, sync-free PyTorch implementation of the DDIM diffusion scheduler.

>>> from ddim_sched import DDIMScheduler
>>> scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
...                           clip_sample=False, set_alpha_to_one=False, steps_offset=1)
>>> scheduler.set_timesteps(5)
>>> scheduler.timesteps.tolist()
[801, 601, 401, 201, 1]
"""

from . import testing, toy, training
from .compat.config_io import ConfigFileNotFoundError
from .compat.output import DDIMSchedulerOutput
from .compat.scheduler_mixin import SchedulerMixin as SchedulerMixin  # diffusers' pipeline loader looks for it here
from .core import functional, update
from .ddim.config import DDIMConfig
from .ddim.inverse import DDIMInverseScheduler
from .ddim.parallel import DDIMParallelScheduler, DDIMParallelSchedulerOutput
from .ddim.scheduler import DDIMScheduler
from .flow import plan as flow_plan
from .flow import update as flow_update
from .flow.config import FlowMatchDDIMConfig
from .flow.scheduler import FlowMatchDDIMScheduler
from .recipes.cfg_pp import cfg_pp_step
from .recipes.exposure_bias import epsilon_scaling, epsilon_scaling_hook
from .recipes.guidance import rescale_noise_cfg
from .recipes.guidance_interval import GuidanceInterval
from .recipes.interpolation import slerp
from .recipes.levels import levels_at, sigma_at
from .sampling.bdia import BDIALatents, bdia_invert, bdia_sample
from .sampling.edict import EDICTLatents, edict_invert, edict_sample
from .sampling.img2img import img2img_timesteps
from .sampling.loops import InversionReport, invert, sample
from .sampling.noise_maps import NoiseMaps, edit_friendly_noise, noise_space_trajectory, replay_noise_maps
from .tables import ays, betas, flow_sigmas, spacing

# The module names of release 0.1, kept so that ``ddim_sched.schedules.linear`` and the like still work.
kernel, schedules, flow_schedule = functional, betas, flow_plan

# Pipelines that hold a ddim_sched scheduler record its module in model_index.json: name the package, so
# that saved pipelines load whatever module the class is defined in.
for _cls in (DDIMScheduler, DDIMInverseScheduler, DDIMParallelScheduler, FlowMatchDDIMScheduler):
    _cls.__module__ = __name__
del _cls

__version__ = "0.2.0"

__all__ = [
    "BDIALatents",
    "ConfigFileNotFoundError",
    "DDIMConfig",
    "DDIMInverseScheduler",
    "DDIMParallelScheduler",
    "DDIMParallelSchedulerOutput",
    "DDIMScheduler",
    "DDIMSchedulerOutput",
    "EDICTLatents",
    "FlowMatchDDIMConfig",
    "FlowMatchDDIMScheduler",
    "GuidanceInterval",
    "InversionReport",
    "NoiseMaps",
    "ays",
    "bdia_invert",
    "bdia_sample",
    "cfg_pp_step",
    "edict_invert",
    "edict_sample",
    "edit_friendly_noise",
    "epsilon_scaling",
    "epsilon_scaling_hook",
    "flow_schedule",
    "flow_sigmas",
    "flow_update",
    "img2img_timesteps",
    "invert",
    "kernel",
    "levels_at",
    "noise_space_trajectory",
    "replay_noise_maps",
    "rescale_noise_cfg",
    "sample",
    "schedules",
    "sigma_at",
    "slerp",
    "spacing",
    "testing",
    "toy",
    "training",
    "update",
]
