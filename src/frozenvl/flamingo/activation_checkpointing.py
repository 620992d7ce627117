"""Gradient (activation) checkpointing for a Flamingo: decoder layers recompute their activations in backward.

The frozen LM layers and the cross-attention blocks are checkpointed separately, each as a pure function of its
arguments. Wrapping a whole fused layer would not work: its cross-attention reads the visual context from a
context variable that is no longer set when the backward pass recomputes. The wrapped modules keep their names
(the ``forward`` of the instance is replaced), so checkpoints and ``trainable_state_dict`` are unchanged.
"""

from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint

from frozenvl.flamingo.fusion import FusedDecoderLayer


def _checkpointed(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of a Flamingo's LM: the module list holding its fused layers."""
    for module in model.lm.modules():
        if isinstance(module, nn.ModuleList) and any(isinstance(m, FusedDecoderLayer) for m in module):
            return module
    raise ValueError("no fused decoder layers found: is this a frozenvl Flamingo?")


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Checkpoint every decoder layer and cross-attention block of ``model.lm``; returns how many were wrapped."""
    wrapped = 0
    for layer in decoder_layers(model):
        targets = [layer.layer, layer.xattn] if isinstance(layer, FusedDecoderLayer) else [layer]
        for module in targets:
            if getattr(module, "_frozenvl_checkpointed", False):
                continue
            module.forward = _checkpointed(module.forward)
            module._frozenvl_checkpointed = True
            wrapped += 1
    return wrapped
