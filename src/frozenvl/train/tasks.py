"""Tasks: what the engine trains. A task builds its model, turns loader samples into batches and batches into a
loss. The loop (``train/loop.py``) knows nothing about Flamingo: FLAME plugs in as another :class:`Task`.

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

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from frozenvl.train.config import ModelConfig


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


def _load_lm(source: str, init: str):
    """(LM instance, tokenizer) from a source string; ``tiny[:family]`` is frozenvl.testing's tiny random LM."""
    from frozenvl.backbones.language import load_causal_lm

    if source == "tiny" or source.startswith("tiny:"):
        from frozenvl.testing import tiny_lm, tiny_tokenizer

        lm, tok = tiny_lm(source.partition(":")[2] or "llama"), tiny_tokenizer()
    else:
        lm, tok = load_causal_lm(source)
    if init == "random":
        # Table 3 ablation: the same architecture, randomly initialised (then frozen or trained as configured).
        lm.apply(lm._init_weights)
    return lm, tok


def _load_vision(source: str):
    if source == "tiny" or source.startswith("tiny:"):
        from frozenvl.testing import tiny_vision

        return tiny_vision()
    return source


class FlamingoTask(ModelTask):
    """Flamingo's objective on one dataset: the masked next-token NLL (DESIGN.md section 1)."""

    def __init__(self, config: ModelConfig):
        from frozenvl.data import FlamingoCollator
        from frozenvl.flamingo import build

        self.config = config
        lm, tokenizer = _load_lm(config.lm, config.lm_init)
        self.model, self.processor = build(lm=lm, tokenizer=tokenizer, vision=_load_vision(config.vision),
                                           **config.flamingo)
        self.model.config.lm, self.model.config.vision = config.lm, config.vision  # sources, not "<instance>"
        if config.init_from is not None:
            self._init_from(config.init_from)
        for p in self.model.lm.parameters():
            if config.train_lm:
                p.requires_grad_(True)
        if config.train_vision:
            for p in self.model.vision.parameters():
                p.requires_grad_(True)
        if config.gradient_checkpointing:
            from frozenvl.train.recompute import enable_gradient_checkpointing

            enable_gradient_checkpointing(self.model)
        self.collate = FlamingoCollator(self.processor)
        self.tokenizer = tokenizer
        self.max_length = self.processor.max_length

    def _init_from(self, folder: str) -> None:
        """Trainable weights of a saved Flamingo; a missing folder or a different architecture is an error."""
        from safetensors.torch import load_file

        from frozenvl.flamingo.model import WEIGHTS_NAME

        weights = Path(folder) / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"model.init_from: {weights} not found (expected a Flamingo folder written by "
                                    "save_pretrained or a training checkpoint)")
        try:
            self.model.load_trainable(load_file(str(weights)))
        except (KeyError, ValueError) as e:
            raise ValueError(f"model.init_from {folder}: {e}") from None

    def token_counter(self, text: str) -> int:
        """Tokens the processor will produce (its BOS/EOS included), for the loader's exact length limits."""
        return len(self.tokenizer(text).input_ids) + 2

    def set_train_mode(self) -> None:
        """Trainable parts in train mode; frozen backbones stay in eval mode (no dropout, BatchNorm stats fixed)."""
        self.model.train()
        self.model.vision.train(self.config.train_vision)
        if not self.config.train_lm:
            self.model.lm.eval()
            for name, module in self.model.lm.named_modules():
                if name.endswith(".xattn"):
                    module.train()

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        device = next(p for p in self.model.parameters()).device
        input_ids = batch["input_ids"].to(device)  # (B, L)
        kwargs = {"attention_mask": batch["attention_mask"].to(device)}
        if batch.get("pixel_values") is not None:
            kwargs["pixel_values"] = batch["pixel_values"].to(device)  # (B, T_img, [F,] C, H, W)
        if batch.get("document_ids") is not None:
            kwargs["document_ids"] = batch["document_ids"].to(device)
        out = model(input_ids, labels=input_ids, **kwargs)
        tokens = kwargs["attention_mask"].sum()
        return {"loss": out.loss, "tokens": tokens}

    def shard_units(self) -> list[nn.Module]:
        """FSDP2 units: every decoder layer (with its cross-attention block); the rest is the root unit."""
        from frozenvl.train.recompute import decoder_layers

        return list(decoder_layers(self.model))


def build_task(config: ModelConfig) -> Task:
    """``model.kind``: ``flamingo``, ``flame`` (options in ``model.flame``) or ``clip_baseline``
    (``model.clip_baseline``), the last two from ``frozenvl.flame.task``."""
    if config.kind == "flamingo":
        return FlamingoTask(config)
    if config.kind == "flame":
        from frozenvl.flame.task import FlameTask

        return FlameTask.from_options(config.flame)
    if config.kind == "clip_baseline":
        from frozenvl.flame.task import ClipBaselineTask

        return ClipBaselineTask.from_options(config.clip_baseline)
    raise ValueError(f"unknown model.kind {config.kind!r}")
