r"""Toy data with exact denoisers: a diagonal Gaussian mixture and its closed-form posterior mean.

For data x0 ~ Σ_k w_k N(μ_k, diag(c_k²)) and the forward marginal x_t = a·x0 + b·ε with
a = √ᾱ_t, b = √(1 − ᾱ_t), everything the sampler needs is known in closed form:

======================  =====================================================================
s_k²                     a²·c_k² + b², the per-dimension variance of x_t given component k
r_k(x_t)                 softmax_k(log w_k + log N(x_t; a·μ_k, diag(s_k²))), responsibilities
E[x0 | x_t, k]           μ_k + a·c_k²/s_k² · (x_t − a·μ_k)
E[ε | x_t, k]            b/s_k² · (x_t − a·μ_k)
x0(x_t, t)               Σ_k r_k · E[x0 | x_t, k]       (the MMSE denoiser, E[x0 | x_t])
eps(x_t, t)              Σ_k r_k · E[ε | x_t, k]        (= (x_t − a·x0)/b, computed without dividing by b)
v(x_t, t)                a·eps − b·x0                    (diffusers' v-prediction target)
======================  =====================================================================

These are the optimal (L2) predictions, so a DDIM sampler driven by them isolates the sampler's own
error from any model error. With one component the data are N(μ, diag(c²)) and every prediction is
affine in x_t. Responsibilities are computed in log space, so far-apart modes do not underflow.

Dtype rule: ᾱ is kept in float64 and gathered per sample; parameters and ᾱ are cast once to the
input's dtype (float32 or float64) and device, where the arithmetic then runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["GaussianMixture", "sliced_wasserstein"]

ArrayLike = Any  # a tensor, a nested sequence of floats, or a float


def _alpha_bar_table(alpha_bar: Any) -> torch.Tensor:
    """A float64 CPU ᾱ table from a tensor/sequence or an object with ``alpha_bar``/``alphas_cumprod``."""
    if hasattr(alpha_bar, "alpha_bar") and isinstance(alpha_bar.alpha_bar, torch.Tensor):
        table = alpha_bar.alpha_bar  # ddim_sched.DDIMScheduler: the float64 table
    elif hasattr(alpha_bar, "alphas_cumprod"):
        table = alpha_bar.alphas_cumprod  # diffusers schedulers
    else:
        table = alpha_bar
    table = torch.as_tensor(table).detach().to("cpu", torch.float64).clone()
    if table.dim() != 1 or table.numel() == 0:
        raise ValueError(f"alpha_bar must be a non-empty 1-D table; got shape {tuple(table.shape)}")
    if not bool(((table >= 0) & (table <= 1)).all()):
        raise ValueError("alpha_bar values must lie in [0, 1]")
    if bool((table == 1).any()):
        raise ValueError("alpha_bar must be < 1 at every timestep (b = sqrt(1 - alpha_bar) > 0)")
    return table


class GaussianMixture:
    """A diagonal Gaussian mixture in d dimensions with its exact ε-, x0- and v-predictors.

    Args:
        means: μ, [K, d] (or [d] for a single Gaussian).
        stds: c, per-component standard deviations: [K, d], [K], [d] (single Gaussian) or a float;
            all > 0.
        weights: Mixture weights [K] (normalised here), or None for equal weights.
        alpha_bar: The noise schedule ᾱ_0..ᾱ_{T−1}: a 1-D tensor/sequence, a ``ddim_sched.DDIMScheduler``
            (its float64 ``alpha_bar``) or any scheduler with ``alphas_cumprod``. Needed by the
            predictors, not by :meth:`sample` or :meth:`log_prob`.

    Raises:
        ValueError: Shapes that do not fit, non-positive stds or weights, ᾱ outside [0, 1).

    Example: at the last timestep x_t says almost nothing about x0, so E[x0 | x_t] is nearly the mean.

    >>> from ddim_sched import DDIMScheduler
    >>> data = GaussianMixture.gaussian([1.0, -1.0], [0.5, 0.1], alpha_bar=DDIMScheduler())
    >>> data.x0(torch.zeros(1, 2), 999)
    tensor([[ 1.0000, -1.0000]])
    >>> data.sample(4, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([4, 2])
    """

    def __init__(
        self,
        means: ArrayLike,
        stds: ArrayLike,
        weights: ArrayLike | None = None,
        *,
        alpha_bar: Any = None,
    ) -> None:
        mu = torch.as_tensor(means, dtype=torch.float64).detach().cpu()
        if mu.dim() == 1:
            mu = mu.unsqueeze(0)
        if mu.dim() != 2 or mu.numel() == 0:
            raise ValueError(f"means must have shape [K, d] or [d]; got {tuple(mu.shape)}")
        K, d = mu.shape
        c = torch.as_tensor(stds, dtype=torch.float64).detach().cpu()
        if c.dim() == 0:
            c = c.expand(K, d)
        elif c.dim() == 1 and K == 1 and c.shape[0] == d:
            c = c.unsqueeze(0)
        elif c.dim() == 1 and c.shape[0] == K:
            c = c.unsqueeze(1).expand(K, d)
        if c.shape != (K, d):
            raise ValueError(f"stds must broadcast to the means' shape [{K}, {d}]; got {tuple(c.shape)}")
        if not bool((c > 0).all()) or not bool(c.isfinite().all()):
            raise ValueError("stds must be finite and > 0")
        if weights is None:
            w = torch.full((K,), 1.0 / K, dtype=torch.float64)
        else:
            w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
            if w.shape != (K,):
                raise ValueError(f"weights must have shape [{K}]; got {tuple(w.shape)}")
            if not bool((w > 0).all()) or not bool(w.isfinite().all()):
                raise ValueError("weights must be finite and > 0")
            w = w / w.sum()
        self.means = mu.contiguous()
        self.stds = c.contiguous()
        self.weights = w
        self.alpha_bar = None if alpha_bar is None else _alpha_bar_table(alpha_bar)
        self._cache: dict[tuple[str, torch.dtype], tuple[torch.Tensor, ...]] = {}

    # ------------------------------------------------------------------ constructors

    @classmethod
    def gaussian(cls, mean: ArrayLike, std: ArrayLike, *, alpha_bar: Any = None) -> GaussianMixture:
        """The single Gaussian N(mean, diag(std²)); mean and std are [d] (std may be a float)."""
        mu = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
        c = torch.as_tensor(std, dtype=torch.float64)
        c = c.expand(mu.shape) if c.dim() == 0 else c.reshape(1, -1)
        return cls(mu, c, alpha_bar=alpha_bar)

    @classmethod
    def ring(cls, modes: int = 8, radius: float = 1.0, std: float = 0.1, *, alpha_bar: Any = None) -> GaussianMixture:
        """``modes`` equal-weight isotropic 2-D Gaussians evenly spaced on a circle."""
        if isinstance(modes, bool) or not isinstance(modes, int) or modes < 1:
            raise ValueError(f"modes must be an int >= 1; got {modes!r}")
        angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
        means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
        return cls(means, std, alpha_bar=alpha_bar)

    # ------------------------------------------------------------------ properties

    @property
    def num_components(self) -> int:
        """K."""
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        """d."""
        return self.means.shape[1]

    def mean(self) -> torch.Tensor:
        """E[x0], [d] float64."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Cov[x0], [d, d] float64 (law of total covariance)."""
        centred = self.means - self.mean()
        within = torch.diag(self.weights @ self.stds**2)
        between = (self.weights[:, None] * centred).T @ centred
        return within + between

    # ------------------------------------------------------------------ sampling and density

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Exact samples from the data distribution, [n, d].

        The draws happen on the generator's device (CPU when none is given) and are then moved to
        ``device``, so a seeded CPU generator gives the same samples on every device.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an int >= 0; got {n!r}")
        draw = generator.device if generator is not None else torch.device("cpu")
        component = torch.multinomial(self.weights.to(draw), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=draw, dtype=torch.float64)
        x = self.means.to(draw)[component] + self.stds.to(draw)[component] * z
        return x.to(device=device, dtype=dtype)

    def log_prob(self, x: torch.Tensor, t: int | torch.Tensor | None = None) -> torch.Tensor:
        """log density of the data (t=None) or of the noisy marginal at timestep t, [B]."""
        if t is None:
            a = torch.ones((), dtype=x.dtype, device=x.device)
            b2 = torch.zeros((), dtype=x.dtype, device=x.device)
        else:
            a, b = self._ab(x, t)
            a, b2 = a.squeeze(-1), b.squeeze(-1) ** 2
        return self._log_joint(x, a, b2)[0].logsumexp(dim=-1)

    # ------------------------------------------------------------------ exact predictors

    def x0(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t]: the exact posterior mean (the ``sample`` prediction), x_t's shape and dtype."""
        return self.predict(x_t, t, "sample")

    def eps(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """E[ε | x_t]: the exact noise prediction (``epsilon``), x_t's shape and dtype."""
        return self.predict(x_t, t, "epsilon")

    def v(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """E[v | x_t] = √ᾱ·E[ε|x_t] − √(1−ᾱ)·E[x0|x_t] (``v_prediction``), x_t's shape and dtype."""
        return self.predict(x_t, t, "v_prediction")

    def predict(self, x_t: torch.Tensor, t: int | torch.Tensor, prediction_type: str) -> torch.Tensor:
        """The exact model output for ``prediction_type`` at x_t.

        Args:
            x_t: [B, ...] with prod(...) = d; float32 or float64, any device.
            t: A timestep: int, 0-d integer tensor, or [B] integer tensor (one per sample).
            prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.

        Returns:
            Tensor of x_t's shape, dtype and device.

        Raises:
            ValueError: No alpha_bar table, wrong trailing size, t out of range, unknown type.
        """
        if prediction_type not in _PREDICTIONS:
            names = ", ".join(repr(k) for k in _PREDICTIONS)
            raise ValueError(f"prediction_type must be one of {names}; got {prediction_type!r}")
        flat = self._flatten(x_t)
        a, b = self._ab(flat, t)  # [B or 1, 1]
        # [B, K] log joint, and the per-component variance s² [K, d] or [B, K, d].
        log_joint, s2, mu = self._log_joint(flat, a.squeeze(-1), b.squeeze(-1) ** 2)
        r = _responsibilities(log_joint).unsqueeze(-1)  # [B, K, 1]
        a3, b3 = a.unsqueeze(-1), b.unsqueeze(-1)  # [B or 1, 1, 1]
        residual = flat.unsqueeze(1) - a3 * mu  # x_t − a·μ_k, [B, K, d]
        c2 = self._params(flat)[1] ** 2
        x0 = (r * (mu + a3 * c2 / s2 * residual)).sum(dim=1)
        eps = (r * (b3 / s2 * residual)).sum(dim=1)
        out = _PREDICTIONS[prediction_type](x0, eps, a, b)
        return out.reshape(x_t.shape)

    def model(self, prediction_type: str = "epsilon") -> Callable[[torch.Tensor, Any], torch.Tensor]:
        """A ``model_fn(x, t)`` returning the exact output for ``prediction_type``."""
        if prediction_type not in _PREDICTIONS:
            names = ", ".join(repr(k) for k in _PREDICTIONS)
            raise ValueError(f"prediction_type must be one of {names}; got {prediction_type!r}")

        def model_fn(x: torch.Tensor, t: Any) -> torch.Tensor:
            return self.predict(x, t, prediction_type)

        return model_fn

    # ------------------------------------------------------------------ helpers

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x_t must be a floating-point tensor; got {type(x).__name__}")
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"x_t must have shape [B, ...] with {self.dim} values per sample; got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim)

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(μ, c, log w) on x's device in x's dtype, cached."""
        key = (str(x.device), x.dtype)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = tuple(
                p.to(device=x.device, dtype=x.dtype) for p in (self.means, self.stds, self.weights.log())
            )
        return cached  # type: ignore[return-value]

    def _ab(self, x: torch.Tensor, t: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(√ᾱ_t, √(1−ᾱ_t)) as [B or 1, 1] tensors in x's dtype, gathered from the float64 table."""
        if self.alpha_bar is None:
            raise ValueError("this GaussianMixture has no alpha_bar table: pass alpha_bar=... (or a scheduler)")
        T = self.alpha_bar.shape[0]
        if isinstance(t, torch.Tensor):
            if t.is_floating_point() or t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, x.shape[0])):
                raise ValueError(f"t must be an int, a 0-d or [B] integer tensor; got {t!r}")
            index = t.reshape(-1).to("cpu", torch.int64)
        elif isinstance(t, int) and not isinstance(t, bool):
            index = torch.tensor([t])
        else:
            raise ValueError(f"t must be an int or an integer tensor; got {t!r}")
        if bool(((index < 0) | (index >= T)).any()):
            raise ValueError(f"t must lie in [0, {T}); got {t!r}")
        alpha_bar = self.alpha_bar[index]
        a = alpha_bar.sqrt().to(device=x.device, dtype=x.dtype).unsqueeze(-1)
        b = (1 - alpha_bar).sqrt().to(device=x.device, dtype=x.dtype).unsqueeze(-1)
        return a, b

    def _log_joint(
        self, x: torch.Tensor, a: torch.Tensor, b2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log w_k + log N(x; a·μ_k, a²c_k² + b²) as [B, K], with s² and μ."""
        mu, c, log_w = self._params(x)
        a3 = a.reshape(-1, 1, 1) if a.dim() else a
        b23 = b2.reshape(-1, 1, 1) if b2.dim() else b2
        s2 = a3**2 * c**2 + b23  # [B or 1, K, d] (or [K, d])
        diff = x.unsqueeze(1) - a3 * mu
        log_normal = -0.5 * ((diff**2 / s2) + s2.log() + math.log(2 * math.pi)).sum(dim=-1)
        return log_w + log_normal, s2, mu


def _responsibilities(log_joint: torch.Tensor) -> torch.Tensor:
    """softmax over the last dim, written out: torch.softmax over a short last dim is slow on CPU."""
    weights = (log_joint - log_joint.amax(dim=-1, keepdim=True)).exp()
    return weights / weights.sum(dim=-1, keepdim=True)


_PREDICTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "epsilon": lambda x0, eps, a, b: eps,
    "sample": lambda x0, eps, a, b: x0,
    "v_prediction": lambda x0, eps, a, b: a * eps - b * x0,
}


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    projections: int = 256,
    generator: torch.Generator | None = None,
) -> float:
    """Monte-Carlo sliced 2-Wasserstein distance between two equal-size samples [n, d].

    SW2² = E_θ[W2²(θ·x, θ·y)] over uniform unit directions θ; each 1-D W2² is the mean squared
    difference of the sorted projections. Computed in float64.
    """
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must both be [n, d] of one shape; got {tuple(x.shape)} and {tuple(y.shape)}")
    x64 = x.detach().to("cpu", torch.float64)
    y64 = y.detach().to("cpu", torch.float64)
    theta = torch.randn(x.shape[1], projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px = (x64 @ theta).sort(dim=0).values
    py = (y64 @ theta).sort(dim=0).values
    return float(((px - py) ** 2).mean().sqrt())
