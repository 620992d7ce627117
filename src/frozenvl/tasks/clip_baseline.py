"""The CLIP baseline as a task of the training engine: the same image tower as FLAME, a text transformer trained
with it on the same pairs (``model.kind: clip_baseline``, options in ``model.clip_baseline``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from frozenvl.config import check_choice
from frozenvl.flame.baseline import ClipBaseline, ClipBaselineConfig, TextTransformerConfig, baseline_config
from frozenvl.flame.inference import image_transform
from frozenvl.flame.model import preset_config
from frozenvl.flame.simple_tokenizer import SimpleTokenizer, TokenizerConfig
from frozenvl.flame.store import EmbeddingStore
from frozenvl.tasks.base import ModelTask
from frozenvl.tasks.image_tower import ImageTowerOptions


@dataclass
class ClipBaselineTaskOptions(ImageTowerOptions):
    embed_dim: int | None = None  # None: the dimension of `store` (FLAME's joint space), else 576
    store: str | None = None  # optional: a FLAME store whose dimension the joint space copies
    text: TextTransformerConfig = field(default_factory=TextTransformerConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    caption: str = "caption"  # which caption of a pair to train on: "caption" (short) | "long_caption"

    def validate(self, where: str) -> None:
        super().validate(where)
        check_choice(f"{where}.caption", self.caption, ("caption", "long_caption"))

    def build_config(self) -> ClipBaselineConfig:
        dim = self.embed_dim
        if dim is None:
            dim = EmbeddingStore(self.store).meta["dim"] if self.store else 576
        return baseline_config(self.preset, dim, self.text, self.tokenizer,
                               **self.tower_fields(preset_config(self.preset, dim)))


class ClipBaselineCollator:
    """samples -> {"images": (B, 3, S, S), "input_ids", "attention_mask": (B, L), "keys"}; picklable."""

    def __init__(self, config: ClipBaselineConfig, caption_field: str = "caption"):
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
