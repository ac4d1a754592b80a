"""The digits demo's FID: a Fréchet distance in a feature space stated plainly.

Feature space: the 64 ReLU units of the last hidden layer of :class:`DigitClassifier`, a small MLP
trained on the demo's training split (the layer before the logits, as Inception's pool3 is for FID).
Images are clamped to [−1, 1] first (the pixel range, as saving an image would). The distance between
two image sets is the Fréchet distance between Gaussian fits (mean, unbiased covariance) of their
features:

    d² = ‖μ_a − μ_b‖² + tr Σ_a + tr Σ_b − 2 tr (Σ_b^½ Σ_a Σ_b^½)^½

Like Inception FID it is biased upward by the finite sample, so values are only comparable at the
same sample sizes; the demo measures its floor (real digits against the held-out reference) at the
size it uses, and the spread of each value by paired split halves.

The linear algebra runs in torch float64, not numpy, so that the thread count the demo sets applies
to it: numpy's multi-threaded BLAS on a busy two-core machine made a 64×64 eigh ~60× slower.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .digits_train import DigitClassifier

Features = np.ndarray | torch.Tensor


def gaussian_fit(features: Features) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [D], unbiased covariance [D, D]) of features [N, D], as float64 tensors."""
    x = torch.as_tensor(features, dtype=torch.float64)
    mean = x.mean(dim=0)
    centred = x - mean
    return mean, centred.T @ centred / (len(x) - 1)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a positive semi-definite matrix (negative rounding clipped to 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0.0).sqrt()) @ vectors.T


def _frechet(
    mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor, sqrt_b: torch.Tensor
) -> float:
    """d² between N(mean_a, cov_a) and N(mean_b, cov_b), given sqrt_b = Σ_b^½."""
    cross = torch.linalg.eigvalsh(sqrt_b @ cov_a @ sqrt_b)
    trace_sqrt = cross.clamp(min=0.0).sqrt().sum()
    return float(((mean_a - mean_b) ** 2).sum() + cov_a.trace() + cov_b.trace() - 2.0 * trace_sqrt)


def frechet_distance(features_a: Features, features_b: Features) -> float:
    """Fréchet distance d² between Gaussian fits of two feature sets [N_a, D] and [N_b, D] (float64).

    Args:
        features_a, features_b: Arrays or tensors with the same D and at least 2 rows each.

    Returns:
        d² >= 0 up to rounding (the squared W2 distance between the two Gaussian fits).
    """
    mean_a, cov_a = gaussian_fit(features_a)
    mean_b, cov_b = gaussian_fit(features_b)
    return _frechet(mean_a, cov_a, mean_b, cov_b, _sqrt_psd(cov_b))


class FeatureFID:
    """FID of image sets against one fixed reference set, in a classifier's hidden-layer features.

    Args:
        classifier: Its :meth:`DigitClassifier.features` define the feature space.
        reference: The reference images [N, 64] (the demo uses the held-out digits).
    """

    def __init__(self, classifier: DigitClassifier, reference: torch.Tensor) -> None:
        self.classifier = classifier
        self.reference_features = self.features(reference)
        self._mean, self._cov = gaussian_fit(self.reference_features)
        self._sqrt = _sqrt_psd(self._cov)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """float64 features [N, 64] of images [N, 64], clamped to [−1, 1] first."""
        with torch.no_grad():
            return self.classifier.features(images.to(torch.float32).clamp(-1.0, 1.0)).to(torch.float64)

    def distance(self, features: Features) -> float:
        """FID of precomputed features [N, D] (from :meth:`features`) against the reference."""
        mean, cov = gaussian_fit(features)
        return _frechet(mean, cov, self._mean, self._cov, self._sqrt)

    def __call__(self, images: torch.Tensor) -> float:
        """FID of images [N, 64] against the reference."""
        return self.distance(self.features(images))

    def real_floor(self, real: torch.Tensor, n: int, draws: int, seed: int) -> np.ndarray:
        """FID of ``draws`` random subsets of ``n`` real images (without replacement) against the reference.

        The value a perfect sampler of ``real``'s distribution would score at sample size ``n``.

        Returns:
            float64 [draws].
        """
        if not 2 <= n <= len(real):
            raise ValueError(f"n must be in [2, {len(real)}] (the number of real images); got {n}")
        generator = torch.Generator().manual_seed(seed)
        features = self.features(real)
        picks = [torch.randperm(len(real), generator=generator)[:n] for _ in range(draws)]
        return np.array([self.distance(features[pick]) for pick in picks])

    def half_samples(self, feature_sets: Sequence[Features], repeats: int, seed: int) -> np.ndarray:
        """Split-half spread: the FID of random halves of several feature sets against the fixed reference.

        Each repeat draws one random half of the row indices (without replacement) and scores every
        set on those rows, so sets whose rows correspond (samples from the same x_T) stay paired. For
        a statistic of n rows, the spread over halves of one sample (finite-population variance of
        the half, about half the variance at n/2) approximates its sampling spread at n; checked
        against 12 independent x_T draws on the demo's network, it came out 1.1–1.6× wider per cell
        and 1.1× for a difference of cells, so it errs on the side of calling fewer differences. The
        reference is fixed: every FID of the demo is measured against the same held-out digits.

        Args:
            feature_sets: K arrays or tensors [N, D] (from :meth:`features`), all with the same N.
            repeats: R random halves.
            seed: Seeds the halves.

        Returns:
            float64 [R, K]: FID per half and set.
        """
        sizes = {len(f) for f in feature_sets}
        if len(sizes) != 1:
            raise ValueError(f"feature_sets must all have the same number of rows; got {sorted(sizes)}")
        n = sizes.pop()
        generator = torch.Generator().manual_seed(seed)
        sets = [torch.as_tensor(f, dtype=torch.float64) for f in feature_sets]
        out = np.empty((repeats, len(sets)))
        for r in range(repeats):
            rows = torch.randperm(n, generator=generator)[: n // 2]
            out[r] = [self.distance(features[rows]) for features in sets]
        return out


@dataclass(frozen=True)
class Spread:
    """Paired split-half FIDs of several image sets (from :meth:`FeatureFID.half_samples`).

    Attributes:
        labels: One label per FID, e.g. (η, S) cells or the names of reference samplers.
        replicates: float64 [R, len(labels)]; column k belongs to labels[k].
    """

    labels: tuple[Hashable, ...]
    replicates: np.ndarray

    def _column(self, label: Hashable) -> np.ndarray:
        return self.replicates[:, self.labels.index(label)]

    def sd(self, label: Hashable) -> float:
        """Split-half standard deviation of one FID."""
        return float(self._column(label).std(ddof=1))

    def difference_sd(self, a: Hashable, b: Hashable) -> float:
        """Split-half standard deviation of FID(a) − FID(b), pairing included."""
        return float((self._column(a) - self._column(b)).std(ddof=1))
