"""``build``: a Flamingo and its processor from an LM and a vision encoder (source strings or instances)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from frozenvl.flamingo.config import FlamingoConfig
from frozenvl.flamingo.model import Flamingo
from frozenvl.flamingo.processor import FlamingoProcessor
from frozenvl.pretrained import as_device, as_dtype


def build(
    lm: str | nn.Module = "embedded:smollm2-135m",
    vision: str | nn.Module = "embedded:efficientnet-lite0",
    tokenizer=None,
    config: FlamingoConfig | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | int | None = None,
    **config_overrides,
) -> tuple[Flamingo, FlamingoProcessor]:
    """Build a Flamingo around a frozen LM and a frozen vision encoder.

    ``lm``: ``"embedded:smollm2-135m"``, a folder, a Hub id, or a causal LM instance (then pass ``tokenizer``).
    ``vision``: see :func:`frozenvl.backbones.vision.build_vision`. Other keyword arguments override fields of
    :class:`FlamingoConfig` (e.g. ``cross_attn_every=4``).

    ``dtype`` (``torch.bfloat16`` or ``"bfloat16"``, ...): the whole model in that dtype, as transformers'
    ``from_pretrained(dtype=...)`` gives it - the frozen LM and vision encoder and the trainable parts (resampler,
    cross-attention, new-token rows, LoRA) alike, so ``model.dtype`` is that dtype and training updates
    parameters in it (for bf16 compute over fp32 weights, keep the default and use ``torch.autocast``, as the
    trainer's ``train.precision: bf16`` does). A source LM is loaded in ``dtype``; instances are cast in place.
    ``None`` (default): a source LM and the new parts in float32, instances as they are.
    ``device`` (``"cuda"``, ``"cuda:1"``, ``torch.device``, a GPU index): the whole model is moved there;
    a device this machine lacks is an error before anything is built.
    """
    target = None if device is None else as_device(device)
    config = replace(config or FlamingoConfig(), **config_overrides)
    model = Flamingo.from_backbones(config, lm, vision, tokenizer, None if dtype is None else as_dtype(dtype))
    if target is not None:
        model.to(target)
    processor = FlamingoProcessor(model.tokenizer, model.vision.transform, config.max_images, config.max_length)
    return model, processor


def load_pretrained(path, **kwargs) -> tuple[Flamingo, FlamingoProcessor]:
    """A saved Flamingo (see :meth:`Flamingo.save_pretrained`) and its processor; ``kwargs`` go to
    :meth:`Flamingo.from_pretrained` (``dtype=``, ``device=``, backbones, config overrides)."""
    model = Flamingo.from_pretrained(path, **kwargs)
    processor = FlamingoProcessor(model.tokenizer, model.vision.transform, model.config.max_images,
                                  model.config.max_length)
    return model, processor
