"""Which image each text token may see (docs/architecture.md, "Media mask").

``text_time = cumsum(input_ids == <image>)`` along the sequence, inclusive, so an ``<image>`` token sees its own
image. A token sees image ``text_time`` only (default) or every image up to it (``only_immediate=False``), and never
an image of another packed document. Tokens that see no image get no cross-attention output at all: the caller
multiplies by ``has_media`` so their output is exactly zero (a fully masked softmax would be uniform, not zero).

One new token per row (a decoding step) with ``only_immediate`` sees at most one image: :func:`single_image_mask`
names that image instead of masking all of them, so the cross-attention runs over its ``n`` visual tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MediaMask:
    attn_bias: torch.Tensor | None  # (B, 1, L, T_img * n) additive float mask: 0 where allowed, dtype min elsewhere
    has_media: torch.Tensor  # (B, L, 1) 1.0 where the token sees at least one image, else 0.0
    # Instead of attn_bias, when each row has one token that sees at most one image: that image's index (B,)
    # (0 where the row sees none; has_media then zeroes its output), and the visual tokens per image.
    image_index: torch.Tensor | None = None
    tokens_per_media: int = 0


def text_time(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """(B, L) -> (B, L): number of ``<image>`` tokens at or before each position."""
    return (input_ids == image_token_id).long().cumsum(dim=-1)


def image_documents(input_ids: torch.Tensor, image_token_id: int, document_ids: torch.Tensor,
                    num_media: int) -> torch.Tensor:
    """(B, L) -> (B, T_img): the document id of each image (that of its ``<image>`` token); -1 for no image."""
    B = input_ids.shape[0]
    docs = torch.full((B, num_media), -1, dtype=torch.long, device=input_ids.device)
    is_image = input_ids == image_token_id
    index = (is_image.long().cumsum(-1) - 1).clamp(min=0)  # the image number at each <image> token
    keep = is_image & (index < num_media)
    rows = torch.arange(B, device=input_ids.device).unsqueeze(1).expand_as(input_ids)
    docs[rows[keep], index[keep]] = document_ids[keep].long()
    return docs


def build_media_mask(
    token_time: torch.Tensor,  # (B, L) text_time of the tokens being processed
    token_docs: torch.Tensor,  # (B, L) document id of those tokens
    media_docs: torch.Tensor,  # (B, T_img) document id of each image, -1 for padding images
    tokens_per_media: int,
    only_immediate: bool,
    dtype: torch.dtype,
) -> MediaMask:
    T = media_docs.shape[1]
    media_time = torch.arange(1, T + 1, device=token_time.device)  # (T,) images are numbered from 1
    tt = token_time.unsqueeze(-1)  # (B, L, 1)
    allowed = (media_time == tt) if only_immediate else (media_time <= tt)  # (B, L, T)
    allowed = allowed & (media_docs.unsqueeze(1) == token_docs.unsqueeze(-1)) & (media_docs.unsqueeze(1) >= 0)
    has_media = allowed.any(dim=-1, keepdim=True).to(dtype)  # (B, L, 1)
    allowed = allowed.repeat_interleave(tokens_per_media, dim=-1)  # (B, L, T*n)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    bias.masked_fill_(~allowed, torch.finfo(dtype).min)
    return MediaMask(attn_bias=bias.unsqueeze(1), has_media=has_media)


def single_image_mask(
    token_time: torch.Tensor,  # (B,) text_time of the one token of each row
    token_docs: torch.Tensor,  # (B,) its document id
    media_docs: torch.Tensor,  # (B, T_img) document id of each image, -1 for padding images
    tokens_per_media: int,
    dtype: torch.dtype,
) -> MediaMask:
    """The ``only_immediate`` rule for one token per row, as the index of the image it sees (no bias tensor).
    Equals :func:`build_media_mask` with ``L = 1``: the token sees image ``token_time`` if it exists and is of its
    document."""
    T = media_docs.shape[1]
    index = (token_time - 1).clamp(0, max(T - 1, 0))  # (B,)
    doc = media_docs.gather(1, index.unsqueeze(1)).squeeze(1) if T else torch.full_like(token_docs, -1)
    sees = (token_time >= 1) & (token_time <= T) & (doc == token_docs) & (doc >= 0)  # (B,)
    return MediaMask(attn_bias=None, has_media=sees.to(dtype).view(-1, 1, 1), image_index=index,
                     tokens_per_media=tokens_per_media)
