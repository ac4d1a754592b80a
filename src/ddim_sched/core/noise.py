"""Gaussian noise drawn exactly as diffusers' ``randn_tensor`` draws it, so seeded runs match bit for bit."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Generator = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: Sequence[int], generator: Generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``.

    As diffusers does: a CPU generator draws on the CPU and the result is moved to ``device``; a list
    of generators (one per batch element) draws one element per generator and concatenates; a list
    of one generator counts as that generator.

    Raises:
        ValueError: A list whose length is not the batch size, or a CUDA generator for a CPU tensor.
        TypeError: ``generator`` is neither a Generator nor a list of them.
    """
    shape = tuple(shape)
    device = torch.device(device)
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    candidates: list[object] = list(generator) if isinstance(generator, (list, tuple)) else [generator]
    generators = [g for g in candidates if isinstance(g, torch.Generator)]
    if not generators or len(generators) != len(candidates):
        raise TypeError(f"generator must be a torch.Generator or a list of them; got {generator!r}")
    gen_device = generators[0].device
    if gen_device.type == "cpu":
        draw_device = torch.device("cpu")
    elif gen_device.type != device.type:
        raise ValueError(f"generator on {gen_device} cannot draw noise for a tensor on {device}")
    else:
        draw_device = device
    if len(generators) == 1:
        return torch.randn(shape, generator=generators[0], device=draw_device, dtype=dtype).to(device)
    if len(generators) != shape[0]:
        raise ValueError(
            f"generator list must hold one generator per batch element ({shape[0]}); got {len(generators)}"
        )
    parts = [torch.randn((1,) + shape[1:], generator=g, device=draw_device, dtype=dtype) for g in generators]
    return torch.cat(parts).to(device)
