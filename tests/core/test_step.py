"""apply_step as every scheduler reaches it: autograd through every step and entry point, any memory layout,
empty batches, and half precision on an accelerator (the meta device takes its branches)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ddim_sched
from ddim_sched import DDIMInverseScheduler, DDIMScheduler
from tests.oracle import CLIPS, HYPOTHESIS, expected_step, sample_inputs
from tests.tolerances import EXACT_RTOL, rel_l2

# ----------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("clip", list(CLIPS))
@pytest.mark.parametrize("timestep", ["int", "per-sample"])
def test_step_gradients_equal_finite_differences(prediction_type, clip, timestep):
    scheduler = DDIMScheduler(prediction_type=prediction_type, **CLIPS[clip])
    scheduler.set_timesteps(10)
    x, m, z = sample_inputs((2, 3, 4, 4), seed=1)
    t = 501 if timestep == "int" else torch.tensor([801, 101])
    eta = torch.tensor([0.3, 0.9], dtype=torch.float64, requires_grad=True)
    inputs = tuple(v.clone().requires_grad_() for v in (m, x, z))

    def step(m, x, z, eta):
        out = scheduler.step(m, t, x, eta=eta, variance_noise=z, use_clipped_model_output=clip != "none")
        return out.prev_sample, out.pred_original_sample

    assert torch.autograd.gradcheck(step, (*inputs, eta))


def test_large_inputs_that_require_grad_take_the_differentiable_path():
    # ≥ 2^15 elements with an int timestep took the fused out= path and failed under autograd.
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(20)
    x, m, _ = sample_inputs((2, 4, 64, 64), torch.float32)
    m = m.requires_grad_()
    prev = scheduler.step(m, 501, x).prev_sample
    prev.sum().backward()
    # x_prev is linear in m with the coefficient the fast path uses: the gradient is that coefficient.
    row = scheduler.coefficients(501)
    assert torch.allclose(m.grad, torch.full_like(m, row.prev_m), rtol=1e-6)
    with torch.no_grad():
        fast = scheduler.step(m, 501, x).prev_sample
    assert rel_l2(prev.detach(), fast) <= EXACT_RTOL[torch.float32]


@pytest.mark.parametrize("method", ["add_noise", "get_velocity"])
def test_forward_process_gradients(method):
    scheduler = DDIMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction")
    x, e, _ = sample_inputs((3, 2, 4))
    t = torch.tensor([0, 500, 999])
    f = getattr(scheduler, method)
    assert torch.autograd.gradcheck(lambda a, b: f(a, b, t), (x.requires_grad_(), e.requires_grad_()))


def test_invert_gradients():
    scheduler = DDIMScheduler(clip_sample=False, prediction_type="v_prediction")
    scheduler.set_timesteps(4)
    weight = torch.tensor(0.7, dtype=torch.float64)

    def model_fn(x, t):
        return torch.tanh(weight * x) * (t / 1000)

    x0, _, _ = sample_inputs((2, 3))
    assert torch.autograd.gradcheck(
        lambda v: ddim_sched.invert(model_fn, v, scheduler, fixed_point_iterations=2), (x0.requires_grad_(),)
    )


def test_inverse_scheduler_step_is_differentiable():
    scheduler = DDIMInverseScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    x, m, _ = sample_inputs((2, 3))
    assert torch.autograd.gradcheck(
        lambda a, b: scheduler.step(a, 401, b).prev_sample, (m.requires_grad_(), x.requires_grad_())
    )


@pytest.mark.parametrize("cls", [DDIMScheduler, ddim_sched.FlowMatchDDIMScheduler])
@pytest.mark.parametrize("timestep", ["element", "per-frame", "half model output"])
def test_steps_under_inference_mode_leave_the_scheduler_usable_by_autograd(cls, timestep):
    """What a step caches while a pipeline runs under torch.inference_mode() must not be an inference
    tensor: a later step that autograd records (guidance by gradients) saves the cached coefficients."""
    scheduler = cls()
    scheduler.set_timesteps(10)
    x, m, _ = sample_inputs((1, 2, 3, 4, 4), torch.float32)
    t = (
        scheduler.timesteps[torch.tensor([1, 4, 7])].reshape(1, 1, 3, 1, 1)
        if timestep == "per-frame"
        else scheduler.timesteps[3]
    )
    inputs = (m.half(), x) if timestep == "half model output" else (m, x)

    def gradient(scheduler):
        sample = inputs[1].clone().requires_grad_()
        scheduler.step(inputs[0], t, sample).prev_sample.square().sum().backward()
        return sample.grad

    expected = gradient(scheduler)  # before any step under inference mode
    fresh = cls()
    fresh.set_timesteps(10)
    with torch.inference_mode():
        fresh.step(*inputs[:1], t, inputs[1])
        for name in ("betas", "alphas_cumprod"):
            getattr(fresh, name, None)
    torch.testing.assert_close(gradient(fresh), expected, rtol=0, atol=0)
    for name in ("betas", "alphas_cumprod"):
        if hasattr(fresh, name):
            assert not getattr(fresh, name).is_inference()


# ----------------------------------------------------------------------------- memory layouts


def _layout(tensor: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if kind == "contiguous":
        return tensor.contiguous()
    if kind == "transposed":
        return tensor.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == "permuted":
        order = list(range(tensor.dim()))[::-1]
        inverse = [order.index(d) for d in range(tensor.dim())]
        return tensor.permute(order).contiguous().permute(inverse)
    if kind == "channels_last" and tensor.dim() == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    if kind == "sliced":
        padded = torch.zeros(tensor.shape[:-1] + (tensor.shape[-1] * 2,), dtype=tensor.dtype)
        padded[..., ::2] = tensor
        return padded[..., ::2]
    if kind == "expanded":  # stride 0 along the batch: only for tensors whose samples are all equal
        return tensor[:1].expand_as(tensor)
    return tensor


@settings(max_examples=60, **HYPOTHESIS)
@given(
    ndim=st.integers(3, 5),
    sample_layout=st.sampled_from(["contiguous", "transposed", "permuted", "channels_last", "sliced", "expanded"]),
    output_layout=st.sampled_from(["contiguous", "transposed", "permuted", "sliced", "expanded"]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    timestep=st.sampled_from(["int", "0-d", "[B]", "numpy"]),
    eta=st.sampled_from([0.0, 0.8, "tensor"]),
    clip=st.sampled_from(list(CLIPS)),
    out=st.sampled_from([None, "new", "sample"]),
    seed=st.integers(0, 1000),
)
def test_any_layout_gives_the_contiguous_closed_form(
    ndim, sample_layout, output_layout, dtype, timestep, eta, clip, out, seed
):
    import numpy as np

    shape = (2, 3, 5, 4, 6)[:ndim]
    scheduler = DDIMScheduler(prediction_type="v_prediction", **CLIPS[clip])
    scheduler.set_timesteps(10)
    x, m, z = sample_inputs(shape, torch.float64, seed)
    if "expanded" in (sample_layout, output_layout):  # identical samples, so that stride 0 is the same values
        x, m, z = x[:1].expand_as(x).contiguous(), m[:1].expand_as(m).contiguous(), z[:1].expand_as(z).contiguous()
    t_values = [901, 501] if timestep == "[B]" else [501, 501]
    t = {"int": 501, "0-d": torch.tensor(501), "[B]": torch.tensor(t_values), "numpy": np.int32(501)}[timestep]
    eta_arg = torch.tensor([0.8, 0.3], dtype=torch.float64) if eta == "tensor" else eta
    eta_values = [0.8, 0.3] if eta == "tensor" else [eta, eta]
    x_in, m_in, z_in = (
        _layout(v.to(dtype), kind) for v, kind in ((x, sample_layout), (m, output_layout), (z, output_layout))
    )
    if out == "sample" and sample_layout == "expanded":
        out = "new"  # writing into a stride-0 tensor is refused (test_out_must_not_be_expanded)
    destination = {None: None, "new": torch.empty(shape, dtype=dtype), "sample": x_in}[out]
    expected = expected_step(
        scheduler,
        m_in.double(),
        x_in.double(),
        torch.tensor(t_values),
        torch.tensor(eta_values, dtype=torch.float64),
        clip,
        z_in.double(),
    )
    got = scheduler.step(m_in, t, x_in, eta=eta_arg, variance_noise=z_in, out=destination)
    assert got.prev_sample.dtype == got.pred_original_sample.dtype == dtype
    if destination is not None:
        assert got.prev_sample is destination
    assert rel_l2(got.pred_original_sample, expected[1]) <= 2 * EXACT_RTOL[dtype]
    assert rel_l2(got.prev_sample, expected[0]) <= 2 * EXACT_RTOL[dtype]


def test_out_must_not_be_expanded():
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    x = torch.zeros(1, 3).expand(4, 3)
    with pytest.raises(ValueError, match="out"):
        scheduler.step(torch.zeros(4, 3), 501, torch.zeros(4, 3), out=x)


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_outputs_keep_the_samples_layout(layout):
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    x, m, _ = sample_inputs((2, 4, 16, 8), torch.float32)
    x, m = _layout(x, layout), _layout(m, layout)
    for t in (501, torch.tensor([501, 901])):
        out = scheduler.step(m, t, x)
        assert out.prev_sample.stride() == x.stride() and out.pred_original_sample.stride() == x.stride()


# ----------------------------------------------------------------------------- empty batches


@pytest.mark.parametrize("shape", [(0, 4, 8, 8), (2, 0, 8, 8)])
@pytest.mark.parametrize("clip", list(CLIPS))
def test_empty_batches_give_empty_outputs(shape, clip):
    scheduler = DDIMScheduler(**CLIPS[clip])
    scheduler.set_timesteps(10)
    x = torch.empty(shape)
    for t in (501, torch.full((shape[0],), 501, dtype=torch.int64)):
        for eta in (0.0, 1.0):
            out = scheduler.step(x, t, x, eta=eta)
            assert out.prev_sample.shape == out.pred_original_sample.shape == shape
    assert scheduler.add_noise(x, x, torch.full((shape[0],), 3)).shape == shape


class _DispatchedOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records (op name, output shape, output dtype) for each op dispatched while active."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if isinstance(result, torch.Tensor):
            self.ops.append((func.__name__, tuple(result.shape), result.dtype))
        return result


# Ops that allocate or view memory without a pass over it.
_NO_PASS = (
    "empty",
    "empty_like",
    "view",
    "_unsafe_view",
    "unbind",
    "select",
    "slice",
    "reshape",
    "expand",
    "as_strided",
)


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, ddim_sched.FlowMatchDDIMScheduler])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("shape", [(1, 4, 64, 64), (4, 4, 64, 64)])  # below and above the fused size
def test_half_precision_on_an_accelerator_steps_without_conversions_or_copies(scheduler_class, dtype, eta, shape):
    """On an accelerator a half-precision step applies its weights as the schedule's cached device row: it
    makes no copy (no host-to-device transfer of weights, no float32 conversion of the inputs or outputs)
    and no more passes over the sample's memory than a float32 step on the same device, reading the half
    inputs directly (docs/performance.md has what conversions cost on a GPU). The meta device stands in for
    the accelerator: the step takes the same
    branches for any device that is not the CPU, and dispatches the same ops."""

    def dispatched(dtype):
        scheduler = scheduler_class() if scheduler_class is not DDIMScheduler else DDIMScheduler(clip_sample=False)
        scheduler.set_timesteps(10)
        x, m, z = (torch.empty(shape, dtype=dtype, device="meta") for _ in range(3))
        noise = z if eta > 0 else None
        t = scheduler.timesteps[3]

        def step():
            if scheduler_class is not DDIMScheduler:
                scheduler._step_index = None  # every call the same step: the flow scheduler counts its steps
            return scheduler.step(m, t, x, eta=eta, variance_noise=noise)

        step()  # builds and caches the device row
        with _DispatchedOps() as ops:
            out = step()
        assert out.prev_sample.dtype == dtype and out.prev_sample.shape == shape
        assert out.pred_original_sample.dtype == dtype and out.pred_original_sample.shape == shape
        numel = math.prod(shape)
        passes = [op for op in ops.ops if math.prod(op[1]) >= numel and op[0].split(".")[0] not in _NO_PASS]
        return ops.ops, passes

    ops, passes = dispatched(dtype)
    assert [op for op in ops if "copy" in op[0] or op[0].startswith("to")] == []
    assert 0 < len(passes) <= len(dispatched(torch.float32)[1]), passes
