"""Reading and writing ``scheduler_config.json`` in the format diffusers reads and writes.

Writes are atomic: the JSON goes to a temporary file in the same directory, which then replaces the old
file in one ``os.replace``, so a save that fails part-way (disk full, interrupted) leaves the previous
file intact. Every error names the file: a file that cannot be read raises the OSError the system
gave (what loaders catch), one that is not UTF-8 JSON a ValueError.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

CONFIG_NAME = "scheduler_config.json"
# The diffusers release whose scheduler_config.json format we write and whose behaviour we match.
DIFFUSERS_FORMAT_VERSION = "0.42.1"


class ConfigFileNotFoundError(FileNotFoundError, ValueError):
    """A scheduler config path that does not exist (both a FileNotFoundError and a ValueError)."""


def config_path(path: str | os.PathLike[str], subfolder: str | None = None) -> Path:
    """Resolve a path to its config file as diffusers' ``load_config`` does: a file is taken as it is; in a
    directory, ``subfolder/scheduler_config.json`` if there is one, else ``scheduler_config.json``.

    Raises:
        TypeError: ``path`` is not a str or os.PathLike.
        ConfigFileNotFoundError: No config file there.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"pretrained_model_name_or_path must be a path; got {path!r}")
    base = Path(path)
    if base.is_file():
        return base
    candidates = ([base / subfolder / CONFIG_NAME] if subfolder else []) + [base / CONFIG_NAME]
    if base.is_dir():
        for candidate in candidates:
            if candidate.is_file():
                return candidate
    hint = ""
    if not base.exists() and str(path).count("/") == 1 and not str(path).startswith((".", "/")):
        hint = (
            " ddim_sched reads local files only; download the repository first, e.g. with "
            "huggingface_hub.snapshot_download, and pass the local directory"
        )
    where = base if base.suffix == ".json" else candidates[0]
    raise ConfigFileNotFoundError(f"no scheduler config at {str(where)!r} (from path {str(path)!r}).{hint}")


def read_config_file(file: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one config file (UTF-8 JSON holding an object) into a dict.

    Raises:
        OSError: The file cannot be read: the error the system gave (FileNotFoundError, PermissionError,
            IsADirectoryError, ...), its message naming the file.
        ValueError: The file is not UTF-8, not valid JSON, or not a JSON object (names the file).
    """
    path = Path(file)
    try:
        raw = path.read_bytes()
    except OSError as err:
        reason = err.strerror or str(err)
        raise type(err)(err.errno, f"scheduler config {str(path)!r} cannot be read: {reason}", str(path)) from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"scheduler config {str(path)!r} is not UTF-8 text: {err}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"scheduler config {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"scheduler config {str(path)!r} must hold a JSON object; got {type(data).__name__}")
    return data


def read_config(path: str | os.PathLike[str], subfolder: str | None = None) -> dict[str, Any]:
    """Read the scheduler config at ``path`` (see :func:`config_path`) into a dict.

    Raises:
        ConfigFileNotFoundError: The file does not exist (names the path).
        OSError: The file exists but cannot be read (e.g. PermissionError; names the path).
        ValueError: The file is not UTF-8, not valid JSON, or not a JSON object (names the path).
    """
    return read_config_file(config_path(path, subfolder))


def commit_hash(file: str | os.PathLike[str]) -> str | None:
    """The commit of a file in a Hugging Face cache snapshot (``.../snapshots/<40 hex digits>/...``), else None,
    as diffusers' ``load_config`` reports it."""
    match = re.search(r"snapshots/([^/]+)/", Path(file).as_posix())
    return match.group(1) if match and re.fullmatch(r"[0-9a-f]{40}", match.group(1)) else None


def _json_ready(value: Any) -> Any:
    """A config value as JSON holds it: arrays and tuples as lists, paths as POSIX strings, objects with
    ``to_dict`` as their dict (what diffusers' ``to_json_string`` converts)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, PurePath):
        value = value.as_posix()
    elif callable(getattr(value, "to_dict", None)):
        value = value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value


def config_json(payload: Mapping[str, Any]) -> str:
    """The text of a config file: sorted keys, indented by 2, a final newline (diffusers' format)."""
    return json.dumps({key: _json_ready(value) for key, value in payload.items()}, indent=2, sort_keys=True) + "\n"


def write_text(file: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``file`` atomically (its directory must exist); returns the file's path.

    Raises:
        OSError: The file cannot be written (the old file, if any, is left as it was).
    """
    target = Path(file)
    # The new file keeps the old one's permissions (mkstemp's own are owner-only).
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def write_config(directory: str | os.PathLike[str], text: str) -> Path:
    """Write the config file text ``text`` to ``directory/scheduler_config.json`` atomically; returns the
    file's path.

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
    return write_text(folder / CONFIG_NAME, text)
