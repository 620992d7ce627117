"""FLAME and its CLIP baseline as tasks of the shared training engine (``frozenvl.train``): model, collate, loss.

The engine's loader yields decoded samples (``{"key", "images": [PIL image], "caption", ...}``). FLAME's collator
looks each key up in the offline embedding store and drops (and counts) samples that have no embeddings; the
baseline's collator tokenizes the caption itself. ``model.kind: flame`` / ``clip_baseline`` in a run config build
them from :class:`FlameTaskOptions` / :class:`ClipBaselineTaskOptions` (``model.flame`` / ``model.clip_baseline``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from frozenvl.flame.baseline import ClipBaseline, ClipBaselineConfig, baseline_config
from frozenvl.flame.inference import image_transform
from frozenvl.flame.model import FlameConfig, FlameModel, VisionTransformerConfig, flame_config
from frozenvl.flame.store import EmbeddingStore
from frozenvl.train.tasks import ModelTask


@dataclass
class ImageTowerOptions:
    """The image tower shared by FLAME and the baseline: a preset, then field overrides."""

    preset: str = "tiny"  # "tiny" | "small/16" | "B/16"
    image_size: int | None = None  # None: the preset's
    vision: dict[str, Any] = field(default_factory=dict)  # other VisionTransformerConfig fields (patch_size, ...)
    head_hidden: int | None = None  # None: the preset's
    loss: str = "sigmoid"  # "sigmoid" | "infonce"

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; {cls.__name__} has: {', '.join(names)}")
        options = cls(**data)
        options.validate()
        return options

    def validate(self) -> None:
        from frozenvl.flame.loss import build_loss
        from frozenvl.flame.model import PRESETS

        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {self.preset!r}")
        build_loss(self.loss)
        self.vision_config(PRESETS[self.preset](8).vision)

    def vision_config(self, base: VisionTransformerConfig) -> VisionTransformerConfig:
        fields = {**dataclasses.asdict(base), **self.vision}
        if self.image_size is not None:
            fields["image_size"] = self.image_size
        try:
            config = VisionTransformerConfig(**fields)
        except TypeError as e:
            raise ValueError(f"vision: {e}") from None
        if config.image_size % config.patch_size:
            raise ValueError(f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
        return config


@dataclass
class FlameTaskOptions(ImageTowerOptions):
    store: str = ""  # the offline embedding store (frozenvl flame embed --out)
    sampled_facets: int = 6

    def validate(self) -> None:
        super().validate()
        if not self.store:
            raise ValueError("store is empty: give the folder written by `frozenvl flame embed`")
        if self.sampled_facets < 1:
            raise ValueError(f"sampled_facets must be >= 1; got {self.sampled_facets}")

    def build_config(self) -> FlameConfig:
        meta = EmbeddingStore(self.store).meta
        config = flame_config(self.preset, text_dim=meta["dim"], loss=self.loss, sampled_facets=self.sampled_facets)
        config.vision = self.vision_config(config.vision)
        if self.head_hidden is not None:
            config.head_hidden = self.head_hidden
        return config


@dataclass
class ClipBaselineTaskOptions(ImageTowerOptions):
    embed_dim: int | None = None  # None: the dimension of `store` (FLAME's joint space), else 576
    store: str | None = None  # optional: a FLAME store whose dimension the joint space copies
    text: dict[str, Any] = field(default_factory=dict)  # TextTransformerConfig fields (width, layers, heads)
    tokenizer: dict[str, Any] = field(default_factory=dict)  # TokenizerConfig fields (kind, vocab_size, max_length)
    caption: str = "caption"  # which caption of a pair to train on: "caption" (short) | "long_caption"

    def validate(self) -> None:
        super().validate()
        if self.caption not in ("caption", "long_caption"):
            raise ValueError(f"caption must be 'caption' or 'long_caption'; got {self.caption!r}")
        baseline_config(self.preset, 8, self.text, self.tokenizer)

    def build_config(self) -> ClipBaselineConfig:
        dim = self.embed_dim
        if dim is None:
            dim = EmbeddingStore(self.store).meta["dim"] if self.store else 576
        config = baseline_config(self.preset, dim, self.text, self.tokenizer, loss=self.loss)
        config.vision = self.vision_config(config.vision)
        if self.head_hidden is not None:
            config.head_hidden = self.head_hidden
        return config


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


class ClipBaselineCollator:
    """samples -> {"images": (B, 3, S, S), "input_ids", "attention_mask": (B, L), "keys"}; picklable."""

    def __init__(self, config: ClipBaselineConfig, caption_field: str = "caption"):
        from frozenvl.flame.simple_tokenizer import SimpleTokenizer

        self.image_size = config.vision.image_size
        self.tokenizer = SimpleTokenizer(config.tokenizer)
        self.caption_field = caption_field
        self.missing = 0
        self._transform = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_transform": None}

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if self._transform is None:
            self._transform = image_transform(self.image_size)
        kept = [s for s in samples if s.get(self.caption_field) and s.get("images")]
        self.missing += len(samples) - len(kept)
        if not kept:
            return {"images": None, "input_ids": None, "attention_mask": None, "keys": []}
        images = torch.stack([self._transform(s["images"][0]) for s in kept])  # (B, 3, S, S)
        tokens = self.tokenizer([s[self.caption_field] for s in kept])
        return {"images": images, **tokens, "keys": [s["key"] for s in kept]}


class ClipBaselineTask(ModelTask):
    """The CLIP baseline on the same pairs: ``model.kind: clip_baseline`` (``ClipBaselineTask.from_options``)."""

    def __init__(self, config: ClipBaselineConfig, caption_field: str = "caption"):
        self.model = ClipBaseline(config)
        self.collate = ClipBaselineCollator(config, caption_field)

    @classmethod
    def from_options(cls, options: ClipBaselineTaskOptions | dict[str, Any]) -> ClipBaselineTask:
        if isinstance(options, dict):
            options = ClipBaselineTaskOptions.from_dict(options)
        return cls(options.build_config(), options.caption)

    def token_counter(self, text: str) -> int:
        return 0  # captions are cut to the tokenizer's max_length, never skipped

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        device = next(self.model.parameters()).device
        if batch["images"] is None:
            raise ValueError("a batch had no sample with an image and a caption")
        mask = batch["attention_mask"].to(device)
        out = model(batch["images"].to(device), batch["input_ids"].to(device), mask)
        return {"loss": out["loss"], "tokens": mask.sum(), "samples": torch.tensor(len(batch["keys"]), device=device)}
