"""FLAME: language-image pre-training with a frozen LLM as the text encoder.

Library parts, one concept per module:

- ``prompts``: prompt sets (official raw / short / long as data), caption cleanup, stable hash;
- ``facet_mask``: the facet-decoupled attention layout and float mask;
- ``text_encoder``: frozen LLM -> (B, K, D) facet embeddings (FDA, prefix-cache and naive modes);
- ``store`` / ``caption_sources``: the resumable offline embedding store and its caption inputs;
- ``model`` / ``loss``: the trainable image tower and the multi-positive sigmoid / InfoNCE losses;
- ``inference`` / ``evaluate``: embeddings, zero-shot classification, retrieval metrics and loaders;
- ``cli``: ``frozenvl flame embed`` and ``frozenvl flame eval``.
"""

from frozenvl.flame.loss import MultiPositiveInfoNCELoss, MultiPositiveSigmoidLoss
from frozenvl.flame.model import FlameConfig, FlameModel, VisionTransformerConfig, flame_config
from frozenvl.flame.prompts import PromptSet, clean_caption, load_prompt_set
from frozenvl.flame.store import EmbeddingStore, StoreMismatchError, embed_to_store
from frozenvl.flame.text_encoder import FacetTextEncoder

__all__ = [
    "EmbeddingStore",
    "FacetTextEncoder",
    "FlameConfig",
    "FlameModel",
    "MultiPositiveInfoNCELoss",
    "MultiPositiveSigmoidLoss",
    "PromptSet",
    "StoreMismatchError",
    "VisionTransformerConfig",
    "clean_caption",
    "embed_to_store",
    "flame_config",
    "load_prompt_set",
]
