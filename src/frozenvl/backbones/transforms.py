"""The image transforms of the frozen vision encoders, taken from the encoders' own libraries.

A pretrained encoder must see its inputs as its library prepares them: the resize (interpolation, rounding,
``crop_pct``), the crop and the normalisation all come from the library, never from frozenvl.

- timm: ``timm.data.resolve_model_data_config(model)`` then ``timm.data.create_transform(..., is_training=False)``;
- open_clip: ``open_clip.image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)``, the transform
  ``open_clip.create_model_and_transforms`` returns for evaluation;
- transformers: the model's image processor (``AutoImageProcessor``), ``pixel_values`` of one image;
- frozenvl's own towers (FLAME, a module wrapped with ``VisionEncoder.from_module``): open_clip's evaluation
  transform ``open_clip.image_transform(size, is_train=False, mean=..., std=...)`` (resize the short side,
  bicubic, centre crop, normalise), as FLAME's image tower is trained.

Each is wrapped in a :class:`LibraryTransform`: a PIL image or an HWC / HW uint8 array -> RGB PIL image -> the
library's normalised ``(3, H, W)`` float32 tensor. The wrappers are picklable (data loader workers) and their
``repr`` names the library's transform (it enters the feature cache's encoder identity).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from frozenvl.constants import IMAGENET_MEAN, IMAGENET_STD


def to_rgb_image(image: Any):
    """A PIL image, an (H, W, C) or (H, W) integer array -> an RGB PIL image."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype.kind not in "uib":
            raise TypeError(f"expected a PIL image or an HWC uint8 array, got an array of dtype {image.dtype}")
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        image = Image.fromarray(image.astype(np.uint8))
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or an HWC uint8 array, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _square_size(size: Any) -> int:
    """An int or an (H, W) / (C, H, W) size -> its width (the last entry)."""
    return int(size[-1]) if isinstance(size, (tuple, list)) else int(size)


def _size_field(size: Any, key: str) -> int | None:
    """One entry of a transformers size (a dict or a ``SizeDict``), None when absent."""
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


class LibraryTransform:
    """An encoder library's own evaluation transform applied to an RGB PIL image -> (3, H, W) float32.

    ``library`` names where it comes from (``timm``, ``open_clip``, ``transformers``); ``size`` is the output
    width, ``mean`` / ``std`` the normalisation the library applies (for information: the library's transform is
    what runs)."""

    def __init__(self, transform: Callable, library: str, size: int, mean: Sequence[float], std: Sequence[float]):
        self.transform = transform
        self.library = library
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def _apply(self, image) -> torch.Tensor:
        return self.transform(image)

    def __call__(self, image: Any) -> torch.Tensor:  # -> (3, H, W)
        x = self._apply(to_rgb_image(image))
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"{self.library} transform gave {type(x).__name__} "
                             f"{tuple(getattr(x, 'shape', ()))}, expected a (3, H, W) tensor")
        return x.float().contiguous()

    def __repr__(self) -> str:
        return f"LibraryTransform(library={self.library!r}, transform={self.transform!r})"


class ImageProcessorTransform(LibraryTransform):
    """A transformers image processor: ``processor(images=image, return_tensors="pt").pixel_values[0]``."""

    def __init__(self, processor: Any):
        size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
        size = size or getattr(processor, "size", None)
        width = next((w for w in (_size_field(size, k) for k in ("width", "shortest_edge", "height")) if w), 0)
        super().__init__(processor, "transformers", int(width),
                         getattr(processor, "image_mean", None) or (0.0, 0.0, 0.0),
                         getattr(processor, "image_std", None) or (1.0, 1.0, 1.0))

    def _apply(self, image) -> torch.Tensor:
        return self.transform(images=image, return_tensors="pt")["pixel_values"][0]


class ImageTransform(LibraryTransform):
    """open_clip's evaluation transform for a square input of ``size``: resize the short side (bicubic),
    centre crop, normalise with ``mean`` / ``std``. For frozenvl's own towers and wrapped modules."""

    def __init__(self, size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        from open_clip import image_transform

        super().__init__(image_transform(int(size), is_train=False, mean=tuple(mean), std=tuple(std)), "open_clip",
                         size, mean, std)


# ------------------------------------------------------------------------------------------------ per library
def timm_transform(model: nn.Module) -> LibraryTransform:
    """timm's evaluation transform of ``model`` (its ``pretrained_cfg``: size, ``crop_pct``, interpolation,
    mean, std). A ViT built with another fixed ``img_size`` than its config keeps the config's ``crop_pct`` and
    interpolation at its own size."""
    from timm.data import create_transform, resolve_model_data_config

    cfg = dict(resolve_model_data_config(model))
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None) if patch_embed is not None else None
    dynamic = bool(getattr(patch_embed, "dynamic_img_size", False)) if patch_embed is not None else False
    if img_size and not dynamic:
        hw = tuple(img_size) if isinstance(img_size, (tuple, list)) else (int(img_size), int(img_size))
        cfg["input_size"] = (3, *hw)
    return LibraryTransform(create_transform(**cfg, is_training=False), "timm", _square_size(cfg["input_size"]),
                            cfg["mean"], cfg["std"])


def open_clip_transform(visual: nn.Module) -> LibraryTransform:
    """open_clip's evaluation transform of a tower (or a whole model): the ``preprocess_cfg`` that
    ``create_model`` sets from the model and pretrained configs, open_clip's defaults for a tower built by hand."""
    from open_clip import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    cfg = PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), dict(get_model_preprocess_cfg(visual))))
    return LibraryTransform(image_transform_v2(cfg, is_train=False), "open_clip", _square_size(cfg.size),
                            cfg.mean, cfg.std)


def _default_image_processor(config: Any):
    """The image processor class transformers registers for ``config``'s model type (``clip_vision_model`` ->
    ``clip``), with its defaults, at the config's image size; None when the type has none."""
    from transformers.models.auto.image_processing_auto import (
        IMAGE_PROCESSOR_MAPPING_NAMES,
        get_image_processor_class_from_name,
    )

    model_type = getattr(config, "model_type", "") or ""
    names = None
    for candidate in (model_type, model_type.removesuffix("_vision_model"), model_type.removesuffix("_vision")):
        names = IMAGE_PROCESSOR_MAPPING_NAMES.get(candidate)
        if names:
            break
    if not names:
        return None
    if isinstance(names, dict):  # transformers 5: {"torchvision": ..., "pil": ...}
        name = names.get("torchvision") or names.get("pil") or next(iter(names.values()))
    elif isinstance(names, (tuple, list)):  # transformers 4: (slow, fast)
        name = next((n for n in names if n), None)
    else:
        name = names
    cls = get_image_processor_class_from_name(name) if name else None
    if cls is None:
        return None
    size = getattr(config, "image_size", None)
    if size is None:
        return cls()
    size = _square_size(size)
    defaults = cls()
    kwargs: dict[str, Any] = {}
    if _size_field(defaults.size, "shortest_edge"):
        kwargs["size"] = {"shortest_edge": size}
    else:
        kwargs["size"] = {"height": size, "width": size}
    if getattr(defaults, "crop_size", None):
        kwargs["crop_size"] = {"height": size, "width": size}
    processor = cls(**kwargs)
    return processor


def transformers_transform(config: Any, image_processor: Any = None, name: str = "transformers") \
        -> ImageProcessorTransform:
    """The transform of a transformers vision model: ``image_processor`` (the checkpoint's own, from
    ``AutoImageProcessor.from_pretrained``) or, when none is given, the processor class transformers registers
    for the model type, with its defaults, at the model's image size."""
    if image_processor is None:
        image_processor = _default_image_processor(config)
        if image_processor is None:
            raise ValueError(f"{name}: transformers has no image processor for model type "
                             f"{getattr(config, 'model_type', None)!r}; pass image_processor= (the checkpoint's "
                             f"AutoImageProcessor)")
    return ImageProcessorTransform(image_processor)
