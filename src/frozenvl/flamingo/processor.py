"""FlamingoProcessor: interleaved text with ``<image>`` markers plus per-sample images or videos -> tensors.

Text format: ``<image>caption<|endofchunk|>`` per chunk. ``images[i]`` lists the media of sample ``i`` in the
order of its ``<image>`` markers; a medium is an image (PIL image, HWC uint8 array, path, bytes, or an already
transformed (C, H, W) tensor) or a video (a list of frames, sampled at 1 FPS by the caller or the data loader).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence

import torch

from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN
from frozenvl.tensors import check_padding_side, pad_sequences, stack_media


class FlamingoProcessor:
    def __init__(self, tokenizer, image_transform: Callable, max_images: int = 32, max_length: int = 2048,
                 padding_side: str = "right"):
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        self.max_images = max_images
        self.max_length = max_length
        self.padding_side = padding_side
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.end_of_chunk_token_id = tokenizer.convert_tokens_to_ids(END_OF_CHUNK)
        self.pad_token_id = tokenizer.pad_token_id

    # ----------------------------------------------------------------------------------------------- images
    def load_image(self, image, where: str) -> torch.Tensor:  # -> (C, H, W)
        if isinstance(image, torch.Tensor):
            if image.ndim != 3:
                raise ValueError(f"{where}: an image tensor must be (C, H, W), got shape {tuple(image.shape)}")
            return image.float()
        from PIL import Image, UnidentifiedImageError

        try:
            if isinstance(image, (str, os.PathLike)):
                with Image.open(image) as im:
                    im.load()
                    image = im.convert("RGB")
            elif isinstance(image, (bytes, bytearray)):
                with Image.open(io.BytesIO(image)) as im:
                    im.load()
                    image = im.convert("RGB")
            return self.image_transform(image)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"{where}: image cannot be decoded ({type(e).__name__}: {e})") from e

    def media_tensor(self, medium, where: str = "image", max_frames: int | None = None) -> torch.Tensor:
        """An image -> (1, C, H, W); a video (a list of frames) -> (F, C, H, W), its frames evenly subsampled to
        ``max_frames`` (the model's temporal embeddings) when longer."""
        if not isinstance(medium, (list, tuple)):
            return self.load_image(medium, where).unsqueeze(0)
        if not medium:
            raise ValueError(f"{where}: a video must have at least one frame")
        frames = list(medium)
        if max_frames is not None and len(frames) > max_frames:
            step = len(frames) / max_frames
            frames = [frames[int(i * step)] for i in range(max_frames)]
        return torch.stack([self.load_image(f, f"{where} frame {k}") for k, f in enumerate(frames)])

    # ------------------------------------------------------------------------------------------------- call
    def __call__(
        self,
        texts: str | Sequence[str],
        images: Sequence[Sequence] | None = None,
        padding_side: str | None = None,
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Returns ``input_ids`` and ``attention_mask`` (B, L), and ``pixel_values`` (B, T_img, F, C, H, W)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        side = check_padding_side(padding_side or self.padding_side)  # before any work
        max_length = max_length or self.max_length
        if images is None:
            images = [[] for _ in texts]
        if len(images) != len(texts):
            raise ValueError(f"{len(texts)} texts but images for {len(images)} samples")

        rows, media = [], []
        for i, (text, sample_media) in enumerate(zip(texts, images)):
            if not isinstance(text, str):
                raise TypeError(f"sample {i}: text must be a string, got {type(text).__name__}")
            sample_media = list(sample_media or [])
            markers = text.count(IMAGE_TOKEN)
            if markers != len(sample_media):
                raise ValueError(f"sample {i}: the text has {markers} {IMAGE_TOKEN} markers but "
                                 f"{len(sample_media)} images/videos were given")
            if markers > self.max_images:
                raise ValueError(f"sample {i}: {markers} images, more than the maximum of {self.max_images}")
            ids = self.tokenizer(text)["input_ids"]
            if len(ids) > max_length:
                raise ValueError(f"sample {i}: {len(ids)} tokens, more than max_length={max_length}")
            n_markers = sum(1 for t in ids if t == self.image_token_id)
            if n_markers != markers:
                raise ValueError(f"sample {i}: {n_markers} {IMAGE_TOKEN} tokens for {markers} markers after tokenizing")
            rows.append(ids)
            media.append([self.media_tensor(m, f"sample {i} image {j}") for j, m in enumerate(sample_media)])

        input_ids, attention_mask = pad_sequences(rows, self.pad_token_id, side)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        pixel_values = stack_media(media)
        if pixel_values is not None:
            batch["pixel_values"] = pixel_values
        return batch

    # ----------------------------------------------------------------------------------------------- decode
    def decode(self, ids: torch.Tensor | Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode_new(self, sequences: torch.Tensor, prompt_length: int) -> list[str]:
        """Decode generated continuations: cut at ``<|endofchunk|>``, drop padding and specials."""
        out = []
        for row in sequences[:, prompt_length:].tolist():
            if self.end_of_chunk_token_id in row:
                row = row[: row.index(self.end_of_chunk_token_id)]
            out.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return out


# Non-tensor fields a data collator adds to a batch (frozenvl.tasks.FlamingoCollator), so model(**batch) works.
BATCH_METADATA = frozenset({"keys", "kinds"})


def check_extra_arguments(where: str, extra: dict) -> None:
    """A misspelt argument (``pixel_value=``) must not be silently ignored."""
    unknown = sorted(set(extra) - BATCH_METADATA)
    if unknown:
        raise TypeError(f"{where} got unexpected arguments: {', '.join(unknown)}")
