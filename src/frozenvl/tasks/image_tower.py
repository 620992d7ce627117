"""The image tower options shared by the FLAME and CLIP-baseline tasks: a preset, then field overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from frozenvl.config import Config, ConfigError, check_choice, from_dict, to_dict
from frozenvl.flame.loss import build_loss
from frozenvl.flame.model import PRESETS, FlameConfig, VisionTransformerConfig


@dataclass
class ImageTowerOptions(Config):
    """The image tower shared by FLAME and the baseline: a preset, then field overrides."""

    preset: str = "tiny"  # "tiny" | "small/16" | "B/16"
    image_size: int | None = None  # None: the preset's
    vision: dict[str, Any] = field(default_factory=dict)  # other VisionTransformerConfig fields (patch_size, ...)
    head_hidden: int | None = None  # None: the preset's
    loss: str = "sigmoid"  # "sigmoid" | "infonce"

    def validate(self, where: str) -> None:
        check_choice(f"{where}.preset", self.preset, tuple(PRESETS))
        try:
            build_loss(self.loss)
        except ValueError as e:
            raise ConfigError(f"{where}.loss: {e}") from None
        self.vision_config(PRESETS[self.preset](8).vision, where)

    def vision_config(self, base: VisionTransformerConfig, where: str = "") -> VisionTransformerConfig:
        """``base`` (the preset's ViT) with this tower's overrides; ``where`` names the tower's section in errors."""
        where = where or type(self).__name__
        fields = {**to_dict(base), **self.vision}
        if self.image_size is not None:
            fields["image_size"] = self.image_size
        config = from_dict(VisionTransformerConfig, fields, f"{where}.vision")
        if config.image_size % config.patch_size:
            raise ConfigError(f"{where}.image_size {config.image_size} is not a multiple of patch_size "
                              f"{config.patch_size}")
        return config

    def tower_fields(self, preset: FlameConfig) -> dict[str, Any]:
        """The image-tower fields of a FLAME or CLIP-baseline config: ``preset``'s with this tower's overrides."""
        return {"vision": self.vision_config(preset.vision),
                "head_hidden": preset.head_hidden if self.head_hidden is None else self.head_hidden,
                "loss": self.loss}
