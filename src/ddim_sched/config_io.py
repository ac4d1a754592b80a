"""Reading and writing ``scheduler_config.json`` in the format diffusers reads and writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CONFIG_NAME = "scheduler_config.json"
# The diffusers release whose scheduler_config.json format we write and whose behaviour we match.
DIFFUSERS_FORMAT_VERSION = "0.42.1"


class ConfigFileNotFoundError(FileNotFoundError, ValueError):
    """A scheduler config path that does not exist (both a FileNotFoundError and a ValueError)."""


def config_path(path: str | os.PathLike[str], subfolder: str | None = None) -> Path:
    """Resolve a directory (optionally with a subfolder) or a .json file to the config file's path."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"pretrained_model_name_or_path must be a path; got {path!r}")
    base = Path(path)
    if subfolder:
        base = base / subfolder
    candidate = base if base.suffix == ".json" else base / CONFIG_NAME
    if not candidate.is_file():
        hint = ""
        if not Path(path).exists() and str(path).count("/") == 1 and not str(path).startswith((".", "/")):
            hint = (
                " ddim_sched reads local files only; download the repository first, e.g. with "
                "huggingface_hub.snapshot_download, and pass the local directory"
            )
        raise ConfigFileNotFoundError(f"no scheduler config at {str(candidate)!r} (from path {str(path)!r}).{hint}")
    return candidate


def read_config(path: str | os.PathLike[str], subfolder: str | None = None) -> dict[str, Any]:
    """Read a scheduler config file into a dict.

    Raises:
        ConfigFileNotFoundError: The file does not exist (names the path).
        ValueError: The file is not valid JSON or not a JSON object (names the path).
    """
    file = config_path(path, subfolder)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"scheduler config {str(file)!r} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"scheduler config {str(file)!r} must hold a JSON object; got {type(data).__name__}")
    return data


def write_config(directory: str | os.PathLike[str], class_name: str, fields: dict[str, Any]) -> Path:
    """Write ``fields`` to ``directory/scheduler_config.json`` with diffusers' header keys."""
    from . import __version__

    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"save_directory must be a path; got {directory!r}")
    if Path(directory).is_file():
        raise ValueError(f"save_directory {str(directory)!r} is a file; pass a directory")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"_class_name": class_name, "_diffusers_version": DIFFUSERS_FORMAT_VERSION, "_ddim_sched_version": __version__}
    payload.update(fields)
    file = folder / CONFIG_NAME
    file.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return file
