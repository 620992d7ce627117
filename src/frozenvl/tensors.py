"""Batching helpers shared by the processors, the tokenizers and the scorers: token padding and media stacking.

Notation: B rows, L the padded length, T_img the most media of a row, F frames per medium (1 for an image).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_padding_side(side: str) -> str:
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    return side


def pad_sequences(seqs: Sequence[Sequence[int] | torch.Tensor], pad_value: int, side: str = "right",
                  length: int | None = None, device: torch.device | str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows -> ``ids`` (B, L) long, filled with ``pad_value``, and ``mask`` (B, L) long, 1 on real tokens.

    ``side="left"`` puts the padding before the tokens (prompts that generation continues), ``"right"`` after.
    ``length`` defaults to the longest row.
    """
    check_padding_side(side)
    rows = [torch.as_tensor(s, dtype=torch.long) for s in seqs]
    longest = max((len(r) for r in rows), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a row of {longest} tokens does not fit length={length}")
    ids = torch.full((len(rows), length), pad_value, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), length), dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        real = slice(length - len(row), length) if side == "left" else slice(0, len(row))
        ids[i, real] = row
        mask[i, real] = 1
    return ids, mask


def stack_media(rows: Sequence[Sequence[torch.Tensor]]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-row media, each (F, C, H, W) -> ``pixel_values`` (B, T_img, F, C, H, W) and ``frame_mask``.

    Rows with fewer media are padded with zero media (their ``<image>`` tokens are absent, so the padding is never
    attended to). Media with fewer frames than the longest (an image beside a video, videos of different lengths)
    are padded with zero frames, and ``frame_mask`` (B, T_img, F), True on real frames, says which frames the
    resampler may read; it is None when every medium has the same number of frames. (None, None) without media.
    """
    flat = [m for row in rows for m in row]
    if not flat:
        return None, None
    shapes = {tuple(m.shape[1:]) for m in flat}
    if len(shapes) > 1:
        raise ValueError(f"all images in a batch need one shape after the transform, got {sorted(shapes)}")
    frames = max(m.shape[0] for m in flat)
    out = torch.zeros(len(rows), max(len(row) for row in rows), frames, *flat[0].shape[1:])
    mask = torch.zeros(out.shape[:3], dtype=torch.bool)
    for i, row in enumerate(rows):
        for j, medium in enumerate(row):
            out[i, j, : medium.shape[0]] = medium
            mask[i, j, : medium.shape[0]] = True
    mixed = any(m.shape[0] != frames for m in flat)
    return out, (mask if mixed else None)


def as_frames(pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, T_img, C, H, W) images or (B, T_img, F, C, H, W) videos -> (B, T_img, F, C, H, W), an image one frame."""
    if pixel_values.ndim == 5:
        pixel_values = pixel_values.unsqueeze(2)
    if pixel_values.ndim != 6:
        raise ValueError("pixel_values must be (B, T_img, C, H, W) or (B, T_img, F, C, H, W), "
                         f"got shape {tuple(pixel_values.shape)}")
    return pixel_values
