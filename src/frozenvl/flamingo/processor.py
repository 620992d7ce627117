"""FlamingoProcessor: interleaved text with ``<image>`` markers plus per-sample images or videos -> tensors.

Text format: ``<image>caption<|endofchunk|>`` per chunk. ``images[i]`` lists the media of sample ``i`` in the
order of its ``<image>`` markers; a medium is an image (PIL image, HWC uint8 array, path, bytes, or an already
transformed (C, H, W) tensor) or a video (a list of frames, sampled at 1 FPS by the caller or the data loader, or a
video file path such as ``clip.mp4``, decoded at ``video_fps`` frames per second by
:func:`frozenvl.data.video.read_video_frames`).

The call follows transformers' processors (``processor(text=..., images=..., videos=..., padding=...,
truncation=..., max_length=...)`` returns a ``BatchFeature``; ``decode`` / ``batch_decode`` are the tokenizer's),
and the positional style ``processor(texts, images, padding_side=...)`` gives the same batch.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence

import torch
from transformers import BatchFeature

from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN
from frozenvl.data.video import is_video_file, read_video_frames
from frozenvl.tensors import check_padding_side, pad_sequences, stack_media


class FlamingoProcessor:
    def __init__(self, tokenizer, image_transform: Callable, max_images: int = 32, max_length: int = 2048,
                 padding_side: str = "right", video_fps: float = 1.0):
        if not video_fps > 0:
            raise ValueError(f"video_fps must be > 0, got {video_fps}")
        self.tokenizer = tokenizer
        self.video_fps = video_fps  # frames per second sampled from a video file (the Flamingo paper: 1)
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
                if not os.path.isfile(image):  # missing, a folder, or a FIFO whose open() would block
                    raise ValueError(f"{os.fspath(image)} is not an image file")
                with Image.open(image) as im:
                    im.load()
                    image = im.convert("RGB")
            elif isinstance(image, (bytes, bytearray)):
                with Image.open(io.BytesIO(image)) as im:
                    im.load()
                    image = im.convert("RGB")
            return self.image_transform(image)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"{where}: image cannot be decoded ({type(e).__name__}: {e})") from e

    def media_tensor(self, medium, where: str = "image", max_frames: int | None = None) -> torch.Tensor:
        """An image -> (1, C, H, W); a video (a list of frames) -> (F, C, H, W), its frames evenly subsampled to
        ``max_frames`` (the model's temporal embeddings) when longer. A video file is decoded at ``video_fps``."""
        if is_video_file(medium):
            try:
                medium = read_video_frames(medium, self.video_fps, max_frames)
            except (ValueError, FileNotFoundError) as e:
                raise ValueError(f"{where}: {e}") from e
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
    model_input_names = ["input_ids", "attention_mask", "pixel_values", "frame_mask"]

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Sequence | None = None,
        padding_side: str | None = None,
        max_length: int | None = None,
        *,
        videos: Sequence | None = None,
        texts: str | Sequence[str] | None = None,  # the former name of ``text``
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        truncation: bool | str = False,
        pad_to_multiple_of: int | None = None,
    ) -> BatchFeature:
        """Text(s) and their media -> a ``BatchFeature`` (a dict with ``.to(device)`` / ``.to(dtype)``) holding
        ``input_ids`` and ``attention_mask`` (B, L), and ``pixel_values`` (B, T_img, F, C, H, W) when there are media.

        As transformers processors: ``text`` is a string or a list of them; ``images[i]`` / ``videos[i]`` list the
        media of text ``i`` in the order of its ``<image>`` markers (for a single string, a flat list or one image /
        one video will do); a video is a list of frames or an (F, H, W, C) array / (F, C, H, W) tensor. ``padding``:
        True or "longest" (to the longest row), "max_length" (to ``max_length``), False (rows must be equal);
        ``truncation=True`` cuts a row longer than ``max_length`` on the tokenizer's ``truncation_side`` and drops
        the media of the markers cut with it (without it such a row is an error). ``max_length`` defaults to the
        processor's, ``padding_side`` to the processor's ("left" for prompts that ``generate`` continues).
        """
        if texts is not None:
            if text is not None:
                raise TypeError("pass text= or texts=, not both")
            text = texts
        if text is None:
            raise TypeError("FlamingoProcessor needs text=, with one <image> marker per image or video")
        if return_tensors != "pt":
            raise ValueError(f"FlamingoProcessor returns PyTorch tensors (return_tensors='pt'), got {return_tensors!r}")
        side = check_padding_side(padding_side or self.padding_side)  # before any work
        pad_to = _padding_strategy(padding)
        truncate = _truncation_strategy(truncation)
        max_length = max_length or self.max_length
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        media = self._media_per_sample(texts, images, videos, single)

        rows, tensors = [], []
        for i, (sample_text, sample_media) in enumerate(zip(texts, media)):
            if not isinstance(sample_text, str):
                raise TypeError(f"sample {i}: text must be a string, got {type(sample_text).__name__}")
            markers = sample_text.count(IMAGE_TOKEN)
            if markers != len(sample_media):
                raise ValueError(f"sample {i}: the text has {markers} {IMAGE_TOKEN} markers but "
                                 f"{len(sample_media)} images/videos were given")
            if markers > self.max_images:
                raise ValueError(f"sample {i}: {markers} images, more than the maximum of {self.max_images}")
            ids = self.tokenizer(sample_text)["input_ids"]
            n_markers = sum(1 for t in ids if t == self.image_token_id)
            if n_markers != markers:
                raise ValueError(f"sample {i}: {n_markers} {IMAGE_TOKEN} tokens for {markers} markers after tokenizing")
            if len(ids) > max_length:
                if not truncate:
                    raise ValueError(f"sample {i}: {len(ids)} tokens, more than max_length={max_length} "
                                     "(truncation=True cuts it)")
                # The tokenizer truncates (keeping its special tokens); the media of the cut markers go with them.
                ids = self.tokenizer(sample_text, truncation=True, max_length=max_length)["input_ids"]
                kept = sum(1 for t in ids if t == self.image_token_id)
                left = getattr(self.tokenizer, "truncation_side", "right") == "left"
                sample_media = sample_media[len(sample_media) - kept:] if left else sample_media[:kept]
            rows.append(ids)
            tensors.append([self.media_tensor(m, f"sample {i} image {j}") for j, m in enumerate(sample_media)])

        longest = max(len(r) for r in rows)
        if pad_to is None and any(len(r) != longest for r in rows):
            raise ValueError(f"rows of {sorted({len(r) for r in rows})} tokens cannot form a batch without padding "
                             "(padding=True pads them)")
        length = max_length if pad_to == "max_length" else longest
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        input_ids, attention_mask = pad_sequences(rows, self.pad_token_id, side, length=length)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        pixel_values, frame_mask = stack_media(tensors)
        if pixel_values is not None:
            batch["pixel_values"] = pixel_values
        if frame_mask is not None:  # images beside videos, or videos of different lengths
            batch["frame_mask"] = frame_mask
        return BatchFeature(batch)

    @staticmethod
    def _media_per_sample(texts: list[str], images, videos, single: bool) -> list[list]:
        """``images`` / ``videos`` as given -> one list of media per text (a video as a list of frames)."""
        media = []
        for i, (sample_images, sample_videos) in enumerate(zip(_images_per_sample(images, len(texts), single),
                                                               _videos_per_sample(videos, len(texts), single))):
            if sample_images and sample_videos:
                raise ValueError(f"sample {i}: images= and videos= both give it media, whose marker order is "
                                 "then unknown; give all its media in marker order in images= (a video as a "
                                 "list of frames)")
            media.append(sample_images or sample_videos)
        return media

    # ----------------------------------------------------------------------------------------------- decode
    def decode(self, ids: torch.Tensor | Sequence[int], skip_special_tokens: bool = False, **kwargs) -> str:
        """The tokenizer's ``decode`` (``skip_special_tokens``, ``clean_up_tokenization_spaces``, ...)."""
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)

    def batch_decode(self, sequences: torch.Tensor | Sequence[Sequence[int]], skip_special_tokens: bool = False,
                     **kwargs) -> list[str]:
        """The tokenizer's ``batch_decode``: one string per row of ``sequences`` (B, L), prompts included."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)

    def batch_decode_new(self, sequences: torch.Tensor, prompt_length: int) -> list[str]:
        """Decode generated continuations: cut at ``<|endofchunk|>``, drop padding and specials."""
        out = []
        for row in sequences[:, prompt_length:].tolist():
            if self.end_of_chunk_token_id in row:
                row = row[: row.index(self.end_of_chunk_token_id)]
            out.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return out


def _padding_strategy(padding: bool | str) -> str | None:
    """transformers' ``padding`` values -> "longest", "max_length" or None (no padding)."""
    if padding is True or padding == "longest":
        return "longest"
    if padding is False or padding == "do_not_pad":
        return None
    if padding == "max_length":
        return "max_length"
    raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")


def _truncation_strategy(truncation: bool | str) -> bool:
    """transformers' ``truncation`` values for a single text per row -> whether to truncate."""
    if truncation in (True, "longest_first", "only_first"):
        return True
    if truncation in (False, "do_not_truncate"):
        return False
    raise ValueError(f"truncation must be True, False, 'longest_first', 'only_first' or 'do_not_truncate', "
                     f"got {truncation!r}")


def _is_frame(x) -> bool:
    """An image (PIL, HWC array, (C, H, W) tensor, path, bytes): not a list, not a 4-D array of frames, not a
    video file."""
    return not isinstance(x, (list, tuple)) and getattr(x, "ndim", None) != 4 and not is_video_file(x)


def _is_video(x) -> bool:
    """A video: a list of frames, an (F, H, W, C) array / (F, C, H, W) tensor, or a video file path."""
    if is_video_file(x):
        return True
    if isinstance(x, (list, tuple)):
        return bool(x) and all(_is_frame(f) for f in x)
    return getattr(x, "ndim", None) == 4


def _check_samples(media, n_texts: int, name: str) -> None:
    if not isinstance(media, (list, tuple)) or len(media) != n_texts:
        found = len(media) if isinstance(media, (list, tuple)) else type(media).__name__
        raise ValueError(f"{n_texts} texts but {name} for {found} samples")


def _images_per_sample(images, n_texts: int, single: bool) -> list[list]:
    """``images[i]``: the media of text ``i``, a list (a video in it a list of frames) or one image. A single text
    may also take one image or a flat list (``[[a, b]]`` is text 0's list, as before)."""
    if images is None:
        return [[] for _ in range(n_texts)]
    if single and not isinstance(images, (list, tuple)):
        return [[images]]
    if single and not (len(images) == 1 and isinstance(images[0], (list, tuple))):
        return [list(images)]
    _check_samples(images, n_texts, "images")
    return [[] if m is None else list(m) if isinstance(m, (list, tuple)) else [m] for m in images]


def _videos_per_sample(videos, n_texts: int, single: bool) -> list[list]:
    """``videos[i]``: the videos of text ``i``, a list of them or one video. A single text may also take one video
    or a flat list of videos. Each video comes back as a list of frames."""
    if videos is None:
        return [[] for _ in range(n_texts)]
    if single and (_is_video(videos) or (isinstance(videos, (list, tuple)) and all(map(_is_video, videos)))):
        videos = [videos]
    _check_samples(videos, n_texts, "videos")
    out = []
    for i, sample in enumerate(videos):
        sample = [] if sample is None else [sample] if _is_video(sample) else list(sample)
        for j, video in enumerate(sample):
            if not _is_video(video):
                raise ValueError(f"sample {i} video {j}: a video is a non-empty list of frames, an (F, H, W, C) "
                                 f"array / (F, C, H, W) tensor or a video file path, got {type(video).__name__}")
        out.append([video if is_video_file(video) else list(video) for video in sample])  # a file: decoded later
    return out


# Non-tensor fields a data collator adds to a batch (frozenvl.tasks.FlamingoCollator), so model(**batch) works.
BATCH_METADATA = frozenset({"keys", "kinds"})


def check_extra_arguments(where: str, extra: dict) -> None:
    """A misspelt argument (``pixel_value=``) must not be silently ignored."""
    unknown = sorted(set(extra) - BATCH_METADATA)
    if unknown:
        raise TypeError(f"{where} got unexpected arguments: {', '.join(unknown)}")
