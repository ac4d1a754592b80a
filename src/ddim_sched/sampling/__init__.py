"""Loops over a scheduler's schedule, for DDIMScheduler and FlowMatchDDIMScheduler alike: ``sample`` and
``invert`` (loops.py), edit-friendly noise maps (noise_maps.py), the exactly invertible samplers BDIA-DDIM
(bdia.py) and EDICT (edict.py), img2img's partial schedule (img2img.py); stepping.py holds what the loops
need from either scheduler family."""
