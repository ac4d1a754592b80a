"""The private fused engine behind :func:`ddim_sched.core.step.apply_step`: x̂0 and x_s from
:class:`~ddim_sched.core.update.StepCoefficients` in the fewest passes over memory.

Entry points: :func:`fused_step` (x_s and x̂0) and :func:`fused_prev_sample` (x_s alone, for callers that do
not return x̂0). It writes into fresh buffers, or into ``out=`` (which may alias any input), and records no
gradients: ``apply_step`` calls it only when autograd is not recording. The tests hold it to
:func:`ddim_sched.core.update.ddim_update`, the step as the paper writes it.

Contract, by the kind of weights:

* host weights (Python floats) for float32/float64 inputs of one dtype (half precision on the CPU is
  converted once to float32): any memory layout; each output a combination of whole tensors.
* tensor weights (per sample, per element, or a [1] row on the device): any layout (strided, expanded,
  sliced), broadcast from the sample's leading dimensions, applied in the compute dtype; the last operation
  writes the output dtype directly. A :class:`DeviceRow` (a schedule's cached [1] row) may give both outputs
  as the two halves of one [2, ...] allocation.

docs/performance.md says how each path keeps its passes over memory low.

Dtype rule: arithmetic in float64 for float64 samples and in float32 otherwise; outputs in the sample's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch

from .runtime import compute_dtype, is_compiling
from .thresholding import NO_CLIP, X0Clip
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
# The tensors a term multiplies, as indices into the step's sources: the sample x_t, the model output m,
# the noise z and the bounded x̂0.
_X, _M, _Z, _X0 = range(4)
# A term: (index of its weight in StepCoefficients, index of its tensor).
Terms = tuple[tuple[int, int], ...]
# Per (dtype, device): a 0-d zero (c·t written as torch.add(zero, t, alpha=c) passes c as a scalar
# argument instead of wrapping it in a tensor) and torch.addr's one-element vector.
_CONSTANTS: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
# Memos of _terms and _pairing: plain dicts filled on a miss (dynamo warns on functools.cache-wrapped calls).
_TERMS: dict[tuple[str, bool, bool, bool], tuple[Terms, Terms]] = {}
_PAIRINGS: dict[tuple[Terms, Terms], tuple[tuple[tuple[int, int, int], ...], Terms] | None] = {}


def _terms(prediction_type: str, clipped: bool, use_clipped: bool, noisy: bool) -> tuple[Terms, Terms]:
    """(x̂0 terms, x_s terms), structural zeros left out."""
    key = (prediction_type, clipped, use_clipped, noisy)
    if key in _TERMS:
        return _TERMS[key]
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
    index = StepCoefficients._fields.index
    result = tuple(tuple((index(name), source) for name, source in terms if name not in zeros) for terms in (x0, prev))
    _TERMS[key] = result  # type: ignore[assignment]
    return _TERMS[key]


def _constants(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    key = (like.dtype, like.device)
    value = _CONSTANTS.get(key)
    if value is None:
        zero = torch.zeros((), dtype=like.dtype, device=like.device)
        value = (zero, torch.ones(1, dtype=like.dtype, device=like.device))
        _CONSTANTS[key] = value
    return value


def _combine_host(
    weights: Sequence[float],
    sources: list[Any],
    terms: Terms,
    constants: tuple[torch.Tensor, torch.Tensor],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ weights[j]·sources[s] over the terms (j, s), with float weights over tensors of one dtype and shape
    (any layout), as a new tensor (the first term's layout) or into ``out``. Large contiguous operands take
    one fused ``β·a + α·b`` pass. ``constants``: :func:`_constants` of the tensors."""
    (j0, s0), rest = terms[0], terms[1:]
    t0, c0 = sources[s0], weights[j0]
    zero, one = constants
    if (
        rest
        and t0.numel() >= FUSED_MIN_NUMEL
        and t0.is_contiguous()
        and sources[rest[0][1]].is_contiguous()
        and (out is None or out.is_contiguous())
    ):
        (j1, s1), rest = rest[0], rest[1:]
        if out is None:
            out = torch.empty_like(t0)
        torch.addr(t0.view(-1, 1), sources[s1].view(-1), one, beta=c0, alpha=weights[j1], out=out.view(-1, 1))
    else:
        out = torch.add(zero, t0, alpha=c0, out=out)
    for j, s in rest:
        out.add_(sources[s], alpha=weights[j])
    return out


def as_column(weight: torch.Tensor, ndim: int) -> torch.Tensor:
    """A weight of shape [], [B] or a per-element shape, padded with trailing ones to ``ndim`` dimensions,
    to broadcast over (and promote) a [B, ...] tensor; a one-element [1] weight already does."""
    if weight.dim() == ndim or weight.shape == (1,):  # [1] broadcasts and promotes as it is
        return weight
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
    if partial.shape == t_last.shape:  # the usual case, without torch.broadcast_shapes (slow Python)
        result = torch.empty_like(partial, dtype=out_dtype)
    else:
        shape = torch.broadcast_shapes(partial.shape, t_last.shape)
        result = torch.empty(shape, dtype=out_dtype, device=partial.device)
    return torch.addcmul(partial, t_last, c_last, out=result)


def _same_memory(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    """Whether ``a`` is ``b`` or a view of exactly the same elements."""
    return a is not None and (
        a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride())
    )


def _reads_destination_first(terms: Terms, sources: list[Any], out: torch.Tensor | None) -> Terms:
    """The terms with those that read ``out`` first, so that each is read before it is overwritten."""
    if out is None:
        return terms
    return tuple(sorted(terms, key=lambda term: not _same_memory(sources[term[1]], out)))


# The weights a step may use, in StepCoefficients' order (the levels that follow them are not weights).
WEIGHTS: tuple[str, ...] = StepCoefficients._fields[:10]


def takes_host_weights(model_output: torch.Tensor, sample: torch.Tensor) -> bool:
    """Whether :func:`fused_step` applies host weights to these inputs directly: one float dtype, float32 or
    float64 (half precision only on the CPU, where it is converted once). Otherwise host weights become a
    tensor row, which on an accelerator costs a host-to-device copy."""
    return model_output.dtype == sample.dtype and (sample.dtype in _HOST_DTYPES or sample.device.type == "cpu")


def _host_step(
    weights: StepCoefficients, sources: list[Any], terms: tuple[Terms, Terms], clip: X0Clip, out: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Host weights: each output one or two passes (any layout), x̂0 bounded in place (None without x̂0 terms)."""
    out_dtype = sources[_X].dtype
    if out_dtype not in _HOST_DTYPES:  # half precision on the CPU: convert each input once
        sources = [None if v is None else v.to(torch.float32) for v in sources]
    direct = out if out is not None and out.dtype == sources[_X].dtype else None
    x0_terms, prev_terms = terms
    constants = _constants(sources[_X])
    host: Sequence[float] = weights  # type: ignore[assignment]  # host weights are floats
    x0 = _combine_host(host, sources, x0_terms, constants) if x0_terms else None
    if x0 is not None and clip.active:
        clip.apply_(x0)
    sources.append(x0)
    if direct is not None:
        prev_terms = _reads_destination_first(prev_terms, sources, direct)
    prev = _combine_host(host, sources, prev_terms, constants, direct)
    if prev.dtype != out_dtype:
        prev, x0 = prev.to(out_dtype), None if x0 is None else x0.to(out_dtype)
    if out is not None and prev is not out:
        prev = out.copy_(prev)
    return prev, x0


class DeviceRow(StepCoefficients):
    """A step's coefficients as one-element tensors [1] on a device (:func:`device_row`), which also serve each
    tensor's x_s and x̂0 weights as a stacked pair, so that both outputs come from one multiply and one
    fused multiply-add per further term (:func:`_paired_step`)."""

    def pair(self, prev: int, x0: int, ndim: int) -> torch.Tensor:
        """[2, 1, ..., 1] (``ndim`` ones): the weights at fields ``prev`` and ``x0``, stacked once and kept."""
        key = (prev, x0, ndim)
        pairs = self.__dict__.setdefault("_pairs", {})
        pair = pairs.get(key)
        if pair is None:
            with torch.inference_mode(False):
                pair = torch.cat([cast(torch.Tensor, self[prev]), cast(torch.Tensor, self[x0])])
                pair = pair.reshape((2,) + (1,) * ndim)
            pairs[key] = pair
        return pair


def _columns(values: Sequence[Any], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Host floats as one-element tensors [1] of ``dtype`` on ``device``, in one copy (through pinned memory
    and without blocking on CUDA). Shaped [1] rather than [], they broadcast over a sample and promote a
    half-precision one to the compute dtype with no reshape per step."""
    row = torch.tensor([float(w) for w in values], dtype=dtype)
    if device.type == "cuda" and not is_compiling():
        row = row.pin_memory().to(device, non_blocking=True)
    return list(row.to(device).reshape(-1, 1).unbind())


def device_row(row: StepCoefficients, dtype: torch.dtype, device: torch.device) -> DeviceRow:
    """A host row of coefficients as one-element tensors [1] of ``dtype`` on ``device`` (one copy)."""
    return DeviceRow(*_columns(row, dtype, device))


def _device_row(weights: StepCoefficients, like: torch.Tensor) -> DeviceRow:
    """Host weights as tensors of the compute dtype on ``like``'s device (the levels that follow them stay
    host floats)."""
    columns = _columns(weights[: len(WEIGHTS)], compute_dtype(like.dtype), like.device)
    return DeviceRow(*columns, *weights[len(WEIGHTS) :])


def _pairing(terms: tuple[Terms, Terms]) -> tuple[tuple[tuple[int, int, int], ...], Terms] | None:
    """Where x̂0 and x_s combine the same tensors in the same order (x_s may add the noise): per tensor, its
    (x_s weight, x̂0 weight, tensor), then x_s's further terms. None otherwise."""
    if terms in _PAIRINGS:
        return _PAIRINGS[terms]
    x0_terms, prev_terms = terms
    shared, extra = prev_terms[: len(x0_terms)], prev_terms[len(x0_terms) :]
    if not x0_terms or [s for _, s in x0_terms] != [s for _, s in shared] or any(s != _Z for _, s in extra):
        plan = None
    else:
        plan = tuple((j, k, s) for (j, s), (k, _) in zip(shared, x0_terms, strict=True)), extra
    _PAIRINGS[terms] = plan
    return plan


def _paired_step(
    weights: DeviceRow, sources: list[Any], terms: tuple[Terms, Terms]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(x_s, x̂0) of an unclipped step whose outputs combine the same tensors (:func:`_pairing`), as the two
    halves of one [2, ...] result: a multiply and a fused multiply-add per further term in the compute dtype,
    the last one writing the output dtype; x_s is the first half. None for
    other terms."""
    plan = _pairing(terms)
    if plan is None:
        return None
    (j, k, s), *rest = plan[0]
    ndim, out_dtype = sources[_X].dim(), sources[_X].dtype
    partial = torch.mul(sources[s], weights.pair(j, k, ndim))
    for j, s in plan[1]:  # the noise, into x_s alone
        partial[0].addcmul_(sources[s], as_column(cast(torch.Tensor, weights[j]), ndim))
    if rest:
        *middle, (j, k, s) = rest
        for jm, km, sm in middle:
            partial.addcmul_(sources[sm], weights.pair(jm, km, ndim))
        last = weights.pair(j, k, ndim)
        if partial.dtype == out_dtype:
            partial.addcmul_(sources[s], last)
        else:
            partial = torch.addcmul(partial, sources[s], last, out=torch.empty_like(partial, dtype=out_dtype))
    elif partial.dtype != out_dtype:
        partial = partial.to(out_dtype)
    prev, x0 = partial.unbind(0)
    return prev, x0


def _tensor_step(
    weights: StepCoefficients, sources: list[Any], terms: tuple[Terms, Terms], clip: X0Clip, out: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tensor weights (any layout): a multiply and an in-place addcmul_ per further term (no x̂0 without its terms)."""
    if out is None and not clip.active and isinstance(weights, DeviceRow) and not is_compiling():
        paired = _paired_step(weights, sources, terms)
        if paired is not None:
            return paired
    ndim, out_dtype = sources[_X].dim(), sources[_X].dtype

    def weighted(terms: Terms) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(as_column(cast(torch.Tensor, weights[j]), ndim), sources[s]) for j, s in terms]

    x0_terms, prev_terms = terms
    # Bounding x̂0 needs it in the compute dtype; otherwise it is written in the output dtype.
    x0 = None
    if x0_terms:
        x0 = _combine_tensor(weighted(x0_terms), None if clip.active else out_dtype)
        clip.apply_(x0)
    sources = [*sources, x0]
    prev = _combine_tensor(weighted(_reads_destination_first(prev_terms, sources, out)), out_dtype, out)
    return prev, x0 if x0 is None or x0.dtype == out_dtype else x0.to(out_dtype)


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
    prev, x0 = _dispatch(model_output, sample, weights, terms, clip, noise, out)
    return prev, x0  # type: ignore[return-value]  # x̂0 terms are never empty here


def fused_prev_sample(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    weights: StepCoefficients,
    prediction_type: str,
    noise: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x_s alone of an unclipped step, as :func:`fused_step` computes it, without x̂0: one pass over memory
    fewer, for callers that do not return x̂0."""
    _, prev_terms = _terms(prediction_type, False, False, noise is not None)
    return _dispatch(model_output, sample, weights, ((), prev_terms), NO_CLIP, noise, out)[0]


def _dispatch(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    weights: StepCoefficients,
    terms: tuple[Terms, Terms],
    clip: X0Clip,
    noise: torch.Tensor | None,
    out: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    sources = [sample, model_output, noise]
    if not isinstance(weights.prev_x, torch.Tensor):
        if takes_host_weights(model_output, sample):
            return _host_step(weights, sources, terms, clip, out)
        weights = _device_row(weights, sample)
    return _tensor_step(weights, sources, terms, clip, out)
