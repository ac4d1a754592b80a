"""Loops over a scheduler's schedule: ``sample``, ``invert`` and img2img's partial schedule."""
