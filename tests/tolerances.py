"""The one table of numeric tolerances used across the test suite (docs/numerics.md mirrors it).

Relative L2 error ||a - b|| / ||b|| between ddim_sched and a reference, per dtype of the sample.
diffusers computes its tables in float32 and, for half inputs, its arithmetic in half precision;
ddim_sched computes tables in float64 and arithmetic in float32 for half inputs, hence the looser
half-precision bounds.

Two references are used by the differential tests (tests/diffusers_oracle.py):

* diffusers as shipped (float32 tables). Where diffusers' own float32 rounding is larger than the
  bound, the parity tests allow exactly that much more: ``rel_l2(ours, diffusers) <=
  PARITY_RTOL + rel_l2(diffusers, exact)``. "Identical where diffusers is right, correct where it
  is wrong."
* the "exact" reference: diffusers' own step/add_noise code run on float64 inputs with float64
  tables. ddim_sched must be within ORACLE_RTOL of it, always.
"""

import torch

# ddim_sched vs diffusers.DDIMScheduler on the same inputs, same dtype.
PARITY_RTOL = {
    torch.float64: 1e-4,
    torch.float32: 1e-4,
    torch.float16: 5e-3,
    torch.bfloat16: 4e-2,
}

# ddim_sched vs the float64 reference on the same (upcast) inputs. For half dtypes this is the
# rounding of the result to the sample's dtype: 2**-11 (float16) and 2**-8 (bfloat16) per element,
# with a factor ~2 of headroom.
ORACLE_RTOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 8e-3,
}

# A whole 50-step sampling loop vs the float64 reference: per-step rounding accumulates, amplified by
# the loop's sensitivity (1/√ᾱ_t for epsilon prediction near zero SNR). In half precision the state
# itself is rounded 50 times, so the parity tests also allow a multiple of diffusers' own error there
# (HALF_LOOP_DIFFUSERS_FACTOR): ddim_sched must not be meaningfully worse than diffusers in half.
LOOP_RTOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 2e-2,
    torch.bfloat16: 1e-1,
}
HALF_LOOP_DIFFUSERS_FACTOR = 4.0

# add_noise / get_velocity (the forward process) vs diffusers, per-sample timesteps.
FORWARD_RTOL = {
    torch.float64: 1e-5,
    torch.float32: 1e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 8e-3,
}

# Closed-form identities computed by ddim_sched alone (no reference in lower precision).
EXACT_RTOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 2e-2,
}

# Noise-table attributes (betas, alphas_cumprod, ...) vs diffusers' float32 tables: float32 rounding
# of a 1000-term cumulative product.
TABLE_RTOL = 1e-5


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / max(||expected||, tiny), computed in float64."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    return float((a - e).norm() / e.norm().clamp(min=1e-30))
