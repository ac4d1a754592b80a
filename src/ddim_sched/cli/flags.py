"""The ``ddim-sched`` command's flag values: parsing, validation, and the scheduler configuration flags.

Everything here turns command-line text into values or raises :class:`UsageError` naming the flag;
:mod:`ddim_sched.cli` runs the commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..compat.config_io import read_config
from ..ddim.config import PREDICTION_TYPES, PREV_TIMESTEP_RULES, DDIMConfig
from ..ddim.scheduler import DDIMScheduler
from ..tables.betas import BETA_SCHEDULES
from ..tables.spacing import SPACINGS

MAX_SEED = 2**32


class UsageError(Exception):
    """A usage or environment error: reported as ``ddim-sched <cmd>: error: ...``, exit status 2."""


# ---------------------------------------------------------------------- flag values


def device(text: str) -> torch.device:
    """--device: a torch device that exists on this machine (cpu, cuda[:N], mps)."""
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise UsageError(f"--device: {text!r} is not a torch device ({err})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {text}: CUDA is not available on this machine")
    if parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError(f"--device {text}: MPS is not available on this machine")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device: use cpu, cuda[:N] or mps; got {text!r}")
    return parsed


def positive_int(text: str) -> int:
    """An int >= 1 (--steps)."""
    return _int_in(text, 1, None, "a positive integer")


def seed(text: str) -> int:
    """An int in [0, 2**32) (--seed)."""
    return _int_in(text, 0, MAX_SEED, "an integer in [0, 2**32)")


def _int_in(text: str, low: int, high: int | None, expected: str) -> int:
    """``text`` as an int in [low, high), else an argparse error saying what was ``expected``."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value >= high):
        raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
    return value


def nonnegative(text: str) -> float:
    """A finite float >= 0 (--eta, --rtol)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0; got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0; got {text!r}")
    return value


def shape(text: str) -> tuple[int, ...]:
    """A sample shape B,C,... with at least a batch size and one sample dimension, all >= 1 (--shape)."""
    try:
        dims = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected dimensions like 4,8,8; got {text!r}") from None
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected a batch size and sample sizes >= 1, like 2,4,8,8; got {text!r}")
    return dims


# ---------------------------------------------------------------------- scheduler config flags

_CHOICES: dict[str, Iterable[str]] = {
    "beta_schedule": BETA_SCHEDULES,
    "prediction_type": PREDICTION_TYPES,
    "timestep_spacing": SPACINGS,
    "prev_timestep_rule": PREV_TIMESTEP_RULES,
}


def flag_name(field: str) -> str:
    """The flag of a DDIMConfig field: prev_timestep_rule -> --prev-timestep-rule."""
    return "--" + field.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """--config PATH plus one flag per DDIMConfig field (trained_betas only through --config)."""
    group = parser.add_argument_group(
        "scheduler configuration",
        "A scheduler_config.json (or the directory holding it) and/or single fields; flags override "
        "the file. Unset fields take diffusers' DDIMScheduler defaults.",
    )
    group.add_argument(
        "--config", metavar="PATH", help="a scheduler config file (JSON, whatever its name), or a directory holding one"
    )
    defaults = DDIMConfig()
    for f in dataclasses.fields(DDIMConfig):
        if f.name == "trained_betas":
            continue
        default = getattr(defaults, f.name)
        flag, help_text = flag_name(f.name), f"default {default!r}"
        if isinstance(default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name in _CHOICES:
            group.add_argument(flag, dest=f.name, choices=list(_CHOICES[f.name]), default=None, help=help_text)
        elif isinstance(default, int):
            group.add_argument(flag, dest=f.name, type=int, default=None, metavar="N", help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=float, default=None, metavar="X", help=help_text)


def config_from_args(args: argparse.Namespace) -> tuple[DDIMConfig, dict[str, Any], dict[str, Any]]:
    """(validated config, the file's raw mapping, the flag overrides) from --config and the field flags.

    --config names a file, read as JSON whatever its name (``cfg.txt``), or a directory holding a
    ``scheduler_config.json``.
    """
    data: dict[str, Any] = {}
    if args.config is not None:
        path = Path(args.config)
        try:
            data = read_config(path)
        except (ValueError, OSError) as err:
            raise UsageError(f"--config: {err}") from None
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(DDIMConfig)
        if f.name != "trained_betas" and getattr(args, f.name, None) is not None
    }
    try:
        return DDIMConfig.from_mapping(data, **overrides), data, overrides
    except (TypeError, ValueError) as err:
        raise UsageError(_config_culprit(args.config, data, overrides, err)) from None


def flag_text(field: str, value: Any) -> str:
    """A field's value as the flag that sets it: --beta-end 0.1, --rescale-betas-zero-snr, --no-clip-sample."""
    if isinstance(value, bool):
        return flag_name(field) if value else "--no-" + field.replace("_", "-")
    return f"{flag_name(field)} {value}"


def source_text(field: str, value: Any, overrides: dict[str, Any], path: str | None) -> str:
    """Where a field's value came from: the flag as given, or the field in the --config file."""
    return flag_text(field, value) if field in overrides else f"{field}={value!r} in --config {path}"


def _config_culprit(path: str | None, data: dict[str, Any], overrides: dict[str, Any], error: Exception) -> str:
    """The configuration's error (which quotes the values in force), prefixed by the inputs at fault.

    The file alone, if it is invalid by itself; otherwise the flags given whose fields the error names,
    with the source of any other field it names (the file or the default); if it names none of the
    flags given, all of them together.
    """
    try:
        DDIMConfig.from_mapping(data)
    except (TypeError, ValueError) as err:
        return f"--config {path}: {err}"
    message = str(error)
    named = [f.name for f in dataclasses.fields(DDIMConfig) if re.search(rf"\b{f.name}\b", message)]
    given = [field for field in named if field in overrides]
    if not given:
        together = " ".join(flag_text(field, value) for field, value in overrides.items())
        return f"{together} (together{' with --config ' + str(path) if path else ''}): {message}"
    sources = [
        f"{field} is from --config {path}" if field in data else f"{field} is the default; {flag_name(field)} sets it"
        for field in named
        if field not in overrides
    ]
    return (
        " ".join(flag_text(field, overrides[field]) for field in given)
        + f": {message}"
        + (f" ({'; '.join(sources)})" if sources else "")
    )


def set_timesteps(scheduler: DDIMScheduler, steps: int, device: torch.device | None = None) -> None:
    """``scheduler.set_timesteps(steps)``, its ValueError reported against --steps and this configuration."""
    try:
        scheduler.set_timesteps(steps, device=device)
    except ValueError as err:
        raise UsageError(f"--steps {steps} with this configuration: {err}") from None
