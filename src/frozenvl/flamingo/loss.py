"""Flamingo's objective: next-token cross-entropy over the text, with targets masked (docs/architecture.md,
"Loss mask").

Ignored targets: padding; ``<image>`` tokens; text before the first image; text after an ``<|endofchunk|>``
until the next ``<image>`` (in interleaved pages that text belongs to no image). ``<|endofchunk|>`` itself is a
target: the model must learn where a chunk ends, which is also where generation stops. In a packed row
(``document_ids``, frozenvl.flamingo.packing) the rules hold per document, and a document's first token is never
the target of the previous document's last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def flamingo_labels(labels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    image_token_id: int, end_of_chunk_token_id: int,
                    document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) labels aligned with ``input_ids`` (HF convention: shifted inside the loss) -> masked copy.
    ``document_ids`` (B, L): the documents of a packed row (None: one per row)."""
    out = labels.clone()
    is_image = input_ids == image_token_id
    is_eoc = input_ids == end_of_chunk_token_id
    if attention_mask is not None:
        out[attention_mask == 0] = IGNORE_INDEX
    out[is_image] = IGNORE_INDEX
    images_seen = is_image.long().cumsum(-1)  # (B, L) images at or before each position
    if document_ids is not None:
        starts = torch.ones_like(is_image)
        starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
        out[starts] = IGNORE_INDEX  # a document's first token: nothing of its own document before it
        # Images of earlier documents do not count: subtract those seen before the document started.
        images_seen = images_seen - torch.where(starts, images_seen - is_image.long(), 0).cummax(-1).values
    out[images_seen == 0] = IGNORE_INDEX
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    last_image = torch.where(is_image, positions, -1).cummax(-1).values  # (B, L) latest <image> at or before p
    last_eoc = torch.where(is_eoc, positions, -1).cummax(-1).values
    last_eoc_before = torch.cat([torch.full_like(last_eoc[:, :1], -1), last_eoc[:, :-1]], dim=1)  # strictly before
    out[last_eoc_before > last_image] = IGNORE_INDEX
    return out


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the targets that are not ignored. (B, L, V), (B, L) -> ()"""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    if not bool((shift_labels != IGNORE_INDEX).any()):
        return shift_logits.sum() * 0.0  # nothing to learn from: a zero that keeps the graph
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)
