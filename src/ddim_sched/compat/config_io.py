"""Reading and writing ``scheduler_config.json`` in the format diffusers reads and writes.

Writes are atomic: the JSON goes to a temporary file in the same directory, which then replaces the old
file in one ``os.replace``, so a save that fails part-way (disk full, interrupted) leaves the previous
file intact. Every error names the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

CONFIG_NAME = "scheduler_config.json"
# The diffusers release whose scheduler_config.json format we write and whose behaviour we match.
DIFFUSERS_FORMAT_VERSION = "0.42.1"


class ConfigFileNotFoundError(FileNotFoundError, ValueError):
    """A scheduler config path that does not exist (both a FileNotFoundError and a ValueError)."""


def config_path(path: str | os.PathLike[str], subfolder: str | None = None) -> Path:
    """Resolve a directory (optionally with a subfolder) or a .json file to the config file's path.

    Raises:
        TypeError: ``path`` is not a str or os.PathLike.
        ConfigFileNotFoundError: No config file there.
    """
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
        ValueError: The file is not UTF-8, not valid JSON, not a JSON object, or cannot be read (names the path).
    """
    file = config_path(path, subfolder)
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"scheduler config {str(file)!r} is not UTF-8 text: {err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"scheduler config {str(file)!r} is not valid JSON: {err}") from None
    except OSError as err:
        raise ValueError(f"scheduler config {str(file)!r} cannot be read: {err.strerror or err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"scheduler config {str(file)!r} must hold a JSON object; got {type(data).__name__}")
    return data


def write_config(directory: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``directory/scheduler_config.json`` atomically; returns the file's path.

    Raises:
        TypeError: ``directory`` is not a path.
        ValueError: ``directory`` is an existing file.
        OSError: The directory cannot be created or written (the old file, if any, is left as it was).
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"save_directory must be a path; got {directory!r}")
    folder = Path(directory)
    if folder.is_file():
        raise ValueError(f"save_directory {str(directory)!r} is a file; pass a directory")
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / CONFIG_NAME
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    # The new file keeps the old one's permissions (mkstemp's own are owner-only).
    mode = file.stat().st_mode & 0o777 if file.exists() else 0o644
    handle, temporary = tempfile.mkstemp(prefix=f".{CONFIG_NAME}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, file)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return file
