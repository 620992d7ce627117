"""GATED XATTN-DENSE: text queries attend to visual tokens, then a dense FFW; each added through tanh(alpha).

With the gates initialised to 0 the block is the identity, so a fresh Flamingo reproduces its frozen LM exactly.
Ablation switches (Flamingo paper, Table 3): ``gating="none"`` (no tanh gate and no gate parameter: a plain
residual) and ``kind="vanilla"`` (cross-attention only, no dense FFW).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from frozenvl.flamingo.feed_forward import feed_forward
from frozenvl.flamingo.media_mask import MediaMask


class TanhGate(nn.Module):
    """y = tanh(alpha) * x with alpha initialised to 0."""

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.alpha.tanh().to(x.dtype)


def _gate(gating: str) -> nn.Module:
    # "none": a plain residual with no parameter at all (an unused trainable alpha would make DDP without
    # find_unused_parameters fail, and an optimiser decay it for nothing)
    return TanhGate() if gating == "tanh" else nn.Identity()


class MaskedCrossAttention(nn.Module):
    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_visual, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def project_media(self, media: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T_img, n, Dv) visual tokens -> keys, values (B, H, T_img*n, d). Computed once per prompt."""
        B = media.shape[0]
        k, v = self.to_kv(media.reshape(B, -1, media.shape[-1])).chunk(2, dim=-1)
        return (k.view(B, k.shape[1], self.heads, -1).transpose(1, 2),
                v.view(B, v.shape[1], self.heads, -1).transpose(1, 2))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: MediaMask) -> torch.Tensor:
        # x: (B, L, D) text; kv: (B, H, S, d); mask.attn_bias: (B, 1, L, S) -> (B, L, D)
        B, L, _ = x.shape
        q = self.to_q(self.norm(x)).view(B, L, self.heads, -1).transpose(1, 2)  # (B, H, L, d)
        k, v = kv
        if mask.image_index is not None:  # one token per row that sees one image: only its n visual tokens
            n, index = mask.tokens_per_media, mask.image_index
            if bool((index == index[0]).all()):  # the usual case (every row at its last image): a view, no copy
                i = int(index[0])
                k, v = k[:, :, i * n:(i + 1) * n], v[:, :, i * n:(i + 1) * n]  # (B, H, n, d)
            else:
                rows = torch.arange(B, device=x.device)
                k = k.unflatten(2, (-1, n))[rows, :, index]  # (B, H, n, d)
                v = v.unflatten(2, (-1, n))[rows, :, index]
            out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
        else:
            out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype),
                                                 attn_mask=mask.attn_bias.to(q.dtype))
        out = self.to_out(out.transpose(1, 2).reshape(B, L, -1))
        return out * mask.has_media.to(out.dtype)  # exactly zero for tokens that see no image


class GatedCrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8, ff_mult: int = 4,
                 gating: str = "tanh", kind: str = "gated_dense"):
        super().__init__()
        if gating not in ("tanh", "none"):
            raise ValueError(f"gating must be 'tanh' or 'none', got {gating!r}")
        if kind not in ("gated_dense", "vanilla"):
            raise ValueError(f"cross-attention kind must be 'gated_dense' or 'vanilla', got {kind!r}")
        self.attn = MaskedCrossAttention(dim, dim_visual, dim_head, heads)
        self.attn_gate = _gate(gating)
        self.ff = feed_forward(dim, ff_mult) if kind == "gated_dense" else None
        self.ff_gate = _gate(gating) if kind == "gated_dense" else None

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None,
                mask: MediaMask | None) -> torch.Tensor:
        # kv None: no image in the sequence, so no token sees one and the cross-attention adds exactly zero
        if kv is not None:
            x = x + self.attn_gate(self.attn(x, kv, mask))  # (B, L, D)
        if self.ff is not None:
            x = x + self.ff_gate(self.ff(x))
        return x
