"""Fusing cross-attention into a frozen LM by wrapping its decoder layers (the LM itself is not rewritten).

Conditioning travels with the call, not on the layers. For each LM call :meth:`Flamingo.forward` creates a
:class:`VisualContext` (the media mask of the tokens being processed, the cross-attention keys/values already
known, the visual tokens whose keys/values are still to be projected) and opens a :func:`conditioning` scope
(a context variable) around the LM call; every fused layer reads it there. A fused layer that projects keys/values
reports them in the context's ``projected``, which the forward reads after the call and returns in its
cache. They are projected inside the fused layer's own forward because that is where its weights are whole (an
FSDP unit gathers them there). When the scope closes nothing is left behind: the context belongs to that one
call, and a layer called outside a Flamingo call behaves exactly like the frozen LM's layer. This works for any
Hugging Face architecture, whatever arguments its model passes to its layers.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from frozenvl.flamingo.cache import KeysValues
from frozenvl.flamingo.cross_attention import GatedCrossAttentionBlock
from frozenvl.flamingo.media_mask import MediaMask


@dataclass(frozen=True)
class VisualContext:
    """One LM call's conditioning: created by :meth:`Flamingo.forward`, read by the fused layers during the call,
    then read back by the forward (``projected``) and dropped."""

    mask: MediaMask | None  # for the tokens of the current LM call; None without images
    # Per fused layer, the keys/values of the images of earlier calls (a cached prefix): used as they are when this
    # call brings no new image.
    past_keys_values: Mapping[int, KeysValues] = field(default_factory=dict)
    # All visual tokens (B, T_img, n, Dv) when the call brings new images: each fused layer projects the images
    # after those of ``past_keys_values`` and appends them.
    media: torch.Tensor | None = None
    # Written during the call: each fused layer's keys/values over all of ``media``.
    projected: dict[int, KeysValues] = field(default_factory=dict)

    def keys_values_for(self, layer: FusedDecoderLayer) -> KeysValues | None:
        """``layer``'s keys/values for this call (projected now if the call brings images); None without images."""
        past = self.past_keys_values.get(layer.index)
        if self.media is None:
            return past
        kv = layer.keys_values(self.media, past)
        self.projected[layer.index] = kv
        return kv


_ACTIVE: contextvars.ContextVar[VisualContext | None] = contextvars.ContextVar("frozenvl_visual_context",
                                                                                default=None)


@contextlib.contextmanager
def conditioning(context: VisualContext | None) -> Iterator[None]:
    """The fused layers see ``context`` inside this scope only."""
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

    def keys_values(self, media: torch.Tensor, past: KeysValues | None = None) -> KeysValues:
        """This layer's cross-attention keys/values over visual tokens ``media`` (B, T_img, n, Dv):
        (B, H, T_img*n, d) each. ``past``: those of the first images of ``media``, from an earlier call (a cached
        prefix): only the images after them are projected, and appended."""
        if past is None:
            return self.xattn.attn.project_media(media)
        seen = past[0].shape[2] // media.shape[2]  # images already projected
        new_k, new_v = self.xattn.attn.project_media(media[:, seen:])
        return torch.cat([past[0], new_k], dim=2), torch.cat([past[1], new_v], dim=2)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        context = _ACTIVE.get()
        if context is not None:
            hidden_states = self.xattn(hidden_states, context.keys_values_for(self), context.mask)
        return self.layer(hidden_states, *args, **kwargs)


def fused_layer_indices(num_layers: int, every: int, rule: str = "first") -> list[int]:
    """Which decoder layers get a cross-attention block before them.

    ``"first"``: layers 0, N, 2N, ... (the first layer always sees the image; with N=1 every layer);
    ``"openflamingo"``: layers i with (i + 1) % N == 0 (OpenFlamingo's rule, needed for its checkpoints);
    ``"upper"``: the ``"first"`` rule on the upper half only, layers H, H + N, H + 2N, ... with H = num_layers // 2.
    Training is then cheaper: autograd stops at the lowest trainable block, so the backward pass never enters the
    lower half of the frozen LM (about 1.5x per step on the demo's SmolLM2-135M, 30 layers: 15, 19, 23, 27).
    """
    if every < 1:
        raise ValueError(f"cross_attn_every must be >= 1, got {every}")
    if rule == "first":
        return [i for i in range(num_layers) if i % every == 0]
    if rule == "openflamingo":
        return [i for i in range(num_layers) if (i + 1) % every == 0]
    if rule == "upper":
        return [i for i in range(num_layers // 2, num_layers) if (i - num_layers // 2) % every == 0]
    raise ValueError(f"unknown placement rule {rule!r}; choose 'first', 'openflamingo' or 'upper'")
