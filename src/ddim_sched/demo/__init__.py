"""Science behind ``ddim-sched demo``: experiments a notebook can call and the CLI prints.

:mod:`ddim_sched.demo.digits` runs the DDIM paper's experiments on a small network trained on
scikit-learn's 8×8 handwritten digits (needs the ``demo`` extra: ``pip install "ddim_sched[demo]"``).
"""
