"""Resamplers: a variable number of visual features per image or video -> a fixed number of visual tokens.

- :class:`PerceiverResampler` (the paper's): learned latents cross-attend to concat(features, latents);
  for video, a learned temporal embedding per frame index is added before the frames are flattened.
- :class:`MLPResampler` and :class:`TransformerResampler`: the paper's ablation alternatives (Table 3).

All take features (B, T_img, F, N, D) — T_img media per sample, F frames per medium (1 for images), N features
per frame — and return visual tokens (B, T_img, n_tokens, D). A batch that mixes media of different frame counts
(an image beside a video) pads them to F frames and passes ``frame_mask`` (B, T_img, F), True on real frames: the
padded frames are never read, so a medium gives the same visual tokens as in a batch of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from frozenvl.flamingo.feed_forward import feed_forward


class PerceiverAttention(nn.Module):
    """Latents (queries) attend over concat(features, latents) (keys/values)."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, T, M, D) features; latents: (B, T, n, D); key_mask: (B, T, M) True where a feature may be read
        B, T, n, _ = latents.shape
        x = self.norm_media(x)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)  # (B, T, n, H*d)
        k, v = self.to_kv(torch.cat([x, latents], dim=2)).chunk(2, dim=-1)  # (B, T, M+n, H*d)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, S, H*d) -> (B*T, H, S, d)
            return t.reshape(B * T, t.shape[2], self.heads, -1).transpose(1, 2)

        mask = None
        if key_mask is not None:  # the latents are always keys; the features of padded frames never are
            mask = torch.cat([key_mask, key_mask.new_ones(B, T, n)], dim=2).reshape(B * T, 1, 1, -1)
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)  # (B*T, H, n, d)
        out = out.transpose(1, 2).reshape(B, T, n, -1)
        return self.to_out(out)


class PerceiverResampler(nn.Module):
    def __init__(self, dim: int, depth: int = 6, dim_head: int = 64, heads: int = 8, num_latents: int = 64,
                 max_frames: int | None = 8, ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        # None = no temporal embeddings (OpenFlamingo's checkpoints have none).
        self.frame_embs = nn.Parameter(torch.zeros(max_frames, dim)) if max_frames else None
        if self.frame_embs is not None:
            nn.init.normal_(self.frame_embs, std=0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)]) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.num_tokens = num_latents

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, T, F, N, D), frame_mask: (B, T, F) -> (B, T, n, D)
        B, T, Fr, N, D = x.shape
        if self.frame_embs is not None:
            if Fr > self.frame_embs.shape[0]:
                raise ValueError(f"{Fr} frames per video but the resampler has temporal embeddings for "
                                 f"{self.frame_embs.shape[0]}; raise max_frames in the config")
            x = x + self.frame_embs[:Fr].view(1, 1, Fr, 1, D).to(x.dtype)
        x = x.reshape(B, T, Fr * N, D)  # flatten frames: the latents see every frame at once
        key_mask = None if frame_mask is None else frame_mask.repeat_interleave(N, dim=2)  # (B, T, F*N)
        latents = self.latents.to(x.dtype).expand(B, T, -1, -1)
        for attn, ff in self.layers:
            latents = attn(x, latents, key_mask) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


class MLPResampler(nn.Module):
    """Ablation: mean-pool each medium's features, then an MLP to ``num_tokens`` visual tokens."""

    def __init__(self, dim: int, num_latents: int = 64, max_frames: int | None = 8, ff_mult: int = 4, **_):
        super().__init__()
        self.frame_embs = nn.Parameter(torch.zeros(max_frames, dim)) if max_frames else None
        self.num_tokens = num_latents
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult), nn.GELU(),
                                 nn.Linear(dim * ff_mult, dim * num_latents))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, T, F, N, D), frame_mask: (B, T, F) -> (B, T, n, D)
        B, T, Fr, N, D = x.shape
        if self.frame_embs is not None:
            x = x + self.frame_embs[:Fr].view(1, 1, Fr, 1, D).to(x.dtype)
        if frame_mask is None:
            pooled = x.mean(dim=(2, 3))  # (B, T, D)
        else:  # the mean over the real frames only
            weights = frame_mask.to(x.dtype)[..., None, None]  # (B, T, F, 1, 1)
            count = frame_mask.sum(dim=2, keepdim=True).to(x.dtype) * N  # (B, T, 1) features read
            pooled = (x * weights).sum(dim=(2, 3)) / count.clamp(min=1)  # (B, T, D)
        return self.norm(self.mlp(pooled).view(B, T, self.num_tokens, D))


class TransformerResampler(nn.Module):
    """Ablation: a plain Transformer over the features; the first ``num_tokens`` outputs are the visual tokens.

    Unlike the Perceiver, the features are updated too (full self-attention over features and latents).
    """

    def __init__(self, dim: int, depth: int = 6, heads: int = 8, num_latents: int = 64, max_frames: int | None = 8,
                 ff_mult: int = 4, **_):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.frame_embs = nn.Parameter(torch.zeros(max_frames, dim)) if max_frames else None
        layer = nn.TransformerEncoderLayer(dim, heads, dim * ff_mult, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.num_tokens = num_latents

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, T, F, N, D), frame_mask: (B, T, F) -> (B, T, n, D)
        B, T, Fr, N, D = x.shape
        if self.frame_embs is not None:
            x = x + self.frame_embs[:Fr].view(1, 1, Fr, 1, D).to(x.dtype)
        x = x.reshape(B * T, Fr * N, D)
        latents = self.latents.to(x.dtype).expand(B * T, -1, -1)
        padding = None  # (B*T, n + F*N), True where a token is padding and must not be attended to
        if frame_mask is not None:
            real = frame_mask.reshape(B * T, Fr).repeat_interleave(N, dim=1)
            padding = torch.cat([real.new_ones(B * T, self.num_tokens), real], dim=1).logical_not()
        out = self.encoder(torch.cat([latents, x], dim=1), src_key_padding_mask=padding)[:, : self.num_tokens]
        return self.norm(out).view(B, T, self.num_tokens, D)


RESAMPLERS = {"perceiver": PerceiverResampler, "mlp": MLPResampler, "transformer": TransformerResampler}


def build_resampler(kind: str, dim: int, depth: int, dim_head: int, heads: int, num_latents: int,
                    max_frames: int | None, ff_mult: int) -> nn.Module:
    if kind not in RESAMPLERS:
        raise ValueError(f"unknown resampler {kind!r}; choose one of {', '.join(RESAMPLERS)}")
    return RESAMPLERS[kind](dim=dim, depth=depth, dim_head=dim_head, heads=heads, num_latents=num_latents,
                            max_frames=max_frames, ff_mult=ff_mult)
