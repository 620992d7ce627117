"""FLAME as a task of the training engine: an image tower trained against the offline caption embeddings.

The engine's loader yields decoded samples (``{"key", "images": [PIL image], "caption", ...}``). The collator looks
each key up in the offline embedding store and drops (and counts) samples that have no embeddings. ``model.kind:
flame`` in a run config builds the task from :class:`FlameTaskOptions` (``model.flame``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from frozenvl.config import ConfigError
from frozenvl.flame.inference import image_transform
from frozenvl.flame.model import FlameConfig, FlameModel, flame_config, preset_config
from frozenvl.flame.store import EmbeddingStore
from frozenvl.tasks.base import ModelTask
from frozenvl.tasks.image_tower import ImageTowerOptions


@dataclass
class FlameTaskOptions(ImageTowerOptions):
    store: str = ""  # the offline embedding store (frozenvl flame embed --out)
    sampled_facets: int = 6

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.sampled_facets < 1:
            raise ConfigError(f"{where}.sampled_facets must be >= 1; got {self.sampled_facets}")

    def check_store(self, where: str) -> None:
        """A FLAME run needs a store; the default options have none, so this is not part of :meth:`validate`."""
        if not self.store:
            raise ConfigError(f"{where}.store is empty: give the folder written by `frozenvl flame embed`")

    def build_config(self) -> FlameConfig:
        self.check_store(type(self).__name__)
        dim = EmbeddingStore(self.store).meta["dim"]
        return flame_config(self.preset, text_dim=dim, sampled_facets=self.sampled_facets,
                            **self.tower_fields(preset_config(self.preset, dim)))


class FlameCollator:
    """samples -> {"images": (B, 3, S, S), "text_embeddings": (B, K, D), "keys"}; picklable for loader workers
    (the memory-mapped store is reopened lazily in each process)."""

    def __init__(self, store_root: str | os.PathLike, image_size: int):
        self.store_root = str(store_root)
        self.image_size = image_size
        self.missing = 0
        self._store: EmbeddingStore | None = None
        self._transform = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None, "_transform": None}

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if self._store is None:
            self._store = EmbeddingStore(self.store_root)
            self._transform = image_transform(self.image_size)
        kept = [s for s in samples if s.get("key") in self._store and s.get("images")]
        self.missing += len(samples) - len(kept)
        if not kept:
            return {"images": None, "text_embeddings": None, "keys": []}
        images = torch.stack([self._transform(s["images"][0]) for s in kept])  # (B, 3, S, S)
        keys = [s["key"] for s in kept]
        return {"images": images, "text_embeddings": self._store.get_batch(keys), "keys": keys}


class FlameTask(ModelTask):
    """Train a FLAME image tower against a store: ``train(config, task=FlameTask(store, "B/16"))``, or
    ``model.kind: flame`` in the run config (``FlameTask.from_options``)."""

    @classmethod
    def from_options(cls, options: FlameTaskOptions | dict[str, Any]) -> FlameTask:
        if isinstance(options, dict):
            options = FlameTaskOptions.from_dict(options)
        return cls(options.store, options.build_config())

    def __init__(self, store_root: str | os.PathLike, preset: str | FlameConfig = "B/16", **overrides):
        meta = EmbeddingStore(store_root).meta
        if isinstance(preset, FlameConfig):
            config = preset
        else:
            config = flame_config(preset, text_dim=meta["dim"], **overrides)
        if config.text_dim != meta["dim"]:
            raise ValueError(f"config.text_dim={config.text_dim} but the store holds {meta['dim']}-d embeddings")
        config.text = dict(meta)  # the checkpoint records which text encoder its embeddings came from
        self.model = FlameModel(config)
        self.collate = FlameCollator(store_root, config.vision.image_size)

    def token_counter(self, text: str) -> int:
        return 0  # the text side is precomputed: no caption is too long for FLAME

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        if batch["images"] is None:
            raise ValueError("a batch had no sample with stored text embeddings: is the store for this data?")
        out = model(batch["images"].to(device), batch["text_embeddings"].to(device))
        n = torch.tensor(len(batch["keys"]), device=device)
        return {"loss": out["loss"], "tokens": n, "samples": n}
