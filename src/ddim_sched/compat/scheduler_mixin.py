"""diffusers' ``SchedulerMixin``, as a base class of ddim_sched's schedulers when diffusers is installed.

diffusers' ``DiffusionPipeline.save_pretrained`` saves a component only if its class derives from one of
the base classes it knows (``SchedulerMixin`` for schedulers), and ``from_pretrained`` loads it back from
the module the pipeline recorded (here ``ddim_sched``) only if that module exposes the same base under the
same name. ddim_sched's schedulers therefore derive from diffusers' ``SchedulerMixin`` when diffusers can
be imported, and ``ddim_sched.SchedulerMixin`` is that class. Every method they need is their own, so
without diffusers (it is never a requirement) the base is an empty stand-in and nothing else changes.

Importing diffusers costs about a second; set ``DDIM_SCHED_NO_DIFFUSERS=1`` to skip it (pipelines then
cannot save a ddim_sched scheduler). ``DIFFUSERS_INTEGRATION`` says which base is in use, and why.
"""

from __future__ import annotations

import importlib.util
import os


class _StandInSchedulerMixin:
    """Stand-in for diffusers' SchedulerMixin when diffusers is not installed (or not wanted)."""


def _scheduler_mixin() -> tuple[type, str]:
    if os.environ.get("DDIM_SCHED_NO_DIFFUSERS", "") not in ("", "0"):
        return _StandInSchedulerMixin, "off: DDIM_SCHED_NO_DIFFUSERS is set"
    if importlib.util.find_spec("diffusers") is None:
        return _StandInSchedulerMixin, "off: diffusers is not installed"
    try:
        from diffusers.schedulers.scheduling_utils import SchedulerMixin
    except Exception as err:  # a broken or incompatible diffusers must not break ddim_sched
        return _StandInSchedulerMixin, f"off: importing diffusers failed ({type(err).__name__}: {err})"
    return SchedulerMixin, "on: the schedulers derive from diffusers.SchedulerMixin"


SchedulerMixin, DIFFUSERS_INTEGRATION = _scheduler_mixin()
