"""The FLAME image side: a ViT trained from scratch, a per-token MLP head into the LLM's hidden size, mean over
patch tokens, L2 norm. The text side has no trainable part: its embeddings come from the offline store.

``FlameModel.forward(images, text_embeddings)`` returns a dict with the loss, ready for a generic trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frozenvl.backbones.vit import VisionTransformer, VisionTransformerConfig
from frozenvl.config import Config, from_dict, to_dict
from frozenvl.flame.loss import build_loss
from frozenvl.pretrained import PretrainedModel


@dataclass
class FlameConfig(Config):
    vision: VisionTransformerConfig = field(default_factory=VisionTransformerConfig)
    text_dim: int = 576  # hidden size of the frozen LLM (SmolLM2-135M: 576)
    head_hidden: int = 4096  # hidden width of the per-token MLP head (official: max(text_dim, 4096))
    loss: str = "sigmoid"  # "sigmoid" (official) or "infonce"
    sampled_facets: int = 6  # S positives drawn per image per training step (official: 6 of 11)
    text: dict[str, Any] = field(default_factory=dict)  # the text encoder's description (LLM, layer, prompt-set hash)


PRESETS = {
    "tiny": lambda text_dim: FlameConfig(VisionTransformerConfig(32, 8, 32, 2, 2), text_dim, head_hidden=64),
    "small/16": lambda text_dim: FlameConfig(VisionTransformerConfig(224, 16, 384, 12, 6), text_dim,
                                             head_hidden=max(text_dim, 2048)),
    "B/16": lambda text_dim: FlameConfig(VisionTransformerConfig(224, 16, 768, 12, 12), text_dim,
                                         head_hidden=max(text_dim, 4096)),
}


def preset_config(preset: str, text_dim: int) -> FlameConfig:
    """The FLAME config of a named preset; an unknown name is an error listing the known ones."""
    if preset not in PRESETS:
        raise ValueError(f"unknown FLAME preset {preset!r}; known: {', '.join(PRESETS)}")
    return PRESETS[preset](text_dim)


def flame_config(preset: str, text_dim: int = 576, **overrides: Any) -> FlameConfig:
    """A named preset (``tiny`` for tests, ``B/16`` for real runs) with optional field overrides, read by the config
    engine (an unknown field is a :class:`~frozenvl.config.ConfigError` naming it)."""
    return from_dict(FlameConfig, {**to_dict(preset_config(preset, text_dim)), **overrides})


class PatchHead(nn.Module):
    """Per-token MLP into the LLM's hidden size (Linear, GELU, Linear, LayerNorm), as in FLAME's projector."""

    def __init__(self, width: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, out_dim), nn.LayerNorm(out_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, N, W) -> (B, N, D)
        return self.net(tokens)


def sample_facets(text_embeddings: torch.Tensor, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``num`` of the K facets of every row, without replacement, independently per row: (B, K, D) -> (B, S, D)."""
    b, k, _ = text_embeddings.shape
    if num >= k:
        return text_embeddings
    order = torch.rand(b, k, generator=generator, device=text_embeddings.device).argsort(dim=1)[:, :num]  # (B, S)
    return torch.gather(text_embeddings, 1, order[:, :, None].expand(-1, -1, text_embeddings.shape[2]))


class FlameModel(PretrainedModel, nn.Module):
    """Saved whole by :meth:`save_pretrained` (``config.json`` + ``model.safetensors``), as are the training
    checkpoints of a FLAME run: both load with :meth:`from_pretrained`."""

    model_type = "flame"
    config_class = FlameConfig

    def __init__(self, config: FlameConfig):
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(config.vision)
        self.head = PatchHead(config.vision.width, config.head_hidden, config.text_dim)
        self.loss = build_loss(config.loss)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) L2-normalised image embeddings."""
        tokens = self.head(self.visual(images))  # (B, N, D)
        return F.normalize(tokens.mean(dim=1), dim=-1)

    def forward(self, images: torch.Tensor, text_embeddings: torch.Tensor,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W), text_embeddings (B, K, D) from the store -> dict(loss, features, ...).

        In training mode S = ``config.sampled_facets`` facets are drawn per image; in eval mode all K are used.
        """
        if text_embeddings.ndim != 3 or text_embeddings.shape[2] != self.config.text_dim:
            raise ValueError(f"text_embeddings must be (B, K, {self.config.text_dim}), got "
                             f"{tuple(text_embeddings.shape)}")
        image_features = self.encode_image(images)  # (B, D)
        text = text_embeddings.to(image_features.dtype)
        if self.training:
            text = sample_facets(text, self.config.sampled_facets, generator)
        text_features = F.normalize(text, dim=-1)  # (B, S, D)
        out = self.loss(image_features, text_features)
        return {**out, "image_features": image_features, "text_features": text_features}
