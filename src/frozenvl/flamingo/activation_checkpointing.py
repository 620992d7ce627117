"""Gradient (activation) checkpointing for a Flamingo: decoder layers recompute their activations in backward.

Each frozen LM decoder layer and each cross-attention block is checkpointed on its own, as a function of its
arguments. A fused layer is not checkpointed as a whole: its cross-attention reads the visual context of the call
(a context variable), which is no longer set when the backward pass recomputes; the block itself receives the
keys/values and the mask as arguments.

The mechanism is torch's composable activation checkpointing (``torch.distributed._composable.checkpoint``): it
registers forward hooks on the module, so no method is replaced and every parameter keeps its name (checkpoints
and ``trainable_state_dict`` are unchanged), and FSDP2 composes with it (its hooks leave the unsharding to the
pre-backward hook during the recomputation).
"""

from __future__ import annotations

from torch import nn

from frozenvl.flamingo.fusion import FusedDecoderLayer


def checkpointed_modules(decoder_layers: nn.ModuleList) -> list[nn.Module]:
    """The modules that recompute: every frozen decoder layer and every cross-attention block."""
    modules: list[nn.Module] = []
    for layer in decoder_layers:
        modules += [layer.layer, layer.xattn] if isinstance(layer, FusedDecoderLayer) else [layer]
    return modules


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Checkpoint the decoder layers and cross-attention blocks of a Flamingo (``model.decoder_layers``); returns
    how many modules were newly checkpointed (0 when it was already on)."""
    from torch.distributed._composable import checkpoint

    enabled = 0
    for module in checkpointed_modules(model.decoder_layers):
        if checkpoint.state(module) is None:
            checkpoint(module)
            enabled += 1
    return enabled
