"""The CLIP baseline for FLAME: the same image tower, trained against a small text transformer from scratch.

Image side: exactly FLAME's (``VisionTransformer`` + per-token ``PatchHead`` into ``embed_dim``, mean over patch
tokens, L2 norm), with the same parameter names (``visual.*``, ``head.*``), so with the same seed both models start
from the same image weights. Text side: CLIP's, from open_clip: its BPE tokenizer (``simple_tokenizer``) and its
``TextTransformer`` (token and position embeddings, causal pre-norm blocks, final LayerNorm, the hidden state at
EOT, a linear projection into ``embed_dim``) with a small config (``TextTransformerConfig``), then L2 norm.
Everything trains.

The loss is FLAME's (``sigmoid`` or ``infonce``) with one positive per image (S = 1). For evaluation the text tower
is wrapped as an encoder with one facet (:meth:`ClipBaseline.text_encoder`), so FLAME's retrieval and zero-shot
code (``frozenvl.flame.inference`` / ``evaluate``) scores both models unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frozenvl.backbones.vit import VisionTransformer, VisionTransformerConfig
from frozenvl.config import Config, from_dict
from frozenvl.flame.loss import build_loss
from frozenvl.flame.model import PatchHead, preset_config
from frozenvl.flame.simple_tokenizer import SimpleTokenizer, TokenizerConfig
from frozenvl.pretrained import PretrainedModel


@dataclass
class TextTransformerConfig(Config):
    """open_clip's ``CLIPTextCfg`` sizes (ViT-B/16's text tower: width 512, 12 layers, 8 heads), small by default."""

    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0


@dataclass
class ClipBaselineConfig(Config):
    vision: VisionTransformerConfig = field(default_factory=VisionTransformerConfig)
    embed_dim: int = 576  # the joint space; FLAME's is the LLM's hidden size, use the same for the same head
    head_hidden: int = 4096
    text: TextTransformerConfig = field(default_factory=TextTransformerConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    loss: str = "sigmoid"


def baseline_config(preset: str, embed_dim: int = 576, text: TextTransformerConfig | dict[str, Any] | None = None,
                    tokenizer: TokenizerConfig | dict[str, Any] | None = None, **overrides: Any) -> ClipBaselineConfig:
    """The image tower of FLAME preset ``preset`` (same ViT, same head widths) with a trainable text tower;
    ``text`` / ``tokenizer`` (configs or their fields) and ``overrides`` are read by the config engine."""
    image = preset_config(preset, embed_dim)
    fields = {"vision": image.vision, "embed_dim": embed_dim, "head_hidden": image.head_hidden,
              "text": text if text is not None else {}, "tokenizer": tokenizer if tokenizer is not None else {}}
    return from_dict(ClipBaselineConfig, {**fields, **overrides})


def text_transformer(config: TextTransformerConfig, vocab_size: int, context_length: int, embed_dim: int
                     ) -> nn.Module:
    """open_clip's text tower: ids (B, context_length) -> (B, embed_dim), pooled at EOT (the largest id)."""
    from open_clip.transformer import TextTransformer

    return TextTransformer(context_length=context_length, vocab_size=vocab_size, width=config.width,
                           heads=config.heads, layers=config.layers, mlp_ratio=config.mlp_ratio,
                           output_dim=embed_dim, pool_type="argmax")


class ClipBaseline(PretrainedModel, nn.Module):
    """Saved whole by :meth:`save_pretrained` (``config.json`` + ``model.safetensors``), as are the training
    checkpoints of a CLIP-baseline run: both load with :meth:`from_pretrained`."""

    model_type = "clip_baseline"
    config_class = ClipBaselineConfig

    def __init__(self, config: ClipBaselineConfig):
        super().__init__()
        self.config = config
        # Built in FLAME's order (visual, head first): the same seed gives the same initial image tower.
        self.visual = VisionTransformer(config.vision)
        self.head = PatchHead(config.vision.width, config.head_hidden, config.embed_dim)
        self.tokenizer = SimpleTokenizer(config.tokenizer)
        self.text = text_transformer(config.text, self.tokenizer.vocab_size, config.tokenizer.max_length,
                                     config.embed_dim)
        self.loss = build_loss(config.loss)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) L2-normalised image embeddings (FLAME's image side)."""
        tokens = self.head(self.visual(images))  # (B, N, D)
        return F.normalize(tokens.mean(dim=1), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, max_length) -> (B, D) L2-normalised text embeddings. ``attention_mask`` is not needed:
        attention is causal and the embedding is read at EOT, so the padding after it is never seen (as in CLIP)."""
        return F.normalize(self.text(input_ids), dim=-1)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(texts))

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        image_features = self.encode_image(images)  # (B, D)
        text_features = self.encode_text(input_ids, attention_mask)  # (B, D)
        out = self.loss(image_features, text_features[:, None])  # one positive per image: (B, 1, D)
        return {**out, "image_features": image_features, "text_features": text_features}

    def text_encoder(self, batch_size: int = 256) -> BaselineTextEncoder:
        return BaselineTextEncoder(self, batch_size)


class BaselineTextEncoder:
    """The baseline's text tower behind the FLAME text-encoder interface: ``encode(captions) -> (B, 1, D)``."""

    num_facets = 1

    def __init__(self, model: ClipBaseline, batch_size: int = 256):
        self.model = model
        self.batch_size = batch_size

    @property
    def hidden_size(self) -> int:
        return self.model.config.embed_dim

    @torch.no_grad()
    def encode(self, captions: Sequence[str], clean: bool = True) -> torch.Tensor:
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions, not one string")
        self.model.eval()
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(captions), self.batch_size):
            batch = self.model.tokenize(captions[i:i + self.batch_size])
            out.append(self.model.encode_text(batch["input_ids"].to(device),
                                              batch["attention_mask"].to(device)).float().cpu())
        if not out:
            return torch.zeros(0, 1, self.hidden_size)
        return torch.cat(out)[:, None]  # (B, 1, D)

    def describe(self) -> dict:
        return {"text_encoder": "clip_baseline", "tokenizer": self.model.config.tokenizer.to_dict(),
                "eot_id": self.model.tokenizer.eot_id}
