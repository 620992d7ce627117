"""Fusing cross-attention into a frozen LM by wrapping its decoder layers (the LM itself is not rewritten).

Conditioning travels with the call, not on the layers: :meth:`Flamingo.forward` opens a :func:`conditioning`
scope holding a :class:`VisualContext` (visual tokens, the media mask of the tokens being processed, and a
per-call cache of cross-attention keys/values); every wrapped layer reads it while that scope is open. When the
scope closes, nothing is left behind, so a layer called outside a Flamingo call behaves exactly like the frozen
LM's layer. This works for any Hugging Face architecture, whatever arguments its model passes to its layers.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from frozenvl.flamingo.cross_attention import GatedCrossAttentionBlock, MaskedCrossAttention
from frozenvl.flamingo.media_mask import MediaMask


@dataclass
class VisualContext:
    media: torch.Tensor | None  # (B, T_img, n, Dv) visual tokens; None when the sequence has no image (yet)
    mask: MediaMask | None  # for the tokens of the current LM call; None without images
    # Cross-attention keys/values per fused layer, computed on first use and reused for every decoding step.
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # Keys/values of the first images of ``media``, from an earlier call (a cached prefix): only the images
    # after them are projected, and appended.
    past_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def keys_values(self, index: int, attn: MaskedCrossAttention) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Layer ``index``'s cross-attention keys/values over all of ``media``: (B, H, T_img*n, d) each; None
        without images."""
        if self.media is None:
            return None
        kv = self.kv.get(index)
        if kv is None:
            past = self.past_kv.get(index)
            if past is None:
                kv = attn.project_media(self.media)
            else:
                seen = past[0].shape[2] // self.media.shape[2]  # images already projected
                new_k, new_v = attn.project_media(self.media[:, seen:])
                kv = torch.cat([past[0], new_k], dim=2), torch.cat([past[1], new_v], dim=2)
            self.kv[index] = kv
        return kv


_ACTIVE: contextvars.ContextVar[VisualContext | None] = contextvars.ContextVar("frozenvl_visual_context",
                                                                                default=None)


@contextlib.contextmanager
def conditioning(context: VisualContext | None) -> Iterator[None]:
    token = _ACTIVE.set(context)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class FusedDecoderLayer(nn.Module):
    """A frozen decoder layer with a GATED XATTN-DENSE block run before it (inside a Flamingo call; outside one it
    is exactly the LM's layer). Without images the block's dense FFW still acts, as on every text token."""

    def __init__(self, layer: nn.Module, xattn: GatedCrossAttentionBlock, index: int):
        super().__init__()
        self.layer = layer
        self.xattn = xattn
        self.index = index

    def __getattr__(self, name: str):
        # The LM's model loop may read attributes of its layers (e.g. Qwen2's ``attention_type``).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("layer"), name)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        context = _ACTIVE.get()
        if context is not None:
            hidden_states = self.xattn(hidden_states, context.keys_values(self.index, self.xattn.attn), context.mask)
        return self.layer(hidden_states, *args, **kwargs)


def fused_layer_indices(num_layers: int, every: int, rule: str = "first") -> list[int]:
    """Which decoder layers get a cross-attention block before them.

    ``"first"``: layers 0, N, 2N, ... (the first layer always sees the image; with N=1 every layer);
    ``"openflamingo"``: layers i with (i + 1) % N == 0 (OpenFlamingo's rule, needed for its checkpoints).
    """
    if every < 1:
        raise ValueError(f"cross_attn_every must be >= 1, got {every}")
    if rule == "first":
        return [i for i in range(num_layers) if i % every == 0]
    if rule == "openflamingo":
        return [i for i in range(num_layers) if (i + 1) % every == 0]
    raise ValueError(f"unknown placement rule {rule!r}; choose 'first' or 'openflamingo'")
