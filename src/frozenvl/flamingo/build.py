"""``build``: a Flamingo and its processor from an LM and a vision encoder (source strings or instances)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from frozenvl.backbones.language import build_frozen_lm
from frozenvl.backbones.vision import build_vision
from frozenvl.flamingo.config import FlamingoConfig
from frozenvl.flamingo.model import Flamingo
from frozenvl.flamingo.processor import FlamingoProcessor


def _describe(source) -> str:
    return source if isinstance(source, str) else f"<instance:{type(source).__name__}>"


def build(
    lm: str | nn.Module = "embedded:smollm2-135m",
    vision: str | nn.Module = "embedded:efficientnet-lite0",
    tokenizer=None,
    config: FlamingoConfig | None = None,
    dtype: torch.dtype = torch.float32,
    **config_overrides,
) -> tuple[Flamingo, FlamingoProcessor]:
    """Build a Flamingo around a frozen LM and a frozen vision encoder.

    ``lm``: ``"embedded:smollm2-135m"``, a folder, a Hub id, or a causal LM instance (then pass ``tokenizer``).
    ``vision``: see :func:`frozenvl.backbones.vision.build_vision`. Other keyword arguments override fields of
    :class:`FlamingoConfig` (e.g. ``cross_attn_every=4``).
    """
    config = config or FlamingoConfig()
    config = replace(config, lm=_describe(lm), vision=_describe(vision), **config_overrides)
    frozen_lm = build_frozen_lm(lm, tokenizer, dtype)
    encoder = build_vision(vision)
    model = Flamingo(config, frozen_lm, encoder)
    processor = FlamingoProcessor(frozen_lm.tokenizer, encoder.transform, config.max_images, config.max_length)
    return model, processor


def load_pretrained(path, **kwargs) -> tuple[Flamingo, FlamingoProcessor]:
    """A saved Flamingo (see :meth:`Flamingo.save_pretrained`) and its processor."""
    model = Flamingo.from_pretrained(path, **kwargs)
    processor = FlamingoProcessor(model.tokenizer, model.vision.transform, model.config.max_images,
                                  model.config.max_length)
    return model, processor
