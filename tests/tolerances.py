"""The one table of numeric tolerances used across the test suite (STYLE.md rule 11).

Relative L2 error ||a - b|| / ||b|| between ddim_sched and a reference, per dtype of the sample.
diffusers computes its tables in float32 and, for half inputs, its arithmetic in half precision;
ddim_sched computes tables in float64 and arithmetic in float32 for half inputs, hence the looser
half-precision bounds.
"""

import torch

PARITY_RTOL = {
    torch.float64: 1e-4,
    torch.float32: 1e-4,
    torch.float16: 5e-3,
    torch.bfloat16: 4e-2,
}

# Closed-form identities computed by ddim_sched alone (no reference in lower precision).
EXACT_RTOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 2e-2,
}


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / max(||expected||, tiny), computed in float64."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    return float((a - e).norm() / e.norm().clamp(min=1e-30))
