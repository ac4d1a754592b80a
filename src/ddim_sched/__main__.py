"""``python -m ddim_sched``: the ``ddim-sched`` command line (see :mod:`ddim_sched.cli`)."""

from .cli import main

# Guarded so that importing this module (pkgutil.walk_packages, doctest collection) runs nothing.
if __name__ == "__main__":
    raise SystemExit(main())
