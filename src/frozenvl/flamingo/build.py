"""``build``: a Flamingo and its processor from an LM and a vision encoder (source strings or instances)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from frozenvl.flamingo.config import FlamingoConfig
from frozenvl.flamingo.model import Flamingo
from frozenvl.flamingo.processor import FlamingoProcessor


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
    config = replace(config or FlamingoConfig(), **config_overrides)
    model = Flamingo.from_backbones(config, lm, vision, tokenizer, dtype)
    processor = FlamingoProcessor(model.tokenizer, model.vision.transform, config.max_images, config.max_length)
    return model, processor


def load_pretrained(path, **kwargs) -> tuple[Flamingo, FlamingoProcessor]:
    """A saved Flamingo (see :meth:`Flamingo.save_pretrained`) and its processor."""
    model = Flamingo.from_pretrained(path, **kwargs)
    processor = FlamingoProcessor(model.tokenizer, model.vision.transform, model.config.max_images,
                                  model.config.max_length)
    return model, processor
