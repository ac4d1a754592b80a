"""``python -m ddim_sched``: the ``ddim-sched`` command line (see :mod:`ddim_sched.cli`)."""

from .cli import main

raise SystemExit(main())
