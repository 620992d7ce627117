"""The dense feed-forward block shared by the Perceiver Resampler and the GATED XATTN-DENSE block."""

from __future__ import annotations

from torch import nn


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """Pre-norm MLP without biases: (..., dim) -> (..., dim). The layout OpenFlamingo checkpoints use
    (0=norm, 1=up, 3=down), so their weights load by name."""
    inner = dim * mult
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False)
    )
