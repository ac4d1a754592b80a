"""The science behind ``ddim-sched demo`` and ``ddim-sched schedule``, importable from a notebook.

The demo measures the trends of the DDIM paper's Tables 1 and 2 (Song, Meng & Ermon 2020) on data
whose optimal denoiser is known exactly (:mod:`ddim_sched.toy`), through this library's own
:class:`~ddim_sched.DDIMScheduler`, :func:`~ddim_sched.sample` and :func:`~ddim_sched.invert`:

* (a) :mod:`~ddim_sched.demo.gaussian`: exact W2 of DDIM's output law on Gaussian data, and of the flow
  scheduler's on the rectified-flow path (:mod:`~ddim_sched.demo.flow`);
* (b) :mod:`~ddim_sched.demo.mixture`: a 2-D mixture, Monte-Carlo sliced W2 and its noise floor;
* (c) :mod:`~ddim_sched.demo.roundtrip`: encode → decode round trips;
* (d) :mod:`~ddim_sched.demo.digits`: the paper's three experiments on a small network trained, inside
  the demo, on scikit-learn's 8×8 handwritten digits (needs the ``demo`` extra), with PNG figures.

::

    from ddim_sched import demo

    result = demo.run(quick=True)                 # a DemoResult
    print(result.format())                        # the report ddim-sched demo prints
    result.sections["mixture"].table              # {(eta, S): sliced W2}
    figure = demo.figures.mixture_figure(result.sections["mixture"])   # needs matplotlib

:mod:`~ddim_sched.demo.schedule_table` computes the rows of ``ddim-sched schedule`` and
:mod:`~ddim_sched.demo.figures` draws the figures. A new section is one module with
``run(settings)`` plus one entry in :data:`~ddim_sched.demo.runner.SECTIONS`.
"""

from . import digits, figures, flow, gaussian, mixture, paper, roundtrip, schedule_table
from .common import DemoSettings, Divergence, format_divergences
from .runner import SECTIONS, DemoResult, format_header, run

__all__ = [
    "SECTIONS",
    "DemoResult",
    "DemoSettings",
    "Divergence",
    "digits",
    "figures",
    "flow",
    "format_divergences",
    "format_header",
    "gaussian",
    "mixture",
    "paper",
    "roundtrip",
    "run",
    "schedule_table",
]
