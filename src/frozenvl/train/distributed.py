"""Process-group plumbing for torchrun: DDP or FSDP2 around the model, collectives the trainer needs.

Kept out of the model classes (STYLE.md). One process (no torchrun) gives a :class:`Dist` with world size 1 and
every helper becomes a no-op, so the same loop runs everywhere. CPU runs use gloo (tests run here), GPU runs NCCL.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


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


def setup(device: str = "auto") -> Dist:
    """Join torchrun's process group if the environment names one (RANK/WORLD_SIZE), pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but this machine has no usable CUDA GPU (torch.cuda.is_available() is "
                         "False): set train.device=cpu or auto")
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


def wrap(model: nn.Module, d: Dist, mode: str, shard_units: list[nn.Module] = ()) -> nn.Module:
    """DDP or FSDP2 (``fully_shard`` on each of ``shard_units``, e.g. decoder layers, then the root). One process:
    the model itself.

    Only trainable parameters are synchronised: DDP skips parameters without ``requires_grad``; FSDP2 shards the
    frozen ones too (less memory) but reduces gradients only of those that have them.
    """
    if not d.enabled:
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # Buffers are not synchronised: the only buffers are frozen backbones' (identical on every rank).
        return DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for unit in shard_units:
            fully_shard(unit)
        fully_shard(model)
        return model
    raise ValueError(f"unknown distributed mode {mode!r}; choose 'ddp' or 'fsdp'")


@contextlib.contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Accumulate gradients locally (no communication) unless ``enabled``: the last backward of a step syncs."""
    if enabled or not dist.is_initialized():
        yield
        return
    if hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_object(obj: Any) -> list[Any]:
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
