"""The ``ddim-sched`` command: :mod:`.commands` runs the commands, :mod:`.flags` parses their flags."""

from .commands import main

__all__ = ["main"]
