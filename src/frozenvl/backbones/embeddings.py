"""Decoupled embeddings: the LM's vocabulary stays frozen, only the rows of newly added tokens train.

Flamingo adds ``<image>`` and ``<|endofchunk|>`` to a frozen LM. Training the whole embedding matrix would unfreeze
the LM; leaving the new tokens' random rows frozen costs accuracy. So each new token gets its own trainable input
row and its own trainable output row, while the base matrices stay frozen and shared (tied or not).

New token ids may lie past the base vocabulary (GPT-2, Llama) or inside unused rows of a padded embedding matrix
(Qwen2 pads to a multiple of 64): both are handled by an explicit id -> slot table, never by ``id >= vocab``.
"""

from __future__ import annotations

import torch
from torch import nn


def _slot_table(new_token_ids: list[int], size: int) -> torch.Tensor:
    slots = torch.full((size,), -1, dtype=torch.long)
    slots[torch.tensor(new_token_ids, dtype=torch.long)] = torch.arange(len(new_token_ids))
    return slots


class DecoupledEmbedding(nn.Module):
    """Wraps a frozen input embedding; ids in ``new_token_ids`` read trainable rows instead."""

    def __init__(self, base: nn.Module, new_token_ids: list[int], embed_dim: int, init: torch.Tensor | None = None):
        super().__init__()
        self.base = base
        self.new_token_ids = list(new_token_ids)
        base_rows = base.weight.shape[0] if hasattr(base, "weight") else 0
        self.vocab_size = max(base_rows, max(self.new_token_ids) + 1)
        self.register_buffer("slots", _slot_table(self.new_token_ids, self.vocab_size), persistent=False)
        weight = torch.zeros(len(self.new_token_ids), embed_dim) if init is None else init.clone()
        self.new_weight = nn.Parameter(weight)

    @property
    def weight(self) -> torch.Tensor:  # some HF code reads .weight for dtype/device
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, D)
        slot = self.slots[input_ids]
        is_new = slot >= 0
        base_ids = torch.where(is_new, torch.zeros_like(input_ids), input_ids)
        embeds = self.base(base_ids)
        if not bool(is_new.any()):
            return embeds
        new = self.new_weight[slot.clamp(min=0)].to(embeds.dtype)
        return torch.where(is_new.unsqueeze(-1), new, embeds)


class DecoupledLinear(nn.Module):
    """Wraps a frozen output head; the logits of ``new_token_ids`` come from trainable rows.

    Output width is ``vocab_size = max(base rows, max(new id) + 1)``; ids that are neither base rows nor new
    tokens (only possible when new ids skip ahead) get the lowest finite logit.
    """

    def __init__(self, base: nn.Linear, new_token_ids: list[int], init: torch.Tensor | None = None):
        super().__init__()
        self.base = base
        self.new_token_ids = list(new_token_ids)
        self.base_vocab = base.weight.shape[0]
        self.vocab_size = max(self.base_vocab, max(self.new_token_ids) + 1)
        self.register_buffer("new_ids", torch.tensor(self.new_token_ids, dtype=torch.long), persistent=False)
        hidden = base.weight.shape[1]
        weight = torch.zeros(len(self.new_token_ids), hidden) if init is None else init.clone()
        self.new_weight = nn.Parameter(weight)
        self.new_bias = nn.Parameter(torch.zeros(len(self.new_token_ids)))
        self._appended = self.new_token_ids == list(range(self.base_vocab, self.vocab_size))

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, V)
        logits = self.base(hidden)
        new = (hidden @ self.new_weight.to(hidden.dtype).T + self.new_bias.to(hidden.dtype)).to(logits.dtype)
        if self._appended:
            return torch.cat([logits, new], dim=-1)
        if self.vocab_size > self.base_vocab:
            extra = self.vocab_size - self.base_vocab
            pad = logits.new_full((*logits.shape[:-1], extra), torch.finfo(logits.dtype).min)
            logits = torch.cat([logits, pad], dim=-1)
        return logits.index_copy(-1, self.new_ids, new)
