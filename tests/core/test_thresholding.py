"""Dynamic thresholding: the per-row quantile equals torch.quantile wherever torch.quantile runs,
works beyond its 2**24-element limit, and the threshold matches Imagen's rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddim_sched.core.thresholding import dynamic_threshold, dynamic_threshold_, row_quantile, threshold_scale

HYPOTHESIS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=150, **HYPOTHESIS)
@given(
    batch=st.integers(1, 4),
    n=st.one_of(st.integers(1, 64), st.integers(65, 5000)),
    q=st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.995, 1.0]), st.floats(0.0, 1.0)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_row_quantile_equals_torch_quantile(batch, n, q, dtype, ties, seed):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, n, generator=g, dtype=dtype).abs()
    if ties:  # few distinct values: many equal order statistics
        values = values.mul(3).round()
    assert torch.equal(row_quantile(values, q), torch.quantile(values, q, dim=1))


def test_row_quantile_takes_the_smaller_tail_either_way():
    values = torch.rand(3, 1001, generator=torch.Generator().manual_seed(1))
    for q in (0.001, 0.3, 0.5, 0.7, 0.999):
        assert torch.equal(row_quantile(values, q), torch.quantile(values, q, dim=1))


def test_row_quantile_beyond_torch_quantile_size_limit():
    # torch.quantile refuses more than 2**24 elements; video latents exceed that. Check against
    # exact order statistics (kthvalue) at the float64 rank q·(n − 1).
    n = 2**24 + 8
    values = torch.rand(1, n, generator=torch.Generator().manual_seed(2))
    q = 0.995
    rank = q * (n - 1)
    below = int(np.floor(rank))
    low = torch.kthvalue(values, below + 1, dim=1).values
    high = torch.kthvalue(values, below + 2, dim=1).values
    expected = torch.lerp(low, high, rank - below)
    assert torch.equal(row_quantile(values, q), expected)


def imagen_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's rule as diffusers writes it: s from torch.quantile, clamp to [−s, s], divide by s."""
    flat = x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape)


@pytest.mark.parametrize("max_value", [0.5, 1.0, 1.5, 3.0, 100.0])
@pytest.mark.parametrize("ratio", [0.9, 0.995, 1.0])
def test_dynamic_threshold_equals_imagen_rule(max_value, ratio):
    x0 = 2.0 * torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    x0[0] *= 0.1  # a sample whose quantile is below 1: s = 1
    expected = imagen_threshold(x0, ratio, max_value)
    assert torch.equal(dynamic_threshold(x0, ratio, max_value), expected)
    inplace = x0.clone()
    assert dynamic_threshold_(inplace, ratio, max_value) is inplace
    assert torch.equal(inplace, expected)


def test_threshold_scale_is_a_constant_when_max_value_is_at_most_one():
    # clamp(q, min=1, max=m) with m <= 1 is m whatever q is (torch.clamp: min > max gives max), so
    # the quantile is skipped; with m > 1 it is a per-sample tensor.
    x0 = torch.randn(2, 8)
    assert threshold_scale(x0, 0.995, 1.0) == 1.0
    assert threshold_scale(x0, 0.995, 0.5) == 0.5
    s = threshold_scale(x0 * 4, 0.5, 2.0)
    assert isinstance(s, torch.Tensor) and s.shape == (2, 1)


def test_threshold_rows_are_independent():
    # Per-sample: thresholding a batch equals thresholding each sample alone.
    x0 = 3.0 * torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    batched = dynamic_threshold(x0, 0.8, 2.5)
    for i in range(4):
        assert torch.equal(batched[i : i + 1], dynamic_threshold(x0[i : i + 1], 0.8, 2.5))
