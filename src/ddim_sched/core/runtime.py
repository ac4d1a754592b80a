"""Two facts about how a step runs, asked everywhere: the dtype it computes in, and whether torch.compile
is tracing it."""

from __future__ import annotations

import torch

__all__ = ["compute_dtype", "is_compiling"]

_compiler = getattr(torch, "compiler", None)
_is_compiling = getattr(_compiler, "is_compiling", lambda: False)


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype rule: arithmetic in float64 when any input is float64, else in float32 (half precision
    included); results are cast back to the inputs' dtype by the caller."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def is_compiling() -> bool:
    """True while torch.compile traces (host reads and host caches are skipped then)."""
    return bool(_is_compiling())
