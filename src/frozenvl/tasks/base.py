"""Tasks: what the engine trains. A task builds its model, turns loader samples into batches and batches into a
loss. The engine (``frozenvl.train``) knows only this contract: Flamingo, FLAME and the CLIP baseline are tasks.

Contract of a task:

- ``model``: an ``nn.Module`` whose trainable parameters have ``requires_grad=True`` (others frozen);
- ``collate(samples) -> batch`` for the data loader (picklable if loader workers are used);
- ``loss(model, batch) -> dict`` with a scalar ``"loss"`` and ``"tokens"`` (how many targets, for throughput),
  and optionally ``"samples"`` (the batch's samples; default: the rows of ``batch["input_ids"]``);
  ``model`` is the possibly wrapped (DDP/FSDP) module: call it, do not reach inside;
- ``trainable_state_dict()`` / ``load_trainable(tensors)`` and ``save_pretrained(dir)`` of the bare model;
- ``token_counter``: str -> tokens, used by the loader's length limits.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn


class Task(Protocol):
    model: nn.Module

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]: ...

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]: ...

    def token_counter(self, text: str) -> int: ...

    def set_train_mode(self) -> None: ...


class ModelTask:
    """What every task does the same way with its bare ``model``: train mode, the names of its trainable
    parameters, and saving it (its own ``save_pretrained``)."""

    model: nn.Module

    def set_train_mode(self) -> None:
        self.model.train()

    # Bare-model state, names as in the model's own trainable state dict.
    def trainable_names(self) -> list[str]:
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def save_pretrained(self, path) -> None:
        self.model.save_pretrained(path)
