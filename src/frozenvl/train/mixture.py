"""The dataset mixture, laid out in *slots* so a run does not depend on how its global batch is split.

A step's global batch is ``world_size x grad_accum`` slots. Slot ``s`` reads part ``s`` of every dataset
(``ShardDataset(rank=s, world_size=n_slots)``), and rank ``r`` owns slots ``r*A .. r*A+A-1``. So 2 ranks x 1
micro-batch and 1 rank x 2 micro-batches see exactly the same samples in each step, and ranks read disjoint
shards. Each (slot, dataset) stream cycles through epochs forever; its position is saved with checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from frozenvl.data import LoaderConfig, ShardDataset, StreamingLoader
from frozenvl.train.config import DataConfig, DatasetConfig


def _loader_config(d: DatasetConfig, data: DataConfig, shuffle: bool = True,
                   max_length: int | None = None) -> LoaderConfig:
    # The model cannot take more than max_length tokens: longer pages are cut (or skipped) by the loader.
    max_tokens = min(d.max_tokens, max_length) if max_length else d.max_tokens
    return LoaderConfig(seed=data.seed, shuffle_shards=shuffle, shuffle_buffer=data.shuffle_buffer if shuffle else 0,
                        max_images=d.max_images, max_tokens=max_tokens, single_image_drop_prob=d.single_image_drop_prob,
                        min_similarity=d.min_similarity)


def _shard_id(shard: str) -> str:
    name = str(shard).rstrip("/").rsplit("/", 1)[-1]
    return f"{name}:{os.path.getsize(shard)}" if os.path.isfile(shard) else name


class CyclingLoader:
    """A StreamingLoader that starts the next epoch when one ends (and refuses a dataset that yields nothing)."""

    def __init__(self, loader: StreamingLoader, name: str):
        self.loader, self.name = loader, name
        self._it: Iterator[Any] | None = None

    def next(self) -> Any:
        for _ in range(2):  # the current epoch's remainder, then at most one fresh epoch
            if self._it is None:
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
        shards = [str(s) for s in getattr(getattr(self.loader, "dataset", self.loader), "shards", [])]
        named = f" in {', '.join(shards[:3])}{' ...' if len(shards) > 3 else ''}" if shards else ""
        raise ValueError(f"dataset {self.name!r} yields no samples{named}: every sample was skipped or the shards "
                         f"are empty ({self.loader.skips.report()})")

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
        self._it = None


class Mixture:
    """Per-rank loaders: ``loaders[a][name]`` is micro-batch ``a`` (slot ``rank*A + a``) of dataset ``name``."""

    def __init__(self, data: DataConfig, rank: int, world_size: int, grad_accum: int,
                 collate: Callable[[list[dict]], Any], token_counter: Callable[[str], int] | None = None,
                 max_length: int | None = None):
        self.datasets = list(data.datasets)
        self.weights = {d.name: d.weight for d in self.datasets}
        self.mixing = data.mixing
        self.n_slots = world_size * grad_accum
        self.slots = list(range(rank * grad_accum, (rank + 1) * grad_accum))
        self.loaders: list[dict[str, CyclingLoader]] = []
        for slot in self.slots:
            row = {}
            for d in self.datasets:
                ds = ShardDataset(d.shards, _loader_config(d, data, max_length=max_length), rank=slot,
                                  world_size=self.n_slots, token_counter=token_counter)
                row[d.name] = CyclingLoader(StreamingLoader(ds, d.batch_size, collate, num_workers=data.num_workers),
                                            f"{d.name} (slot {slot})")
            self.loaders.append(row)

    def names_for_step(self, step: int) -> list[str]:
        """The datasets a step uses: all of them (accumulate) or one in turn (round robin), weight > 0 only."""
        active = [d.name for d in self.datasets if d.weight > 0]
        if self.mixing == "round_robin":
            return [active[step % len(active)]]
        return active

    def state_dict(self) -> dict[str, Any]:
        """Positions of this rank's slots: {slot: {dataset: loader state}}."""
        return {str(slot): {name: cl.state_dict() for name, cl in row.items()}
                for slot, row in zip(self.slots, self.loaders)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes the union over all ranks (as saved) and picks this rank's slots."""
        for slot, row in zip(self.slots, self.loaders):
            if str(slot) not in state:
                raise ValueError(f"the checkpoint has no data position for slot {slot}: it was saved with "
                                 f"{len(state)} slots, this run has {self.n_slots} "
                                 "(world_size x grad_accum must match)")
            for name, cl in row.items():
                if name not in state[str(slot)]:
                    raise ValueError(f"the checkpoint has no data position for dataset {name!r}")
                cl.load_state_dict(state[str(slot)][name])

    def shard_names(self) -> dict[str, list[str]]:
        """Each dataset's shard files by name and size (``pairs-000000.tar:81920``; a URL or pipe by name only),
        in order: saved with checkpoints, a resume must read the same shards (the folder they are in may move)."""
        return {name: [_shard_id(s) for s in cl.loader.dataset.shards] for name, cl in self.loaders[0].items()}

    def skips(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.loaders:
            for cl in row.values():
                for reason, n in cl.loader.skips.as_dict().items():
                    out[reason] = out.get(reason, 0) + n
        return out


def eval_loaders(data: DataConfig, rank: int, world_size: int, collate: Callable[[list[dict]], Any],
                 token_counter: Callable[[str], int] | None = None,
                 max_length: int | None = None) -> dict[str, StreamingLoader]:
    """Held-out loaders: fixed order (no shuffling), split across ranks; the same batches at every evaluation."""
    out = {}
    for d in data.eval_datasets:
        ds = ShardDataset(d.shards, _loader_config(d, data, shuffle=False, max_length=max_length), rank=rank,
                          world_size=world_size, token_counter=token_counter)
        out[d.name] = StreamingLoader(ds, d.batch_size, collate, num_workers=0)
    return out
