"""Process-group plumbing for torchrun: DDP or FSDP2 around the model, gradient sync.

Kept out of the model classes (STYLE.md). Joining the process group and the collectives the evaluation needs too
(:class:`Dist`, ``setup``, ``teardown``, ``all_reduce_sum``, ``all_gather_object``, ``barrier``) live in
:mod:`frozenvl.distributed` and are re-exported here. One process (no torchrun): world size 1, every helper a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.distributed as dist
from torch import nn

from frozenvl.distributed import (  # noqa: F401  (the engine's names for them)
    Dist,
    all_gather_object,
    all_reduce_sum,
    barrier,
    setup,
    teardown,
)


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
