"""Sharded latents (``torch.distributed.tensor.DTensor``, as sequence-parallel video pipelines shard them): a
step on a sharded sample equals the step on the whole sample, for η > 0 with a generator (the noise is drawn
for the whole tensor and laid out as the sample is), per-sample and per-element timesteps, and ``out=``.

Two processes on the CPU (gloo), started with ``torch.multiprocessing.spawn``; each case is compared on
rank 0 with the same step on the unsharded tensors."""

from __future__ import annotations

import os
import socket
import traceback

import pytest
import torch
import torch.multiprocessing as mp

distributed = pytest.importorskip("torch.distributed")
if not distributed.is_available():  # pragma: no cover - a torch built without distributed support
    pytest.skip("torch.distributed is not available", allow_module_level=True)

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cases(scheduler, flow: bool) -> dict[str, dict]:
    t = scheduler.timesteps
    per_sample = t[torch.tensor([1, 3, 5, 7])]
    per_element = t[torch.tensor([2, 4, 6, 8])].reshape(1, 1, 4, 1)  # one level per row of the sequence axis
    return {
        "eta 0": dict(timestep=t[3]),
        "eta 1, generator": dict(timestep=t[3], eta=1.0, generator=(torch.Generator, 1)),
        "per-sample timesteps": dict(timestep=per_sample),
        "per-sample timesteps and eta": dict(
            timestep=per_sample, eta=torch.tensor([0.0, 0.5, 1.0, 1.0]), generator=(torch.Generator, 2)
        ),
        "per-element timesteps": dict(timestep=per_element, eta=0.5, generator=(torch.Generator, 3)),
        "out=": dict(timestep=t[5], eta=1.0, generator=(torch.Generator, 4), out=True),
    }


def _worker(rank: int, port: int, errors) -> None:
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor, Shard, distribute_tensor

        from ddim_sched import DDIMScheduler, FlowMatchDDIMScheduler

        mesh = init_device_mesh("cpu", (WORLD,))
        generator = torch.Generator().manual_seed(0)
        x, m = torch.randn(4, 3, 4, 8, generator=generator), torch.randn(4, 3, 4, 8, generator=generator)
        for flow, scheduler in ((False, DDIMScheduler(clip_sample=False)), (True, FlowMatchDDIMScheduler(shift=3.0))):
            scheduler.set_timesteps(10)
            for placement in (Shard(0), Shard(2)):  # the batch, or the sequence axis
                xd, md = distribute_tensor(x, mesh, [placement]), distribute_tensor(m, mesh, [placement])
                for name, case in _cases(scheduler, flow).items():

                    def call(model_output, sample, case=case, scheduler=scheduler):
                        kwargs = {
                            k: v[0]().manual_seed(v[1]) if isinstance(v, tuple) else v
                            for k, v in case.items()
                            if k not in ("timestep", "out")
                        }
                        if case.get("out"):
                            kwargs["out"] = sample.clone()
                        return scheduler.step(model_output, case["timestep"], sample, **kwargs).prev_sample

                    sharded = call(md, xd)
                    if not isinstance(sharded, DTensor):
                        raise AssertionError(f"{name}: the step on a DTensor returned {type(sharded).__name__}")
                    whole = sharded.full_tensor()
                    if rank == 0:
                        expected = call(m, x)
                        if not torch.allclose(whole, expected, rtol=1e-6, atol=1e-6):
                            difference = (whole - expected).abs().max().item()
                            label = "flow" if flow else "ddim"
                            raise AssertionError(
                                f"{label} {placement} {name}: {difference:.2e} from the unsharded step"
                            )
        distributed.destroy_process_group()
    except Exception:
        errors.put(f"rank {rank}: {traceback.format_exc()}")


def test_a_step_on_sharded_latents_equals_the_step_on_the_whole_latents():
    context = mp.get_context("spawn")
    errors = context.SimpleQueue()
    mp.start_processes(_worker, args=(_free_port(), errors), nprocs=WORLD, join=True, start_method="spawn")
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert not problems, "\n".join(problems)
