"""The image tower options shared by the FLAME and CLIP-baseline tasks: a preset, then field overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from frozenvl.flame.loss import build_loss
from frozenvl.flame.model import PRESETS, VisionTransformerConfig


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
