"""The result of a scheduler step."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class DDIMSchedulerOutput:
    """Output of :meth:`DDIMScheduler.step`, usable like diffusers' output and like a tuple.

    ``out.prev_sample``, ``out["prev_sample"]``, ``out[0]`` and ``prev, x0 = out`` all work.

    Attributes:
        prev_sample: x_{t_prev}, [B, ...], the sample's dtype: the next model input.
        pred_original_sample: x̂0, [B, ...], the sample's dtype: a preview of the result.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def to_tuple(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prev_sample, pred_original_sample)."""
        return (self.prev_sample, self.pred_original_sample)

    def keys(self) -> tuple[str, str]:
        """Field names, as a mapping would give them."""
        return ("prev_sample", "pred_original_sample")

    def __getitem__(self, key: int | slice | str) -> object:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[torch.Tensor | None]:
        return iter(self.to_tuple())

    def __len__(self) -> int:
        return 2
