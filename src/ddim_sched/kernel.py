r"""The DDIM update as pure functions: per-sample coefficients, then fused linear combinations.

Notation (Song, Meng & Ermon 2020; diffusers' names in brackets):

======================  =====================================================================
x_t      [sample]        the current noisy sample at timestep t
m        [model_output]  the model's prediction: ε, x0 or v depending on ``prediction_type``
ᾱ_t      [alpha_prod_t]  cumulative product of (1 − β) up to t (``alpha_bar_t``)
ᾱ_prev                   ᾱ at the timestep the step lands on (``final_alpha_cumprod`` after the last)
x̂0       [pred_original_sample]  the predicted clean sample
ε̂        [pred_epsilon]  the predicted noise
σ_t(η)   [std_dev_t]     η · √((1 − ᾱ_prev)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev)              (eq. 16)
x_prev   [prev_sample]   √ᾱ_prev · x̂0 + √(1 − ᾱ_prev − σ²) · ε̂ + σ · z                 (eq. 12)
======================  =====================================================================

Without clipping, x̂0 and x_prev are both linear in (x_t, m), so the step is two linear
combinations whose coefficients are computed once, in float64, for a whole batch (or a whole
schedule) by :func:`ddim_coefficients`. :func:`ddim_step` then reads the two inputs and writes
the two outputs.

Passes over memory. Coefficients come in two forms:

* host scalars (a sequence of Python floats; the scheduler uses them when the timestep is a Python
  int or a one-element CPU tensor): each output is one fused ``β·a + α·b`` kernel (``torch.addr``
  against a one-element vector, the only eager torch op that scales both operands), so an
  unclipped step reads x_t and m twice and writes each output once; clipping adds one in-place
  pass over x̂0. ``out=sample`` writes x_prev in place.
* device tensors ([K] or per-sample [B, K]; for tensor timesteps, η tensors and explicit
  successors): one multiply and one in-place ``addcmul_`` per output. No host sync: the
  coefficients are never read on the host. Under ``torch.compile`` the step fuses into a single
  kernel that reads x_t and m once and writes both outputs once.

Dtype rule: the arithmetic runs in float64 for float64 samples and in float32 otherwise; outputs
have the sample's dtype. Half-precision inputs are converted once on the CPU (whose kernels would
convert them inside every op anyway), inside the kernels elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Union

import torch

from .thresholding import dynamic_threshold_

# Columns of the coefficient tensor returned by ddim_coefficients.
COEFFICIENTS = (
    "x0_x",  # x̂0 = x0_x · x_t + x0_m · m
    "x0_m",
    "prev_x",  # unclipped: x_prev = prev_x · x_t + prev_m · m + σ z
    "prev_m",
    "dir_x0",  # clipped x̂0, ε̂ from the model: x_prev = dir_x0 · x̂0 + eps_x · x_t + eps_m · m + σ z
    "eps_x",
    "eps_m",
    "clip_x0",  # clipped x̂0, ε̂ re-derived from it: x_prev = clip_x0 · x̂0 + clip_x · x_t + σ z
    "clip_x",
    "sigma",
)
COLUMN = {name: i for i, name in enumerate(COEFFICIENTS)}

# Coefficients that are identically zero for a prediction type (their terms are skipped).
STRUCTURAL_ZEROS = {
    "epsilon": frozenset({"eps_x"}),
    "sample": frozenset({"x0_x"}),
    "v_prediction": frozenset(),
}

ClipMode = Literal["none", "clip", "threshold"]
# A coefficient: a Python float (host) or a tensor broadcastable over the sample.
Coefficient = Union[float, torch.Tensor]


def ddim_coefficients(
    alpha_bar_t: torch.Tensor,
    alpha_bar_prev: torch.Tensor,
    eta: float | torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """All step coefficients for the given noise levels, in float64.

    Args:
        alpha_bar_t: ᾱ at the current timesteps, any shape [...] (float64 recommended).
        alpha_bar_prev: ᾱ at the timesteps stepped to, same shape.
        eta: η >= 0, a float or a tensor broadcastable to that shape.
        prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.

    Returns:
        float64 tensor [..., len(COEFFICIENTS)], columns named by ``COEFFICIENTS``.
    """
    a_t = alpha_bar_t.to(torch.float64)
    a_prev = alpha_bar_prev.to(torch.float64)
    sqrt_a_t, sqrt_b_t = a_t.sqrt(), (1 - a_t).sqrt()
    sqrt_a_prev = a_prev.sqrt()
    # σ² at η = 1, the DDPM posterior variance (eq. 16). It is defined for a step towards less noise
    # (ᾱ_t < ᾱ_prev); elsewhere (an inversion step, or landing on ᾱ_prev = 0) it is 0, the limit of
    # the clamped formula, computed without dividing by ᾱ_prev = 0 or 1 − ᾱ_t = 0.
    tiny = torch.finfo(torch.float64).tiny
    denoising = a_t < a_prev
    ratio = torch.where(denoising, a_t / a_prev.clamp(min=tiny), torch.ones_like(a_t))
    variance = torch.where(denoising, (1 - a_prev) / (1 - a_t).clamp(min=tiny) * (1 - ratio), torch.zeros_like(a_t))
    if isinstance(eta, torch.Tensor):
        eta = eta.to(device=a_t.device, dtype=torch.float64)
    sigma = eta * variance.sqrt()
    # Coefficient of ε̂ in eq. 12, √(1 − ᾱ_prev − σ²). The subtraction cancels near ᾱ_t = 0 at η = 1 (the
    # root of a rounding error), so where 0 <= ᾱ_t/ᾱ_prev <= 1 use the equal, cancellation-free form
    # (1 − ᾱ_prev)/(1 − ᾱ_t) · ((1 − η²)(1 − ᾱ_t/ᾱ_prev) + ᾱ_t/ᾱ_prev · (1 − ᾱ_prev)). Clamped at 0 for η > 1.
    stable = (1 - a_prev) / (1 - a_t).clamp(min=tiny) * ((1 - eta**2) * (1 - ratio) + ratio * (1 - a_prev))
    direction = torch.where(denoising, stable, 1 - a_prev - sigma**2).clamp(min=0).sqrt()

    # x̂0 = A_x·x + A_m·m and ε̂ = E_x·x + E_m·m for each parameterisation.
    one, zero = torch.ones_like(a_t), torch.zeros_like(a_t)
    if prediction_type == "epsilon":
        A_x, A_m, E_x, E_m = 1 / sqrt_a_t, -sqrt_b_t / sqrt_a_t, zero, one
    elif prediction_type == "sample":
        A_x, A_m, E_x, E_m = zero, one, 1 / sqrt_b_t, -sqrt_a_t / sqrt_b_t
    elif prediction_type == "v_prediction":
        A_x, A_m, E_x, E_m = sqrt_a_t, -sqrt_b_t, sqrt_b_t, sqrt_a_t
    else:
        raise ValueError(f"prediction_type must be one of 'epsilon', 'sample', 'v_prediction'; got {prediction_type!r}")

    columns = {
        "x0_x": A_x,
        "x0_m": A_m,
        "prev_x": sqrt_a_prev * A_x + direction * E_x,
        "prev_m": sqrt_a_prev * A_m + direction * E_m,
        "dir_x0": sqrt_a_prev,
        "eps_x": direction * E_x,
        "eps_m": direction * E_m,
        # ε̂ = (x_t − √ᾱ_t·x̂0)/√(1−ᾱ_t) from the clipped x̂0.
        "clip_x0": sqrt_a_prev - direction * sqrt_a_t / sqrt_b_t,
        "clip_x": direction / sqrt_b_t,
        "sigma": sigma * one,
    }
    shape = torch.broadcast_shapes(a_t.shape, sigma.shape)
    return torch.stack([torch.broadcast_to(columns[name], shape) for name in COEFFICIENTS], dim=-1)


def _column(coefficients: torch.Tensor, index: int, ndim: int) -> torch.Tensor:
    """Column ``index`` shaped [B or 1, 1, ..., 1] to broadcast over a [B, ...] tensor."""
    column = coefficients[..., index]
    return column.reshape(column.shape + (1,) * (ndim - column.dim()) if column.dim() else (1,) * ndim)


# Constant tensors per (dtype, device), created once: a 0-d zero, so that c·t can be written
# torch.add(zero, t, alpha=c), which passes c as a scalar argument instead of wrapping it in a new
# tensor as torch.mul(t, c) does (~1 µs per op), and torch.addr's one-element second vector.
_CONSTANTS: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

# Below this many elements a step is bound by per-op overhead, not memory traffic: host-scalar
# combinations then use two cheaper ops (scale, add_) instead of torch.addr and its reshapes.
FUSED_MIN_NUMEL = 1 << 15
# Host-scalar coefficients need both inputs contiguous and of one of these dtypes (others are
# converted on the CPU; elsewhere the coefficients become a tensor).
_FUSED_DTYPES = (torch.float32, torch.float64)


def _constants(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached (0-d zero, one-element one) tensors of ``like``'s dtype and device."""
    key = (like.dtype, like.device)
    value = _CONSTANTS.get(key)
    if value is None:
        value = _CONSTANTS[key] = (
            torch.zeros((), dtype=like.dtype, device=like.device),
            torch.ones(1, dtype=like.dtype, device=like.device),
        )
    return value


def _combine_host(
    c: Sequence[float],
    terms: Sequence[tuple[int, int]],
    sources: Sequence[torch.Tensor],
    constants: tuple[torch.Tensor, torch.Tensor] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ c[j]·sources[s] over (j, s) in ``terms``, for Python-float coefficients, as a new tensor or
    into ``out`` (contiguous, the terms' dtype; it may be the first term's tensor).

    The first two tensors must be contiguous, of one float32/float64 dtype and shape. They take one
    fused ``β·a + α·b`` pass (``torch.addr(a, b, [1], beta=β, alpha=α)``, the one eager op that
    scales both operands); below FUSED_MIN_NUMEL elements, where dispatch overhead dominates, a
    scale (``torch.add(0, a, alpha=β)``: the scalar goes in as an argument, not a new tensor) and
    an ``add_`` instead. Each further term: one in-place ``add_``. ``constants``: from
    :func:`_constants` for the first tensor.
    """
    j0, s0 = terms[0]
    t0 = sources[s0]
    zero, one = constants or _constants(t0)
    if len(terms) > 1 and t0.numel() >= FUSED_MIN_NUMEL:
        j1, s1 = terms[1]
        if out is None:
            out = torch.empty_like(t0)
        torch.addr(t0.view(-1, 1), sources[s1].view(-1), one, beta=c[j0], alpha=c[j1], out=out.view(-1, 1))
        rest = terms[2:]
    else:
        out = torch.add(zero, t0, alpha=c[j0], out=out)
        rest = terms[1:]
    for j, s in rest:
        out.add_(sources[s], alpha=c[j])
    return out


def _combine(
    terms: Sequence[tuple[Coefficient, torch.Tensor]],
    dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ cᵢ·tᵢ as a new tensor, computed in ``dtype`` (default: the promoted dtype of the terms)
    and returned in ``out_dtype`` (default: the compute dtype); or written into ``out`` (any
    layout and dtype; it may be the first term's tensor).

    Python-float coefficients take :func:`_combine_host` when the tensors allow it. Tensor
    coefficients (broadcastable over the terms): a multiply, then ``addcmul_`` in place; the last
    operation writes ``out_dtype`` directly (half outputs: float32 arithmetic, one rounding, no
    float32 copy of the result).
    """
    (c0, t0), *rest = terms
    if not isinstance(c0, torch.Tensor):
        if (
            all(not isinstance(c, torch.Tensor) for c, _ in terms)
            and t0.dtype in _FUSED_DTYPES
            and dtype in (None, t0.dtype)
            and out_dtype in (None, t0.dtype)
            and all(t.dtype == t0.dtype and t.shape == t0.shape and t.is_contiguous() for _, t in terms)
        ):
            return _combine_host([c for c, _ in terms], [(i, i) for i in range(len(terms))], [t for _, t in terms])
        # As tensors of the compute dtype with one dimension per sample dimension, so half inputs
        # are upcast (a 0-d tensor would not promote them).
        compute = dtype or torch.promote_types(t0.dtype, torch.float32)
        ones = (1,) * t0.dim()
        terms = [(torch.tensor(c, dtype=compute, device=t0.device).reshape(ones), t) for c, t in terms]
        (c0, t0), *rest = terms
    if out is not None and out.dtype != torch.promote_types(t0.dtype, c0.dtype):
        # A lower-precision destination: compute, then one rounding copy.
        return out.copy_(_combine(terms, dtype))
    if not rest:
        product = torch.mul(t0, c0, out=out)
        return product if out is not None or out_dtype in (None, product.dtype) else product.to(out_dtype)
    *middle, (c_last, t_last) = rest
    partial = torch.mul(t0, c0, out=out)
    for c, t in middle:
        partial.addcmul_(t, c)
    if out is not None or out_dtype in (None, partial.dtype):
        return partial.addcmul_(t_last, c_last)
    shape = torch.broadcast_shapes(partial.shape, t_last.shape)
    result = torch.empty(shape, dtype=out_dtype, device=partial.device)
    return torch.addcmul(partial, t_last, c_last, out=result)


def _same_memory(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    """Whether ``a`` is ``b`` or a view of exactly the same elements."""
    return a is b or (
        a is not None and a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
    )


# Which coefficient multiplies which tensor: 0 = x_t, 1 = m, 2 = x̂0 (clipped), 3 = z.
_X, _M, _X0, _Z = range(4)
_Terms = tuple[tuple[int, int], ...]
_PLANS: dict[tuple[str, bool, bool, bool], tuple[_Terms, _Terms]] = {}


def _plan(prediction_type: str, clipped: bool, use_clipped: bool, noisy: bool) -> tuple[_Terms, _Terms]:
    """(x̂0 terms, x_prev terms) as (coefficient column, tensor) pairs, structural zeros dropped."""
    key = (prediction_type, clipped, use_clipped, noisy)
    plan = _PLANS.get(key)
    if plan is None:
        if prediction_type not in STRUCTURAL_ZEROS:
            accepted = ", ".join(map(repr, STRUCTURAL_ZEROS))
            raise ValueError(f"prediction_type must be one of {accepted}; got {prediction_type!r}")
        zeros = STRUCTURAL_ZEROS[prediction_type]
        x0 = [("x0_x", _X), ("x0_m", _M)]
        if not clipped:
            prev = [("prev_x", _X), ("prev_m", _M)]
        elif use_clipped:
            prev = [("clip_x0", _X0), ("clip_x", _X)]
        else:
            prev = [("dir_x0", _X0), ("eps_x", _X), ("eps_m", _M)]
        if noisy:
            prev.append(("sigma", _Z))
        plan = _PLANS[key] = tuple(
            tuple((COLUMN[name], source) for name, source in terms if name not in zeros) for terms in (x0, prev)
        )
    return plan


def ddim_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    coefficients: torch.Tensor | Sequence[float],
    prediction_type: str,
    clip: ClipMode = "none",
    clip_sample_range: float = 1.0,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
    use_clipped_model_output: bool = False,
    noise: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update (eq. 12) from precomputed coefficients.

    Args:
        model_output: m, [B, ...], any floating dtype.
        sample: x_t, same shape.
        coefficients: one row of :func:`ddim_coefficients` for the whole batch, as a [K] tensor or
            as a sequence of K Python floats (host scalars: the fused path), or [B, K] rows, one
            per sample. Tensors must already be in the compute dtype and on the sample's device.
        prediction_type: What m is; selects which terms are structurally zero.
        clip: ``"none"``, ``"clip"`` (clamp x̂0 to ±clip_sample_range) or ``"threshold"`` (dynamic).
        clip_sample_range, dynamic_thresholding_ratio, sample_max_value: as in the config.
        use_clipped_model_output: Re-derive ε̂ from the clipped x̂0.
        noise: z, [B, ...], or None for a deterministic step (σ must then be 0 or ignored).
        out: Where to write x_prev: a tensor of the sample's shape and dtype, which may be
            ``sample`` itself (an in-place step: on the CPU it saves one of the eight memory
            transfers per element a step makes) or any other input; None for a new tensor.

    Returns:
        (x_prev, x̂0) of the sample's dtype: x_prev is ``out`` when given, x̂0 a new tensor.
        Memory: besides the outputs, a step allocates O(B) coefficients only, unless the inputs
        are half precision (float32 working copies) or thresholding is on (an |x̂0| scratch
        tensor and the top-k values for the quantile).
    """
    if clip not in ("none", "clip", "threshold"):
        raise ValueError(f"clip must be one of 'none', 'clip', 'threshold'; got {clip!r}")
    clipped = clip != "none"
    x0_terms, prev_terms = _plan(prediction_type, clipped, use_clipped_model_output, noise is not None)
    out_dtype = sample.dtype
    host = not isinstance(coefficients, torch.Tensor)
    if host and not (
        sample.dtype in _FUSED_DTYPES
        and model_output.dtype == sample.dtype
        and sample.is_contiguous()
        and model_output.is_contiguous()
    ):
        compute = torch.float64 if sample.dtype == torch.float64 else torch.float32
        if sample.device.type == "cpu":
            # CPU kernels copy a mixed-dtype operand to the common dtype inside every op anyway:
            # convert each input once and take the fused path.
            sample = sample.to(compute, memory_format=torch.contiguous_format)
            model_output = model_output.to(compute, memory_format=torch.contiguous_format)
        else:
            coefficients = torch.tensor(coefficients, dtype=compute, device=sample.device)
            host = False
    sources = [sample, model_output, None, noise]
    if out is not None:
        if not isinstance(out, torch.Tensor) or out.shape != sample.shape or out.dtype != out_dtype:
            raise ValueError(
                f"out must be a tensor of the sample's shape {tuple(sample.shape)} and dtype {out_dtype}; "
                f"got {getattr(out, 'shape', out)!r} of dtype {getattr(out, 'dtype', None)}"
            )
        # x_prev's terms that read the destination first, so each is read before it is overwritten.
        prev_terms = tuple(sorted(prev_terms, key=lambda term: not _same_memory(sources[term[1]], out)))

    if host:
        constants = _constants(sample)
        x0 = _combine_host(coefficients, x0_terms, sources, constants)
    else:
        ndim = sample.dim()
        # Clipping needs x̂0 in the compute dtype; otherwise it is written in the output dtype.
        x0 = _combine(
            [(_column(coefficients, j, ndim), sources[s]) for j, s in x0_terms],
            out_dtype=None if clipped else out_dtype,
        )
    if clip == "clip":
        x0.clamp_(-clip_sample_range, clip_sample_range)
    elif clipped:
        dynamic_threshold_(x0, dynamic_thresholding_ratio, sample_max_value)
    sources[_X0] = x0
    if host:
        direct = out is not None and out.dtype == sample.dtype and out.is_contiguous()
        prev = _combine_host(coefficients, prev_terms, sources, constants, out if direct else None)
        if out is not None and not direct:
            prev = out.copy_(prev)
        if out_dtype == x0.dtype:
            return prev, x0
        return prev.to(out_dtype), x0.to(out_dtype)
    prev = _combine([(_column(coefficients, j, ndim), sources[s]) for j, s in prev_terms], out_dtype=out_dtype, out=out)
    return prev, x0.to(out_dtype)
