"""Imagen's dynamic thresholding of x̂0, with a per-row quantile that works on any size."""

from __future__ import annotations

import numpy as np
import torch


def row_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row ``q``-quantile of a 2-D tensor, equal to ``torch.quantile(values, q, dim=1)``.

    Uses linear interpolation between the two order statistics around rank q·(n−1), found with one
    ``topk`` over the smaller tail instead of a full sort, so it is fast for q near 0 or 1 and has
    no size limit (``torch.quantile`` refuses more than 2**24 elements).

    Args:
        values: [B, n] floating tensor.
        q: Quantile in [0, 1].

    Returns:
        [B] tensor of ``values.dtype``.
    """
    n = values.shape[1]
    # torch.quantile computes the rank in the input's precision; do the same so results agree exactly.
    np_dtype = np.float64 if values.dtype == torch.float64 else np.float32
    rank = np_dtype(q) * np_dtype(n - 1)
    below = int(rank)  # 0-based ascending index of the lower order statistic
    above = min(below + 1, n - 1)
    weight = float(rank - np_dtype(below))
    if n - below <= below + 2:  # the upper tail is the smaller one: take the largest n - below values
        top = torch.topk(values, n - below, dim=1, largest=True, sorted=True).values
        low, high = top[:, -1], top[:, max(n - 1 - above, 0)]
    else:  # take the smallest above + 1 values
        bottom = torch.topk(values, above + 1, dim=1, largest=False, sorted=True).values
        low, high = bottom[:, below], bottom[:, above]
    return torch.lerp(low, high, weight)


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen dynamic thresholding: per sample s = clamp(quantile(|x̂0|, ratio), 1, max_value),
    then x̂0 ← clamp(x̂0, −s, s) / s.

    Args:
        x0: [B, ...] predicted original sample in float32 or float64 (callers upcast half inputs).
        ratio: dynamic_thresholding_ratio.
        max_value: sample_max_value.

    Returns:
        A new tensor of x0's shape and dtype.
    """
    batch = x0.shape[0]
    flat = x0.reshape(batch, -1)
    s = row_quantile(flat.abs(), ratio).clamp(min=1.0, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape)
