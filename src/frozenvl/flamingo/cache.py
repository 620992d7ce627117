"""What one Flamingo call hands to the next: :class:`FlamingoCache`, and the selection of its rows.

Lifecycle. ``Flamingo.forward(..., use_cache=True)`` creates a cache; passing it back as ``cache=`` continues the
sequence and returns the next cache. That call extends the LM's KV cache inside (transformers appends to it), so
a cache is continued once. :meth:`FlamingoCache.select` returns a new cache and leaves its input as it was: a
prefix kept aside (few-shot demonstrations encoded once) is selected from, and each selection continued, as many
times as needed; beam search continues the selection of the rows it keeps.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

KeysValues = tuple[torch.Tensor, torch.Tensor]  # (B, H, T_img*n, d) each


@dataclass(frozen=True)
class FlamingoCache:
    """Everything needed to continue a sequence: pass it back as ``cache=`` with the next tokens."""

    past_key_values: Any  # the LM's transformers Cache
    media: torch.Tensor | None  # (B, T_img, n, Dv) visual tokens, or None if no image yet
    media_docs: torch.Tensor  # (B, T_img) document of each image, -1 for padding images
    attention_mask: torch.Tensor  # (B, L_seen) 1 for real tokens, 0 for padding
    last_time: torch.Tensor  # (B,) text_time of the last token seen
    last_doc: torch.Tensor  # (B,) document id of the last token seen
    xattn_kv: dict[int, KeysValues] = field(default_factory=dict)  # per fused layer, over all of ``media``

    def select(self, index: torch.Tensor, same_media: bool = False) -> FlamingoCache:
        """A new cache of rows ``index`` (beam reordering, repeating a prefix for several continuations); this
        cache is left as it was.

        ``same_media=True`` says every row ``i`` already holds the images of row ``index[i]`` (beams of one
        prompt): the visual tokens and their cross-attention keys and values, the largest part of the cache, are
        then shared with this cache instead of gathered (no call writes into them: a continuation that brings
        images builds new tensors).
        """
        media, media_docs, xattn_kv = self.media, self.media_docs, self.xattn_kv
        if not same_media:
            media = None if media is None else media[index]
            media_docs = media_docs[index]
            xattn_kv = {k: (kk[index], vv[index]) for k, (kk, vv) in xattn_kv.items()}
        return FlamingoCache(
            past_key_values=select_lm_cache(self.past_key_values, index),
            media=media,
            media_docs=media_docs,
            attention_mask=self.attention_mask[index],
            last_time=self.last_time[index],
            last_doc=self.last_doc[index],
            xattn_kv=dict(xattn_kv),
        )


def select_lm_cache(cache: Any, index: torch.Tensor) -> Any:
    """A new transformers cache holding rows ``index`` of ``cache`` (batch dimension); ``cache`` is left as it was.

    Each layer of the dynamic caches that transformers builds for a forward (full attention, and sliding window for
    Mistral, Gemma 2/3 and other hybrids) is copied as an object, and the layer's own ``reorder_cache`` then
    replaces the copy's tensors by gathered ones (``index_select``: new tensors, the allocation an in-place reorder
    makes too). Layers that write into their tensors (static caches, offloading and linear-attention states) are
    deep-copied before they are reordered: correct for any cache, at the cost of one more copy.
    """
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None)
    if layers is None or not hasattr(cache, "reorder_cache"):
        raise TypeError(f"the LM's cache {type(cache).__name__} cannot be reordered")
    if getattr(cache, "offloading", False) or any(type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer)
                                                  for layer in layers):
        selected = copy.deepcopy(cache)
        selected.reorder_cache(index)
        return selected
    selected = copy.copy(cache)
    selected.layers = []
    for layer in layers:
        layer = copy.copy(layer)  # settings (window, lengths) copied; tensors shared until reorder replaces them
        layer.reorder_cache(index)
        selected.layers.append(layer)
    return selected


def left_pad_concat(caches: Sequence[FlamingoCache]) -> FlamingoCache:
    """One cache of the rows of ``caches`` (in their order), each left padded to the longest sequence.

    Each input cache holds rows whose real tokens are contiguous at the right (a prefix and a query with no padding
    between them). The padding added here goes *before* each row's whole sequence, where a left-padded batch of the
    full prompts has it, so every position scheme sees what it sees for the prompt alone: rotary and absolute
    positions come from the attention mask, and the key distances of ALiBi (MPT) and of sliding windows (Mistral,
    Gemma 2) count no padding. The LM cache's layers are padded with zeros on the left (masked by the attention
    mask); a sliding-window layer keeps its last ``window - 1`` slots, so it is padded to the longest of those and
    its token count is the longest row's, as the left-padded batch's would be.
    """
    if len(caches) == 1:
        return caches[0]
    length = max(c.attention_mask.shape[1] for c in caches)
    media = None if caches[0].media is None else torch.cat([c.media for c in caches])
    return FlamingoCache(
        past_key_values=_left_pad_concat_lm_caches([c.past_key_values for c in caches]),
        media=media,
        media_docs=torch.cat([c.media_docs for c in caches]),
        attention_mask=torch.cat([F.pad(c.attention_mask, (length - c.attention_mask.shape[1], 0)) for c in caches]),
        last_time=torch.cat([c.last_time for c in caches]),
        last_doc=torch.cat([c.last_doc for c in caches]),
        xattn_kv={i: (torch.cat([c.xattn_kv[i][0] for c in caches]), torch.cat([c.xattn_kv[i][1] for c in caches]))
                  for i in caches[0].xattn_kv},
    )


def _left_pad_concat_lm_caches(caches: Sequence[Any]) -> Any:
    """The transformers caches' rows concatenated: each layer's keys/values left padded with zeros to the longest,
    and the states of linear-attention layers (Mamba's in Jamba) concatenated as they are (a state has no token
    axis: a row encoded without padding has the state of its prompt alone)."""
    from transformers import cache_utils as cu

    key_value = (cu.DynamicLayer, cu.DynamicSlidingWindowLayer)
    linear = tuple(getattr(cu, name) for name in ("LinearAttentionLayer", "LinearAttentionAndFullAttentionLayer",
                                                  "LinearAttentionAndSlidingWindowAttentionLayer") if hasattr(cu, name))
    for cache in caches:
        layers = getattr(cache, "layers", None)
        if layers is None or getattr(cache, "offloading", False) or any(
                type(layer) not in key_value + linear for layer in layers):
            kinds = sorted({type(layer).__name__ for layer in layers or []}) or [type(cache).__name__]
            raise TypeError(f"prompts of different lengths on a cached prefix need a dynamic cache (full, "
                            f"sliding-window or linear-attention layers); this LM's cache has {', '.join(kinds)}: "
                            "give the prompts one at a time or of one length")
    merged = copy.copy(caches[0])
    merged.layers = []
    for layers in zip(*(cache.layers for cache in caches)):
        layer = copy.copy(layers[0])  # settings (window, kernel sizes) kept; tensors replaced below
        if isinstance(layer, linear):
            layer.conv_states = _concat_states(layers, "conv_states", "is_conv_states_initialized")
            layer.recurrent_states = _concat_states(layers, "recurrent_states", "is_recurrent_states_initialized")
        if isinstance(layer, cu.DynamicLayer):
            slots = max(one.keys.shape[-2] for one in layers)
            layer.keys = torch.cat([F.pad(one.keys, (0, 0, slots - one.keys.shape[-2], 0)) for one in layers])
            layer.values = torch.cat([F.pad(one.values, (0, 0, slots - one.values.shape[-2], 0)) for one in layers])
            if isinstance(layer, cu.DynamicSlidingWindowLayer):
                layer.cumulative_length = max(one.cumulative_length for one in layers)
        merged.layers.append(layer)
    return merged


def _concat_states(layers: Sequence[Any], name: str, initialized: str) -> dict[int, Any]:
    """A linear-attention layer's states ``name`` (one tensor per state index) of ``layers``' rows, concatenated."""
    first = layers[0]
    return {i: torch.cat([getattr(one, name)[i] for one in layers]) if getattr(first, initialized)[i] else state
            for i, state in getattr(first, name).items()}
