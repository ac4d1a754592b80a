"""Shared fixtures: tiny diffusers components built once per session, and the parity check that
records every integration case's measured error for the end-of-run summary."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.tolerances import PARITY_RTOL, rel_l2

# (case, relative L2 error, max absolute difference) for each parity check that ran.
_PARITY_RESULTS: list[tuple[str, float, float]] = []
# What a reference library did where the tests assert only ddim_sched's behaviour (it varies by CPU).
_OBSERVATIONS: list[str] = []


@pytest.fixture(scope="session")
def tiny_sd():
    """Tiny Stable Diffusion components: unet, vae, and 2 prompts' (prompt, negative) embeddings."""
    from tests.tiny_models import sd_loop

    prompt_embeds, negative_prompt_embeds = sd_loop.prompt_embeddings(2)
    return SimpleNamespace(
        unet=sd_loop.tiny_unet(),
        vae=sd_loop.tiny_vae(),
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
    )


@pytest.fixture(scope="session")
def tiny_pixel_unet():
    """A tiny unconditional pixel-space UNet2DModel."""
    from tests.tiny_models import tiny_pixel_unet

    return tiny_pixel_unet()


@pytest.fixture(scope="module")
def one_thread():
    """Run the module's tests on one torch thread (see tests.tiny_models.single_thread)."""
    from tests.tiny_models import single_thread

    with single_thread():
        yield


def _as_tensor(value) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, torch.Tensor):
        return value
    raise TypeError(f"expected an array or tensor; got {type(value).__name__}")


@pytest.fixture
def parity():
    """check(case, actual, expected, rtol=float32 parity tolerance) -> relative L2 error.

    Fails unless both outputs are finite, the reference is not constant, and
    ||actual − expected|| / ||expected|| <= rtol. Records the error for the run summary.
    """

    def check(case: str, actual, expected, rtol: float = PARITY_RTOL[torch.float32]) -> float:
        a, e = _as_tensor(actual), _as_tensor(expected)
        assert a.shape == e.shape, f"{case}: shapes differ: {tuple(a.shape)} vs {tuple(e.shape)}"
        assert torch.isfinite(e).all(), f"{case}: the reference output has non-finite values"
        assert torch.isfinite(a).all(), f"{case}: ddim_sched's output has non-finite values"
        assert float(e.double().std()) > 0, f"{case}: the reference output is constant; the comparison is vacuous"
        error = rel_l2(a, e)
        max_abs = float((a.double() - e.double()).abs().max())
        _PARITY_RESULTS.append((case, error, max_abs))
        assert error <= rtol, f"{case}: relative L2 error {error:.3e} > {rtol:.0e} (max |diff| {max_abs:.3e})"
        return error

    return check


@pytest.fixture
def observe(request):
    """observe(message): record what a reference library did, for the end-of-run summary (never asserted:
    its rounding, NaNs and errors differ across CPUs and releases)."""

    def record(message: str) -> None:
        _OBSERVATIONS.append(f"{request.node.nodeid}: {message}")

    return record


@pytest.fixture
def warnings_logged(caplog):
    """The WARNING+ records ddim_sched logs, and those diffusers logs about a scheduler or its config, while
    the test runs (not diffusers' notes on optional packages or on the tiny pipelines' absent encoders)."""
    caplog.set_level(logging.WARNING)
    diffusers_logger = logging.getLogger("diffusers")
    level = diffusers_logger.level
    diffusers_logger.setLevel(logging.WARNING)  # tests/diffusers_oracle.py quiets it
    diffusers_logger.addHandler(caplog.handler)  # diffusers' loggers do not propagate to the root

    def records():
        return [
            r
            for r in caplog.records
            if r.levelno >= logging.WARNING
            and (
                r.name.startswith("ddim_sched")
                or (
                    r.name.startswith("diffusers")
                    and re.search(r"(?i)scheduler|ddim|config attributes", r.getMessage())
                )
            )
        ]

    yield records
    diffusers_logger.removeHandler(caplog.handler)
    diffusers_logger.setLevel(level)


def pytest_terminal_summary(terminalreporter) -> None:
    if _OBSERVATIONS:
        terminalreporter.write_sep("-", "observations of the reference libraries (recorded, not asserted)")
        for line in _OBSERVATIONS:
            terminalreporter.write_line(line)
    if not _PARITY_RESULTS:
        return
    terminalreporter.write_sep("-", "parity: relative L2 error / max |diff| per integration case")
    width = max(len(case) for case, _, _ in _PARITY_RESULTS)
    for case, error, max_abs in _PARITY_RESULTS:
        terminalreporter.write_line(f"{case:<{width}}  {error:.2e}  {max_abs:.2e}")
