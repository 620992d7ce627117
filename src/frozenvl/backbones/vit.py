"""A plain pre-norm Vision Transformer trained from scratch: FLAME's image tower and its CLIP baseline's.

Images (B, 3, H, W) -> patch tokens (B, N, W); no class token (FLAME pools by the mean). Saved inside a FLAME or
CLIP-baseline folder under ``visual.*``, from which :func:`frozenvl.backbones.vision.build_vision` reads it back
(``flame:FOLDER``) as a frozen encoder for Flamingo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from frozenvl.config import Config


@dataclass
class VisionTransformerConfig(Config):
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:  # (B, N, W)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=attn_mask, need_weights=False)[0]  # mask: (N, N) additive float
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Images (B, 3, H, W) -> patch tokens (B, N, W); no class token (FLAME pools by the mean)."""

    def __init__(self, config: VisionTransformerConfig):
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        self.config = config
        self.patch_embed = nn.Conv2d(3, config.width, config.patch_size, stride=config.patch_size)
        num_patches = (config.image_size // config.patch_size) ** 2
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches, config.width) * 0.02)
        self.norm_pre = nn.LayerNorm(config.width)
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, W)
        x = self.norm_pre(x + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # (B, N, W)
