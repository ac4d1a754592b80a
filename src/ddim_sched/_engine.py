"""The fused engine behind the schedulers' ``step``: x̂0 and x_s from :class:`~ddim_sched.update.StepCoefficients`
in the fewest passes over memory. One entry point, :func:`fused_step`; the tests hold it to
:func:`ddim_sched.update.ddim_update`, the step as the paper writes it.

It writes into fresh buffers and ``out=`` in place, so it records no gradients: the schedulers call it
only when autograd is not recording, and :func:`~ddim_sched.update.ddim_update` otherwise.

Two ways to apply the weights:

* host weights (Python floats; an int timestep): when the sample and model output are float32/float64
  (half precision is converted once on the CPU) and share one dense memory layout, each output is one
  fused ``β·a + α·b`` pass over flat views (``torch.addr`` against a one-element vector: the one eager op
  that scales both operands), then one ``add_`` per further term. Small tensors, where per-op overhead
  dominates, take a scale and an ``add_`` instead. ``out=`` may alias any input.
* tensor weights ([B] per sample, or a row for the batch; per-sample timesteps, η tensors, device
  timesteps): one multiply and one in-place ``addcmul_`` per further term, in the compute dtype, for any
  layout (strided, expanded, sliced); the last op writes the output dtype directly. Host weights for
  inputs the first way cannot take become such a row.

Dtype rule: arithmetic in float64 for float64 samples and in float32 otherwise; outputs in the sample's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .arguments import is_compiling as _compiling
from .thresholding import X0Clip
from .update import StepCoefficients

# Weights that are identically zero for a prediction type: their terms are skipped.
STRUCTURAL_ZEROS: dict[str, frozenset[str]] = {
    "epsilon": frozenset({"eps_x"}),
    "sample": frozenset({"x0_x"}),
    "v_prediction": frozenset(),
    "flow_prediction": frozenset(),
}
# Below this many elements a step is bound by per-op overhead, not memory traffic.
FUSED_MIN_NUMEL = 1 << 15
_HOST_DTYPES = (torch.float32, torch.float64)
# The tensors a term multiplies: the sample x_t, the model output m, the bounded x̂0 and the noise z.
_X, _M, _X0, _Z = "x", "m", "x0", "z"

Terms = list[tuple[str, str]]
# Per (dtype, device): a 0-d zero (c·t written as torch.add(zero, t, alpha=c) passes c as a scalar
# argument instead of wrapping it in a tensor) and torch.addr's one-element vector.
_CONSTANTS: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a step computes in for a sample of ``dtype``: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _terms(prediction_type: str, clipped: bool, use_clipped: bool, noisy: bool) -> tuple[Terms, Terms]:
    """(x̂0 terms, x_s terms) as (weight name, tensor) pairs, structural zeros left out."""
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
    return [t for t in x0 if t[0] not in zeros], [t for t in prev if t[0] not in zeros]


def _flat(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    """1-D views of tensors that share one dense memory layout (any dimension order), else None."""
    if all(t.is_contiguous() for t in tensors):
        return [t.view(-1) for t in tensors]
    first = tensors[0]
    order = sorted(range(first.dim()), key=lambda d: (-first.stride(d), -first.size(d)))
    permuted = [t.permute(order) for t in tensors]
    if all(p.is_contiguous() for p in permuted):
        return [p.view(-1) for p in permuted]
    return None


def _constants(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    key = (like.dtype, like.device)
    value = _CONSTANTS.get(key)
    if value is None:
        zero = torch.zeros((), dtype=like.dtype, device=like.device)
        value = (zero, torch.ones(1, dtype=like.dtype, device=like.device))
        _CONSTANTS[key] = value
    return value


def _combine_host(terms: Sequence[tuple[float, torch.Tensor]], out: torch.Tensor | None = None) -> torch.Tensor:
    """Σ c·t over 1-D tensors of one dtype with float weights, as a new tensor or into ``out``."""
    (c0, t0), rest = terms[0], list(terms[1:])
    zero, one = _constants(t0)
    if rest and t0.numel() >= FUSED_MIN_NUMEL:
        (c1, t1), rest = rest[0], rest[1:]
        if out is None:
            out = torch.empty_like(t0)
        torch.addr(t0.view(-1, 1), t1, one, beta=c0, alpha=c1, out=out.view(-1, 1))
    else:
        out = torch.add(zero, t0, alpha=c0, out=out)
    for c, t in rest:
        out.add_(t, alpha=c)
    return out


def _column(weight: torch.Tensor, ndim: int) -> torch.Tensor:
    """A weight [B] or [] shaped [B or 1, 1, ..., 1] to broadcast over (and promote) a [B, ...] tensor."""
    return weight.reshape(weight.shape + (1,) * (ndim - weight.dim()) if weight.dim() else (1,) * ndim)


def _combine_tensor(
    terms: Sequence[tuple[torch.Tensor, torch.Tensor]], out_dtype: torch.dtype | None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Σ c·t with broadcastable tensor weights in their dtype, returned in ``out_dtype`` or written into ``out``."""
    (c0, t0), *middle = terms
    if out is not None and out.dtype != torch.promote_types(t0.dtype, c0.dtype):
        return out.copy_(_combine_tensor(terms, None))
    if out is not None or not middle:
        partial = torch.mul(t0, c0, out=out)
        for c, t in middle:
            partial.addcmul_(t, c)
        return partial if out is not None or out_dtype in (None, partial.dtype) else partial.to(out_dtype)
    *middle, (c_last, t_last) = middle
    partial = torch.mul(t0, c0)
    for c, t in middle:
        partial.addcmul_(t, c)
    if out_dtype in (None, partial.dtype):
        return partial.addcmul_(t_last, c_last)
    result = torch.empty(torch.broadcast_shapes(partial.shape, t_last.shape), dtype=out_dtype, device=partial.device)
    return torch.addcmul(partial, t_last, c_last, out=result)


def _same_memory(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    """Whether ``a`` is ``b`` or a view of exactly the same elements."""
    return a is not None and (
        a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride())
    )


def _reads_destination_first(terms: Terms, sources: dict[str, torch.Tensor | None], out: torch.Tensor | None) -> Terms:
    """The terms with those that read ``out`` first, so that each is read before it is overwritten."""
    return sorted(terms, key=lambda term: not _same_memory(sources[term[1]], out)) if out is not None else terms


# The weights a step may use, in StepCoefficients' order (the levels that follow them are not weights).
WEIGHTS: tuple[str, ...] = StepCoefficients._fields[:10]


def takes_host_weights(model_output: torch.Tensor, sample: torch.Tensor) -> bool:
    """Whether :func:`fused_step` applies host weights to these inputs directly: one float dtype (half only
    on the CPU, where it is converted once) and one dense memory layout. Otherwise host weights become a
    tensor row, which on an accelerator costs a host-to-device copy."""
    if model_output.dtype != sample.dtype or (sample.dtype not in _HOST_DTYPES and sample.device.type != "cpu"):
        return False
    return _flat([sample, model_output]) is not None


def _host_step(
    weights: StepCoefficients,
    sources: dict[str, torch.Tensor | None],
    terms: tuple[Terms, Terms],
    clip: X0Clip,
    out: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Host weights over flat views of inputs that :func:`takes_host_weights` accepted."""
    x, m, z = sources[_X], sources[_M], sources.get(_Z)
    assert x is not None and m is not None  # noqa: S101 (internal invariant)
    dtype = compute_dtype(x.dtype)
    x_c, m_c = x.to(dtype), m.to(dtype)  # half: converted once, on the CPU
    inputs: dict[str, torch.Tensor] = {_X: x_c, _M: m_c}
    if z is not None:  # noise in the sample's layout (it is usually drawn contiguous)
        inputs[_Z] = z.to(dtype) if _flat([x_c, z]) is not None else torch.empty_like(x_c).copy_(z)
    x0 = torch.empty_like(x_c)
    direct = out is not None and out.dtype == dtype and _flat([x_c, out]) is not None
    prev = out if direct else torch.empty_like(x_c)
    assert prev is not None  # noqa: S101 (internal invariant)
    names = [*inputs, _X0, "prev"]
    views = dict(zip(names, _flat([*inputs.values(), x0, prev]) or [], strict=True))
    x0_terms, prev_terms = terms
    _combine_host([(float(getattr(weights, j)), views[s]) for j, s in x0_terms], out=views[_X0])
    clip.apply_(x0)
    ordered = _reads_destination_first(prev_terms, {**inputs, _X0: x0}, prev if direct else None)
    _combine_host([(float(getattr(weights, j)), views[s]) for j, s in ordered], out=views["prev"])
    if direct:
        return prev, x0.to(x.dtype)
    prev = prev.to(x.dtype)
    return (prev if out is None else out.copy_(prev)), x0.to(x.dtype)


def _device_row(weights: StepCoefficients, like: torch.Tensor) -> StepCoefficients:
    """Host weights as 0-d tensors of the compute dtype on ``like``'s device (one copy, through pinned
    memory and without blocking on CUDA)."""
    row = torch.tensor([float(getattr(weights, name)) for name in WEIGHTS], dtype=compute_dtype(like.dtype))
    if like.device.type == "cuda" and not _compiling():
        row = row.pin_memory().to(like.device, non_blocking=True)
    else:
        row = row.to(like.device)
    return weights._replace(**dict(zip(WEIGHTS, row.unbind(), strict=True)))


def _tensor_step(
    weights: StepCoefficients,
    sources: dict[str, torch.Tensor | None],
    terms: tuple[Terms, Terms],
    clip: X0Clip,
    out: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor weights (any layout): a multiply and an in-place addcmul_ per further term."""
    x = sources[_X]
    assert x is not None  # noqa: S101 (internal invariant)
    ndim, out_dtype = x.dim(), x.dtype
    columns = {name: _column(getattr(weights, name), ndim) for name in WEIGHTS}
    x0_terms, prev_terms = terms
    # Bounding x̂0 needs it in the compute dtype; otherwise it is written in the output dtype.
    x0 = _combine_tensor([(columns[j], sources[s]) for j, s in x0_terms], None if clip.active else out_dtype)  # type: ignore[misc]
    clip.apply_(x0)
    sources = {**sources, _X0: x0}
    ordered = _reads_destination_first(prev_terms, sources, out)
    prev = _combine_tensor([(columns[j], sources[s]) for j, s in ordered], out_dtype, out)  # type: ignore[misc]
    return prev, x0.to(out_dtype)


def fused_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    weights: StepCoefficients,
    prediction_type: str,
    clip: X0Clip,
    use_clipped_model_output: bool = False,
    noise: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_s, x̂0) of one step from precomputed weights, in the sample's dtype.

    Args:
        model_output, sample: m and x_t, [B, ...], floating, the same shape, any layout.
        weights: Host floats, or tensors [B] / [] already in the compute dtype on the sample's device.
        prediction_type: What m is; selects the structurally zero terms.
        clip: How to bound x̂0.
        use_clipped_model_output: Re-derive ε̂ from the bounded x̂0.
        noise: z of the sample's shape, or None for a deterministic step.
        out: Where to write x_s (the sample's shape and dtype; it may be any of the inputs), or None.

    Returns:
        (x_s, x̂0): x_s is ``out`` when given; x̂0 a new tensor.
    """
    terms = _terms(prediction_type, clip.active, use_clipped_model_output, noise is not None)
    sources: dict[str, torch.Tensor | None] = {_X: sample, _M: model_output}
    if noise is not None:
        sources[_Z] = noise
    if not isinstance(weights.prev_x, torch.Tensor):
        if takes_host_weights(model_output, sample):
            return _host_step(weights, sources, terms, clip, out)
        weights = _device_row(weights, sample)
    return _tensor_step(weights, sources, terms, clip, out)
