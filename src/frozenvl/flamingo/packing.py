"""Padding-free batches: a micro-batch's samples end to end in one row (docs/training.md, "Packed batches").

A padded batch of short pairs and longer pages spends about a third of its slots on padding, and the frozen LM
pays for every slot. :func:`pack_batch` lays the samples' real tokens one after another in a single row, with

- ``position_ids`` restarting at 0 for each sample: transformers' padding-free convention (no ``attention_mask``,
  positions that restart), from which the LM builds a block-diagonal causal mask, so no sample sees another;
- ``document_ids`` (the sample's index), so no token sees another sample's images in the cross-attention, and the
  loss mask (:func:`frozenvl.flamingo.loss.flamingo_labels`) applies its rules per sample;
- the samples' media in order, without the zero media that padded the shorter samples.

The loss over a packed row is the padded batch's loss (the same targets, each predicted from the same tokens):
``tests/flamingo/test_packing.py`` checks it, and the gradients, against the padded batch on several LM families.
Not every LM honours restarting positions (ALiBi distances count slots, some take no ``position_ids``):
:func:`lm_packs_sequences` asks the LM itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def pack_batch(batch: Mapping[str, Any], image_token_id: int) -> dict[str, Any]:
    """A processor batch (``input_ids`` / ``attention_mask`` (B, L), padded on either side; ``pixel_values``
    (B, T_img, F, C, H, W) and ``frame_mask`` (B, T_img, F) when there are media) -> one packed row:
    ``input_ids``, ``position_ids`` and ``document_ids`` (1, N) with N the real tokens of the batch,
    ``pixel_values`` (1, T, F, C, H, W) with T the batch's real media, ``frame_mask`` (1, T, F) when given. Other
    keys are kept as they are. No ``attention_mask``: nothing in the row is padding."""
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"].bool()  # (B, L)
    rows = [ids[mask] for ids, mask in zip(input_ids, attention_mask)]  # each (n_i,)
    out = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "pixel_values", "frame_mask")}
    out["input_ids"] = torch.cat(rows).unsqueeze(0)  # (1, N)
    out["position_ids"] = torch.cat([torch.arange(len(r)) for r in rows]).unsqueeze(0)
    out["document_ids"] = torch.cat([torch.full((len(r),), i, dtype=torch.long) for i, r in enumerate(rows)]
                                    ).unsqueeze(0)
    media = [int((r == image_token_id).sum()) for r in rows]  # each sample's media, in marker order
    if batch.get("pixel_values") is not None:
        pixels = batch["pixel_values"]  # (B, T_img, F, C, H, W)
        out["pixel_values"] = torch.cat([pixels[i, :n] for i, n in enumerate(media)]).unsqueeze(0)
        if batch.get("frame_mask") is not None:
            frames = batch["frame_mask"]  # (B, T_img, F)
            out["frame_mask"] = torch.cat([frames[i, :n] for i, n in enumerate(media)]).unsqueeze(0)
    elif any(media):
        raise ValueError(f"the batch has {sum(media)} <image> tokens but no pixel_values")
    return out


@torch.no_grad()
def lm_packs_sequences(lm: torch.nn.Module) -> bool:
    """Whether ``lm`` keeps packed sequences apart when given restarting ``position_ids`` and no attention mask:
    the logits of a second sequence packed after a first must be those of the second alone (closer to them, by a
    factor 100, than the logits of the same tokens read as one sequence)."""
    try:
        first = torch.tensor([[3, 4, 5, 6]])
        second = torch.tensor([[7, 8, 9]])
        device = next(lm.parameters()).device
        packed_ids = torch.cat([first, second], dim=1).to(device)  # (1, 7)
        restart = torch.tensor([[0, 1, 2, 3, 0, 1, 2]], device=device)
        packed = lm(input_ids=packed_ids, position_ids=restart, use_cache=False).logits[0, 4:].float()
        alone = lm(input_ids=second.to(device), use_cache=False).logits[0].float()
        joined = lm(input_ids=packed_ids, use_cache=False).logits[0, 4:].float()
    except (TypeError, ValueError):  # no position_ids argument, or a model that refuses them
        return False
    leak = (joined - alone).abs().max()
    return bool((packed - alone).abs().max() <= 0.01 * leak) and bool(leak > 0)
