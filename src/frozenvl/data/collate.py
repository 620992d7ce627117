"""Collate functions: lists of loader samples -> Flamingo batches (through a processor) or FLAME batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

from frozenvl.backbones.vision import ImageTransform

# CLIP's normalisation, the usual default for contrastively trained image towers.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Processor = Callable[..., dict[str, Any]]


def image_to_tensor(image: Image.Image, size: int, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """Resize the short side to `size`, centre-crop to size x size, normalise: -> (3, size, size) float32."""
    return ImageTransform(size, mean, std)(image)


class FlamingoCollator:
    """Samples -> the Flamingo processor's batch, plus `keys` and `kinds`.

    processor(texts: list[str], images: list[list[PIL.Image | list[PIL.Image]]], padding_side=...) -> dict of
    tensors (input_ids, attention_mask, pixel_values, ...). Each sample's `text` already carries its `<image>` and
    `<|endofchunk|>` markers; its `images` is the list of images (or of frame lists for videos) in marker order.
    """

    def __init__(self, processor: Processor, padding_side: str = "right"):
        self.processor, self.padding_side = processor, padding_side

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        for s in samples:
            if "text" not in s:
                raise ValueError(f"sample {s.get('key')!r} of kind {s.get('kind')!r} has no Flamingo text; "
                                 "evaluation records are turned into prompts by the evaluation harness")
        batch = dict(self.processor([s["text"] for s in samples], [s["images"] for s in samples],
                                    padding_side=self.padding_side))
        batch["keys"] = [s["key"] for s in samples]
        batch["kinds"] = [s["kind"] for s in samples]
        return batch


class FlameCollator:
    """Samples -> a FLAME batch: `pixel_values` (B, 3, S, S), `keys` (to join the offline caption embeddings),
    raw `captions` and `long_captions` (None where a sample has none).

    Videos contribute their first frame. `transform` (PIL image -> (3, S, S) tensor) replaces the default resize,
    centre-crop and CLIP normalisation.
    """

    def __init__(self, image_size: int = 224, transform: Callable[[Image.Image], torch.Tensor] | None = None):
        self.image_size = image_size
        self.transform = transform

    def _to_tensor(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image) if self.transform else image_to_tensor(image, self.image_size)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        images = []
        for s in samples:
            first = s["images"][0]
            images.append(first[0] if isinstance(first, list) else first)
        return {
            "pixel_values": torch.stack([self._to_tensor(img) for img in images]),  # (B, 3, S, S)
            "keys": [s["key"] for s in samples],
            "captions": [s.get("caption") or (s.get("captions") or [None])[0] for s in samples],
            "long_captions": [s.get("long_caption") for s in samples],
        }
