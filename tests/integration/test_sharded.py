"""Sharded latents (``torch.distributed.tensor.DTensor``, as sequence-parallel video pipelines shard them): a
step on a sharded sample equals the step on the whole sample, for η > 0 with a generator (the noise is drawn
for the whole tensor and laid out as the sample is), per-sample and per-element timesteps, and ``out=``.

Two processes on the CPU (gloo), started with ``torch.multiprocessing.spawn``; each case is compared on
rank 0 with the same step on the unsharded tensors."""

from __future__ import annotations

import os
import traceback
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

distributed = pytest.importorskip("torch.distributed")
if not distributed.is_available():  # pragma: no cover - a torch built without distributed support
    pytest.skip("torch.distributed is not available", allow_module_level=True)

WORLD = 2


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


def _worker(rank: int, rendezvous: str, errors) -> None:
    mismatches: list[str] = []
    try:
        # A file rendezvous: no port to race for with other processes on the machine.
        # (a rank that fails mid-way leaves the other waiting in a collective: give up after a minute)
        distributed.init_process_group(
            "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
        )
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

                    label = f"{'flow' if flow else 'ddim'} {placement} {name}"
                    sharded = call(md, xd)
                    if not isinstance(sharded, DTensor):
                        mismatches.append(f"{label}: the step on a DTensor returned {type(sharded).__name__}")
                        continue
                    whole = sharded.full_tensor()  # a collective: every rank runs every case, whatever it finds
                    if rank == 0:
                        expected = call(m, x)
                        if not torch.allclose(whole, expected, rtol=1e-6, atol=1e-6):
                            difference = (whole - expected).abs().max().item()
                            mismatches.append(f"{label}: {difference:.2e} from the unsharded step")
        distributed.barrier()  # no rank leaves while another still talks to it
    except Exception:
        errors.put(f"rank {rank}: {traceback.format_exc()}")
    finally:
        if distributed.is_initialized():
            distributed.destroy_process_group()
    for mismatch in mismatches:
        errors.put(f"rank {rank}: {mismatch}")
    # Leave without running the interpreter's teardown: gloo's threads can abort it ("terminate called without
    # an active exception") after the work is done and reported.
    os._exit(0)


def test_a_step_on_sharded_latents_equals_the_step_on_the_whole_latents(tmp_path):
    context = mp.get_context("spawn")
    errors = context.SimpleQueue()
    problems = []
    try:
        mp.start_processes(
            _worker, args=(str(tmp_path / "rendezvous"), errors), nprocs=WORLD, join=True, start_method="spawn"
        )
    except ProcessException as exited:  # a process that died: report it with what the others said
        problems.append(str(exited))
    while not errors.empty():
        problems.append(errors.get())
    assert not problems, "\n".join(problems)
