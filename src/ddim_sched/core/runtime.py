"""How a step runs, asked everywhere: the dtype it computes in, whether torch.compile is tracing it, and how
its operands are laid out across processes when the sample is a sharded ``DTensor``."""

from __future__ import annotations

import torch

__all__ = ["compute_dtype", "is_compiling", "is_sharded", "laid_out_like"]

_compiler = getattr(torch, "compiler", None)
_is_compiling = getattr(_compiler, "is_compiling", lambda: False)


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype rule: arithmetic in float64 when any input is float64, else in float32 (half precision
    included); results are cast back to the inputs' dtype by the caller."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def is_compiling() -> bool:
    """True while torch.compile traces (host reads and host caches are skipped then)."""
    return bool(_is_compiling())


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``torch.distributed.tensor.DTensor`` (imported only when a subclass is seen)."""
    if type(tensor) is torch.Tensor:
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support has no DTensor
        return False
    return isinstance(tensor, DTensor)


def laid_out_like(value: torch.Tensor, like: torch.Tensor, replicate: bool) -> torch.Tensor:
    """A plain tensor that goes into a step with the ``DTensor`` ``like``: replicated on its mesh (weights that
    broadcast over it, no communication), or laid out exactly as ``like`` is (``replicate=False``: a tensor of
    its global shape, such as the step's noise, scattered from rank 0 so that every process uses the same
    draw). A ``DTensor`` or a plain ``like`` leaves ``value`` as it is."""
    if not is_sharded(like) or is_sharded(value):
        return value
    from torch.distributed.tensor import DTensor, Replicate, distribute_tensor

    mesh = like.device_mesh  # type: ignore[attr-defined]
    if replicate:
        return DTensor.from_local(value, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return distribute_tensor(value, mesh, like.placements)  # type: ignore[attr-defined]
