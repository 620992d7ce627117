"""Tasks: what the engine trains. A task builds its model, turns loader samples into batches and batches into a
loss. The engine (``frozenvl.train``) knows only this contract: Flamingo, FLAME and the CLIP baseline are tasks.

Contract of a task:

- ``model``: a :class:`~frozenvl.pretrained.PretrainedModel` (an ``nn.Module``) whose trainable parameters have
  ``requires_grad=True`` (others frozen). The engine writes the model part of every checkpoint with its
  ``model_type``, ``config`` and ``saved_state_dict()``, so a checkpoint loads with the model class's
  ``from_pretrained``; on resume it gives the tensors back with ``load_saved_state_dict``;
- ``collate(samples) -> batch`` for the data loader (picklable if loader workers are used);
- ``loss(model, batch) -> dict`` with a scalar ``"loss"`` and ``"tokens"`` (how many targets, for throughput),
  and optionally ``"samples"`` (the batch's samples; default: the rows of ``batch["input_ids"]``);
  ``model`` is the possibly wrapped (DDP/FSDP) module: call it, do not reach inside;
- ``token_counter``: str -> tokens, used by the loader's length limits;
- ``set_train_mode()``: put the model in training mode (frozen parts may stay in eval mode);
- optionally ``shard_units()`` (the modules FSDP2 shards one by one) and ``max_length`` (the loader's limit).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from frozenvl.pretrained import PretrainedModel


class Task(Protocol):
    model: PretrainedModel

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]: ...

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]: ...

    def token_counter(self, text: str) -> int: ...

    def set_train_mode(self) -> None: ...


class ModelTask:
    """What every task does the same way with its bare ``model``: train mode, and saving it (the model's own
    ``save_pretrained``)."""

    model: PretrainedModel

    def set_train_mode(self) -> None:
        self.model.train()

    def save_pretrained(self, folder) -> None:
        self.model.save_pretrained(folder)
