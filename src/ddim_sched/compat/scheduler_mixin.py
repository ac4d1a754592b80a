"""diffusers' classes as base classes of ddim_sched's schedulers, when diffusers is installed.

Pipelines check their scheduler's class: diffusers' ``DiffusionPipeline.save_pretrained`` saves a component
only if its class derives from ``SchedulerMixin``, and some pipelines branch on
``isinstance(scheduler, DDIMScheduler)`` (LEDITS++, AudioDiffusion) or
``isinstance(scheduler, FlowMatchEulerDiscreteScheduler)`` (Bria, EasyAnimate, LongCat-AudioDiT). So when
diffusers can be imported, each ddim_sched scheduler also derives from the diffusers class it replaces:

=================================  ==============================================
ddim_sched                         also an instance of (diffusers)
=================================  ==============================================
``DDIMScheduler``                  ``DDIMScheduler``
``DDIMInverseScheduler``           ``DDIMInverseScheduler``
``DDIMParallelScheduler``          ``DDIMParallelScheduler`` (and ``DDIMScheduler``)
``FlowMatchDDIMScheduler``         ``FlowMatchEulerDiscreteScheduler``
=================================  ==============================================

The diffusers class comes after ddim_sched's own classes in the method resolution order, and diffusers'
``__init__`` never runs: every method and attribute a pipeline reaches is ddim_sched's, except the few
listed (and tested) in ``tests/compat/test_diffusers_bases.py``. ``ddim_sched.SchedulerMixin`` is
diffusers' ``SchedulerMixin``: the pipeline loader looks for it beside the class it loads.

Without diffusers (it is never a requirement) each base is an empty stand-in and nothing else changes.
Importing diffusers costs about a second; set ``DDIM_SCHED_NO_DIFFUSERS=1`` to skip it (pipelines then
cannot save a ddim_sched scheduler, and see it as a foreign class). ``DIFFUSERS_INTEGRATION`` says which
bases are in use, and why.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

# The diffusers class each ddim_sched scheduler stands in for (its base when diffusers is installed).
DIFFUSERS_COUNTERPARTS: dict[str, str] = {
    "DDIMScheduler": "DDIMScheduler",
    "DDIMInverseScheduler": "DDIMInverseScheduler",
    "DDIMParallelScheduler": "DDIMParallelScheduler",
    "FlowMatchDDIMScheduler": "FlowMatchEulerDiscreteScheduler",
}


class _StandInSchedulerMixin:
    """Stand-in for diffusers' SchedulerMixin when diffusers is not installed (or not wanted)."""


def _stand_in(name: str) -> type:
    """An empty class in place of diffusers' class ``name``."""
    doc = f"Stand-in for diffusers' {name} when diffusers is not installed (or not wanted): adds nothing."
    return type(f"_StandIn{name}", (_StandInSchedulerMixin,), {"__doc__": doc, "__module__": __name__})


def _diffusers_classes() -> tuple[type, dict[str, type], str]:
    """(SchedulerMixin, diffusers' class by ddim_sched name, why): diffusers' classes, or stand-ins."""
    stand_ins = {ours: _stand_in(theirs) for ours, theirs in DIFFUSERS_COUNTERPARTS.items()}
    if os.environ.get("DDIM_SCHED_NO_DIFFUSERS", "") not in ("", "0"):
        return _StandInSchedulerMixin, stand_ins, "off: DDIM_SCHED_NO_DIFFUSERS is set"
    if importlib.util.find_spec("diffusers") is None:
        return _StandInSchedulerMixin, stand_ins, "off: diffusers is not installed"
    try:
        import diffusers.schedulers as schedulers
        from diffusers.schedulers.scheduling_utils import SchedulerMixin

        classes = {ours: getattr(schedulers, theirs) for ours, theirs in DIFFUSERS_COUNTERPARTS.items()}
    except Exception as err:  # a broken or incompatible diffusers must not break ddim_sched
        return _StandInSchedulerMixin, stand_ins, f"off: importing diffusers failed ({type(err).__name__}: {err})"
    why = "on: the schedulers derive from diffusers' SchedulerMixin and the diffusers class each replaces"
    return SchedulerMixin, classes, why


SchedulerMixin, _BASES, DIFFUSERS_INTEGRATION = _diffusers_classes()
DiffusersDDIMScheduler: Any = _BASES["DDIMScheduler"]
DiffusersDDIMInverseScheduler: Any = _BASES["DDIMInverseScheduler"]
DiffusersDDIMParallelScheduler: Any = _BASES["DDIMParallelScheduler"]
DiffusersFlowMatchEulerDiscreteScheduler: Any = _BASES["FlowMatchDDIMScheduler"]
