"""The result of a scheduler step."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class DDIMSchedulerOutput:
    """Output of a DDIM scheduler's ``step``, usable like diffusers' output (a dict of its fields) and like
    a tuple.

    ``out.prev_sample``, ``out["prev_sample"]``, ``out[0]``, ``out.to_tuple()``, ``out.keys()`` /
    ``values()`` / ``items()`` and ``dict(out)`` work as in diffusers. Unlike diffusers' output, iterating
    yields the values (``prev, x0 = out``), not the keys.

    Attributes:
        prev_sample: x_{t_prev}, [B, ...], the sample's dtype: the next model input.
        pred_original_sample: x̂0, [B, ...], the sample's dtype: a preview of the result.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def keys(self) -> tuple[str, ...]:
        """The names of the fields that are set (not None), as diffusers' output gives them."""
        return tuple(name for name in ("prev_sample", "pred_original_sample") if getattr(self, name) is not None)

    def values(self) -> tuple[torch.Tensor, ...]:
        """The fields that are set, in order."""
        return tuple(getattr(self, name) for name in self.keys())

    def items(self) -> tuple[tuple[str, torch.Tensor], ...]:
        """(name, value) for the fields that are set."""
        return tuple((name, getattr(self, name)) for name in self.keys())

    def to_tuple(self) -> tuple[torch.Tensor, ...]:
        """The fields that are set, as a tuple (diffusers' ``to_tuple``)."""
        return self.values()

    def __getitem__(self, key: int | slice | str) -> object:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.to_tuple())

    def __len__(self) -> int:
        return len(self.keys())
