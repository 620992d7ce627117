"""The torchrun process group, shared by the training engine and the evaluation: join it, know this process's
rank, gather Python objects, wait for every process.

One process (no torchrun) gives a :class:`Dist` with world size 1 and every helper becomes a no-op, so the same
code runs everywhere. CPU runs use gloo (tests run here), GPU runs NCCL. What only training needs (DDP / FSDP2
wrapping, gradient sync) stays in ``frozenvl.train.distributed``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def world_size_from_env() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str = "auto", option: str = "train.device") -> Dist:
    """Join torchrun's process group if the environment names one (RANK/WORLD_SIZE), pick the device: ``cuda``
    (GPU LOCAL_RANK), ``cpu``, or ``auto`` (cuda when available). ``option`` names the setting in errors."""
    world = world_size_from_env()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option}=cuda but this machine has no usable CUDA GPU (torch.cuda.is_available() is "
                         f"False): set {option}=cpu or auto")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    initialised_here = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
        initialised_here = True
    return Dist(rank, world, local_rank, dev, initialised_here)


def teardown(d: Dist) -> None:
    if d.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_object(obj: Any) -> list[Any]:
    """``obj`` of every process, in rank order (``[obj]`` in one process)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
