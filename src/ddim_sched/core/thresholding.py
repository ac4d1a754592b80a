"""What a step may do to x̂0 before using it: clamp it (``clip_sample``) or Imagen's dynamic thresholding,
with a per-row quantile that works on any size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

ClipMode = Literal["none", "clip", "threshold"]
CLIP_MODES: tuple[str, ...] = ("none", "clip", "threshold")


def _ranks(n: int, q: float, dtype: torch.dtype) -> tuple[int, int, float]:
    """(below, above, weight): the 0-based ascending order statistics around rank q·(n−1) and the
    interpolation weight, computed in the values' precision as ``torch.quantile`` does, so results
    agree bit for bit; beyond 2**24 elements (where torch.quantile refuses and float32 can no longer
    hold every rank) in float64."""
    exact = dtype == torch.float64 or n - 1 > 2**24
    np_dtype = np.float64 if exact else np.float32
    rank = np_dtype(q) * np_dtype(n - 1)
    below = min(int(rank), n - 1)
    above = min(below + 1, n - 1)
    return below, above, float(rank - np_dtype(below))


def row_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row ``q``-quantile of a 2-D tensor, equal to ``torch.quantile(values, q, dim=1)``.

    Linear interpolation between the two order statistics around rank q·(n−1), found with one
    ``topk`` over the smaller tail instead of the full sort ``torch.quantile`` does: O(n) instead of
    O(n log n), and no size limit (``torch.quantile`` refuses more than 2**24 elements). No host
    sync: the ranks depend on the shape only. NaN is not supported (torch.quantile returns NaN for
    a row holding one; here the result is unspecified).

    Args:
        values: [B, n] floating tensor, n >= 1.
        q: Quantile in [0, 1].

    Returns:
        [B] tensor of ``values.dtype``.
    """
    n = values.shape[1]
    below, above, weight = _ranks(n, q, values.dtype)
    if n - below <= above + 1:
        # The upper tail is the smaller one: the largest n − below values, unsorted; the two order
        # statistics are its smallest two (sorting only those is cheaper than a sorted topk).
        tail = torch.topk(values, n - below, dim=1, largest=True, sorted=False).values
        ends = torch.topk(tail, min(2, n - below), dim=1, largest=False, sorted=True).values
        low, high = ends[:, 0], ends[:, above - below]
    else:  # the smallest above + 1 values; the order statistics are its largest two
        tail = torch.topk(values, above + 1, dim=1, largest=False, sorted=False).values
        ends = torch.topk(tail, min(2, above + 1), dim=1, largest=True, sorted=True).values
        low, high = ends[:, above - below], ends[:, 0]
    return torch.lerp(low, high, weight)


def threshold_scale(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor | float:
    """Imagen's per-sample threshold s = clamp(quantile(|x̂0|, ratio), 1, max_value).

    Returns a Python float when it does not depend on the data (max_value <= 1 makes s = max_value,
    as ``torch.clamp`` does when min > max; or x0 has no elements), else a [B, 1, ..., 1] tensor of
    x0's dtype.
    """
    if max_value <= 1.0 or x0.numel() == 0:
        return float(max_value)
    batch = x0.shape[0]
    s = row_quantile(x0.reshape(batch, -1).abs(), ratio).clamp_(min=1.0, max=max_value)
    return s.reshape((batch,) + (1,) * (x0.dim() - 1))


def dynamic_threshold_(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen dynamic thresholding in place: x̂0 ← clamp(x̂0, −s, s) / s, s = :func:`threshold_scale`.

    Args:
        x0: [B, ...] predicted original sample in float32 or float64 (callers upcast half inputs);
            overwritten.
        ratio: dynamic_thresholding_ratio.
        max_value: sample_max_value.

    Returns:
        ``x0``.
    """
    s = threshold_scale(x0, ratio, max_value)
    if isinstance(s, float):
        x0.clamp_(-s, s)
        return x0 if s == 1.0 else x0.div_(s)
    return x0.clamp_(min=-s, max=s).div_(s)


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Out-of-place :func:`dynamic_threshold_`, differentiable: a new tensor of x0's shape and dtype."""
    s = threshold_scale(x0, ratio, max_value)
    if isinstance(s, float):
        clamped = x0.clamp(-s, s)
        return clamped if s == 1.0 else clamped / s
    return torch.maximum(torch.minimum(x0, s), -s) / s


@dataclass(frozen=True)
class X0Clip:
    """How a step bounds x̂0: ``"none"``, ``"clip"`` (clamp to ±clip_sample_range) or ``"threshold"``
    (dynamic thresholding with dynamic_thresholding_ratio and sample_max_value)."""

    mode: ClipMode = "none"
    clip_sample_range: float = 1.0
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in CLIP_MODES:
            raise ValueError(f"clip mode must be one of {', '.join(map(repr, CLIP_MODES))}; got {self.mode!r}")

    @property
    def active(self) -> bool:
        """Whether the step changes x̂0 at all."""
        return self.mode != "none"

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        """The bounded x̂0 as a new tensor (differentiable)."""
        if self.mode == "clip":
            return x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        if self.mode == "threshold":
            return dynamic_threshold(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        return x0

    def apply_(self, x0: torch.Tensor) -> torch.Tensor:
        """Bound x̂0 in place (x0 must be a float32/float64 tensor the caller owns); returns it."""
        if self.mode == "clip":
            return x0.clamp_(-self.clip_sample_range, self.clip_sample_range)
        if self.mode == "threshold":
            return dynamic_threshold_(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        return x0


NO_CLIP = X0Clip()
