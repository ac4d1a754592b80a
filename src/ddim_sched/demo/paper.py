"""The DDIM paper's numbers the demo prints beside its own (Song, Meng & Ermon 2020)."""

from __future__ import annotations

# Table 1: CIFAR10 FID for S steps × η.
PAPER_STEPS: tuple[int, ...] = (10, 20, 50, 100, 1000)
PAPER_ETAS: tuple[float, ...] = (0.0, 0.2, 0.5, 1.0)
PAPER_TABLE1_FID: dict[float, tuple[float, ...]] = {
    0.0: (13.36, 6.84, 4.67, 4.16, 4.04),
    0.2: (14.04, 7.11, 4.77, 4.25, 4.09),
    0.5: (16.66, 8.35, 5.25, 4.46, 4.29),
    1.0: (41.07, 18.36, 8.01, 5.78, 4.73),
}
# Table 2: CIFAR10 encode(S) + decode(S) reconstruction MSE per dimension, [0, 1] pixel scale.
PAPER_TABLE2_MSE: dict[int, float] = {
    10: 0.014,
    20: 0.0065,
    50: 0.0023,
    100: 0.0009,
    200: 0.0004,
    500: 0.0001,
    1000: 0.0001,
}


def paper_fid(eta: float, steps: int) -> float | None:
    """Table 1's FID for (η, S), or None where the paper has no such cell."""
    row = PAPER_TABLE1_FID.get(float(eta))
    return row[PAPER_STEPS.index(steps)] if row is not None and steps in PAPER_STEPS else None
