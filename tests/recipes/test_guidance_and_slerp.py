"""rescale_noise_cfg (Lin et al. 2023, docs/reference.md (guidance rescale)) and slerp (DDIM paper eq. 67)."""

import math

import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg as diffusers_rescale

import ddim_sched
from ddim_sched import rescale_noise_cfg, slerp
from tests.tolerances import EXACT_RTOL, PARITY_RTOL, rel_l2


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------ rescale_noise_cfg


def guided(shape, dtype, w=7.5):
    negative, positive = randn(*shape, seed=1, dtype=dtype), randn(*shape, seed=2, dtype=dtype) * 0.8 + 0.1
    return negative + w * (positive - negative), positive


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (3, 16), (1, 2, 3, 4, 5)])
@pytest.mark.parametrize("phi", [0.0, 0.3, 0.7, 1.0])
def test_rescale_equals_diffusers(dtype, shape, phi):
    cfg, text = guided(shape, dtype)
    ours = rescale_noise_cfg(cfg, text, guidance_rescale=phi)
    assert ours.dtype == dtype and ours.shape == cfg.shape
    # diffusers computes in the inputs' dtype; compare with its float64 result (our statistics run
    # in float32 for half inputs), within the half-precision parity bound.
    expected = diffusers_rescale(cfg.double(), text.double(), guidance_rescale=phi)
    assert rel_l2(ours, expected) <= PARITY_RTOL[dtype]
    assert rel_l2(ours, diffusers_rescale(cfg, text, guidance_rescale=phi)) <= PARITY_RTOL[dtype]


def test_full_rescale_restores_the_conditional_std():
    # φ = 1 (eq. 15): every sample of the result has exactly std(x_pos).
    cfg, text = guided((3, 4, 8, 8), torch.float64)
    out = rescale_noise_cfg(cfg, text, guidance_rescale=1.0)
    assert rel_l2(out.flatten(1).std(dim=1), text.flatten(1).std(dim=1)) < EXACT_RTOL[torch.float64]
    assert (
        rel_l2(out / out.flatten(1).std(dim=1).view(3, 1, 1, 1), cfg / cfg.flatten(1).std(dim=1).view(3, 1, 1, 1))
        < 1e-12
    )


def test_zero_rescale_is_identity_and_constant_samples_stay_finite():
    cfg, text = guided((2, 8), torch.float32)
    assert torch.equal(rescale_noise_cfg(cfg, text), cfg)
    cfg[0] = 3.0  # std 0: diffusers divides by zero here
    out = rescale_noise_cfg(cfg, text, guidance_rescale=0.7)
    assert torch.isfinite(out).all() and torch.equal(out[0], cfg[0])


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((torch.zeros(2, 3), torch.zeros(2, 4), 0.5), ValueError, "same shape"),
        ((torch.zeros(3), torch.zeros(3), 0.5), ValueError, "non-batch"),
        ((torch.zeros(2, 3), torch.zeros(2, 3), 1.5), ValueError, "guidance_rescale"),
        ((torch.zeros(2, 3), torch.zeros(2, 3), float("nan")), ValueError, "guidance_rescale"),
        ((torch.zeros(2, 3), torch.zeros(2, 3), "0.7"), TypeError, "guidance_rescale"),
        ((torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3), 0.5), TypeError, "noise_cfg"),
        ((torch.zeros(2, 3), [[0.0] * 3] * 2, 0.5), TypeError, "noise_pred_text"),
    ],
)
def test_rescale_rejects(args, error, match):
    with pytest.raises(error, match=match):
        rescale_noise_cfg(*args)


# ------------------------------------------------------------------ slerp


def paper_slerp(z0, z1, alpha):
    """Eq. 67 written out directly, float64, one pair of vectors."""
    theta = math.acos(float(torch.dot(z0, z1) / (z0.norm() * z1.norm())))
    return math.sin((1 - alpha) * theta) / math.sin(theta) * z0 + math.sin(alpha * theta) / math.sin(theta) * z1


def test_endpoints():
    z0, z1 = randn(3, 4, 8, 8, seed=1), randn(3, 4, 8, 8, seed=2)
    assert rel_l2(slerp(z0, z1, 0.0), z0) < EXACT_RTOL[torch.float64]
    assert rel_l2(slerp(z0, z1, 1.0), z1) < EXACT_RTOL[torch.float64]


def test_matches_the_paper_formula():
    z0, z1 = randn(64, seed=3), randn(64, seed=4)
    for alpha in (0.1, 0.5, 0.77):
        assert rel_l2(slerp(z0, z1, alpha), paper_slerp(z0, z1, alpha)) < 1e-12


def test_orthogonal_closed_form():
    e1, e2 = torch.eye(5, dtype=torch.float64)[0], torch.eye(5, dtype=torch.float64)[1]
    for alpha in (0.0, 0.25, 0.5, 0.9, 1.0):
        expected = math.cos(alpha * math.pi / 2) * e1 + math.sin(alpha * math.pi / 2) * e2
        assert rel_l2(slerp(e1, e2, alpha), expected) < 1e-15


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_preserves_the_norm_of_equal_norm_inputs(dtype):
    z0 = randn(2, 4, 16, 16, seed=5, dtype=dtype)
    z1 = randn(2, 4, 16, 16, seed=6, dtype=dtype)
    z1 = z1 * (z0.flatten(1).norm(dim=1) / z1.flatten(1).norm(dim=1)).view(2, 1, 1, 1)
    for alpha in torch.linspace(0, 1, 9).tolist():
        norms = slerp(z0, z1, alpha).flatten(1).norm(dim=1)
        assert rel_l2(norms, z0.flatten(1).norm(dim=1)) < EXACT_RTOL[dtype]
    # lerp, for contrast, shrinks the midpoint of nearly orthogonal Gaussian latents by about √2.
    assert (0.5 * (z0 + z1)).flatten(1).norm(dim=1).max() < 0.8 * z0.flatten(1).norm(dim=1).min()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("partner", ["same", "double", "nearly", "opposite"])
def test_parallel_and_opposite_inputs_give_lerp_not_nan(dtype, partner):
    # sin θ ≈ 0: eq. 67 is 0/0 (parallel) or has no unique great circle (opposite); both fall back to lerp.
    z = randn(2, 32, seed=7, dtype=dtype)
    z1 = {
        "same": z.clone(),
        "double": 2 * z,
        "nearly": (z.double() + 1e-9 * randn(2, 32, seed=8)).to(dtype),
        "opposite": -z,
    }[partner]
    for alpha in (0.0, 0.3, 1.0):
        out = slerp(z, z1, alpha)
        assert out.dtype == dtype and torch.isfinite(out).all()
        lerp = (1 - alpha) * z.double() + alpha * z1.double()
        assert rel_l2(out, lerp) < EXACT_RTOL[dtype]


def test_nearly_parallel_inputs_stay_accurate():
    # θ ≈ 1e-6: arccos of a rounded cosine would lose half the digits; the result must still be on
    # the arc, within O(θ²) of lerp and with the norm of equal-norm inputs.
    z0 = randn(128, seed=9)
    z1 = z0 + 1e-6 * randn(128, seed=10)
    z1 = z1 * z0.norm() / z1.norm()
    out = slerp(z0, z1, 0.5)
    assert abs(float(out.norm() / z0.norm()) - 1) < 1e-14
    assert rel_l2(out, 0.5 * (z0 + z1)) < 1e-11


def test_batched_and_alpha_tensors():
    z0, z1 = randn(3, 2, 5, seed=11), randn(3, 2, 5, seed=12)
    alphas = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    per_sample = slerp(z0, z1, alphas)
    assert per_sample.shape == (3, 2, 5)
    for i in range(3):
        assert (
            rel_l2(per_sample[i], slerp(z0[i : i + 1], z1[i : i + 1], float(alphas[i]))[0]) < EXACT_RTOL[torch.float64]
        )
        flat = slerp(z0[i].flatten(), z1[i].flatten(), float(alphas[i]))
        assert rel_l2(per_sample[i].flatten(), flat) < EXACT_RTOL[torch.float64]
    path = slerp(z0[:1], z1[:1], torch.linspace(0, 1, 7, dtype=torch.float64))  # K points along one path
    assert path.shape == (7, 2, 5)
    assert rel_l2(path[3], slerp(z0[:1], z1[:1], 0.5)[0]) < EXACT_RTOL[torch.float64]
    vector_path = slerp(z0[0].flatten(), z1[0].flatten(), torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert vector_path.shape == (2, 10) and rel_l2(vector_path[1], z1[0].flatten()) < EXACT_RTOL[torch.float64]


def test_half_precision_returns_half():
    z0, z1 = randn(2, 64, seed=13), randn(2, 64, seed=14)
    out = slerp(z0.half(), z1.half(), 0.4)
    assert out.dtype == torch.float16
    assert rel_l2(out, slerp(z0.half().double(), z1.half().double(), 0.4)) < PARITY_RTOL[torch.float16]


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((torch.zeros(2, 3), torch.zeros(2, 4), 0.5), ValueError, "non-batch shape"),
        ((torch.zeros(3), torch.zeros(1, 3), 0.5), ValueError, "non-batch shape"),
        ((torch.tensor(1.0), torch.tensor(1.0), 0.5), ValueError, "0-d"),
        ((torch.ones(3), torch.ones(3), float("inf")), ValueError, "alpha"),
        ((torch.ones(3), torch.ones(3), True), TypeError, "alpha"),
        ((torch.ones(3), torch.ones(3), torch.tensor([1])), TypeError, "alpha"),
        ((torch.ones(3), torch.ones(3), torch.ones(2, 2)), ValueError, "alpha"),
        ((torch.ones(3, dtype=torch.int32), torch.ones(3), 0.5), TypeError, "z0"),
        ((torch.ones(3), None, 0.5), TypeError, "z1"),
    ],
)
def test_slerp_rejects(args, error, match):
    with pytest.raises(error, match=match):
        slerp(*args)


def test_exported():
    assert ddim_sched.slerp is slerp and ddim_sched.rescale_noise_cfg is rescale_noise_cfg
    assert {"slerp", "rescale_noise_cfg"} <= set(ddim_sched.__all__)
