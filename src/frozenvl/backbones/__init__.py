"""Frozen pretrained backbones: causal language models and vision encoders."""

from frozenvl.backbones.embeddings import DecoupledEmbedding, DecoupledLinear
from frozenvl.backbones.language import (
    FrozenLanguageModel,
    add_media_tokens,
    find_decoder_layers,
    load_causal_lm,
)

__all__ = [
    "DecoupledEmbedding",
    "DecoupledLinear",
    "FrozenLanguageModel",
    "add_media_tokens",
    "find_decoder_layers",
    "load_causal_lm",
]
