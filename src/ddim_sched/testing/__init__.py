"""Check that one scheduler reproduces another: a helper for your own test suite.

:func:`assert_schedulers_match` runs two schedulers — any objects with diffusers' scheduler
interface (``set_timesteps``, ``timesteps``, ``step``), e.g. ddim_sched's and diffusers'
``DDIMScheduler`` — through the same deterministic sampling loop and compares them step by step:

>>> from ddim_sched import DDIMScheduler
>>> from ddim_sched.testing import assert_schedulers_match
>>> config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
...               clip_sample=False, set_alpha_to_one=False, steps_offset=1)
>>> report = assert_schedulers_match(DDIMScheduler(**config), DDIMScheduler.from_config(config),
...                                  num_inference_steps=10, shape=(2, 4, 8, 8))
>>> report.max_error, report.verdict
(0.0, 'MATCH')

Beside the two schedulers it runs the exact result: the reference's own step on float64 inputs
with float64 noise tables. Where the two differ, the report says at every step which one is closer
to it, and names the documented deliberate difference (:data:`DIFFERENCES`) that explains a
difference in the candidate's favour. :func:`assert_schedulers_match` raises ``AssertionError``
with that per-step report unless the verdict is MATCH (or EXPLAINED, with
``accept_explained=True``); :func:`compare_schedulers` returns the report without raising.
This package does not import diffusers.
"""

from .exact import ExactReference
from .harness import DEFAULT_RTOL, assert_schedulers_match, compare_schedulers, default_model, mixture_model
from .report import DIFFERENCES, Difference, MatchReport, StepError

__all__ = [
    "DEFAULT_RTOL",
    "DIFFERENCES",
    "Difference",
    "ExactReference",
    "MatchReport",
    "StepError",
    "assert_schedulers_match",
    "compare_schedulers",
    "default_model",
    "mixture_model",
]
