"""Flamingo as a task of the training engine: the model built from its sources, the collator (loader samples ->
processor batches) and the masked next-token loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from frozenvl.files import cache_dir
from frozenvl.flamingo import build
from frozenvl.flamingo.feature_cache import FeatureCache
from frozenvl.flamingo.lora import lora_modules
from frozenvl.flamingo.packing import lm_packs_sequences, pack_batch
from frozenvl.tasks.base import ModelTask
from frozenvl.tasks.config import ModelConfig


class FlamingoCollator:
    """Samples -> the Flamingo processor's batch, plus `keys` and `kinds`.

    processor(texts: list[str], images: list[list[PIL.Image | list[PIL.Image]]], padding_side=...) -> dict of
    tensors (input_ids, attention_mask, pixel_values, ...). Each sample's `text` already carries its `<image>` and
    `<|endofchunk|>` markers; its `images` is the list of images (or of frame lists for videos) in marker order.
    """

    def __init__(self, processor: Callable[..., dict[str, Any]], padding_side: str = "right", pack: bool = False):
        self.processor, self.padding_side, self.pack = processor, padding_side, pack

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        for s in samples:
            if "text" not in s:
                raise ValueError(f"sample {s.get('key')!r} of kind {s.get('kind')!r} has no Flamingo text; "
                                 "evaluation records are turned into prompts by the evaluation harness")
        batch = dict(self.processor([s["text"] for s in samples], [s["images"] for s in samples],
                                    padding_side=self.padding_side))
        if self.pack:  # one row, no padding: input_ids, position_ids, document_ids (1, N)
            batch = pack_batch(batch, self.processor.image_token_id)
        batch["keys"] = [s["key"] for s in samples]
        batch["kinds"] = [s["kind"] for s in samples]
        return batch


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


def _feature_cache(config: ModelConfig, vision: nn.Module) -> FeatureCache | None:
    """``model.feature_cache`` (None: on when the vision encoder is frozen) in ``model.feature_cache_dir`` (None:
    the user cache's ``features/``)."""
    enabled = config.feature_cache if config.feature_cache is not None else not config.train_vision
    if not enabled:
        return None
    root = config.feature_cache_dir if config.feature_cache_dir is not None else cache_dir("features")
    return FeatureCache(root, vision)


class FlamingoTask(ModelTask):
    """Flamingo's objective on one dataset: the masked next-token NLL (docs/training.md). With a frozen vision
    encoder the resampler is fed from a feature cache (``model.feature_cache``; ``self.feature_cache.stats``)."""

    feature_cache: FeatureCache | None = None

    def __init__(self, config: ModelConfig):
        self.config = config
        lm, tokenizer = _load_lm(config.lm, config.lm_init)
        self.model, self.processor = build(lm=lm, tokenizer=tokenizer, vision=_load_vision(config.vision),
                                           config=config.flamingo)
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
            self.model.gradient_checkpointing_enable()
        self.feature_cache = _feature_cache(config, self.model.vision)
        if config.packing and not lm_packs_sequences(self.model.lm):
            raise ValueError(f"model.packing: the LM {config.lm!r} ({type(self.model.lm).__name__}) does not keep "
                             "packed samples apart given restarting position_ids (ALiBi, or no position_ids "
                             "argument): train it with padded batches (model.packing: false)")
        self.collate = FlamingoCollator(self.processor, pack=config.packing)
        self.tokenizer = tokenizer
        self.max_length = self.processor.max_length

    def _init_from(self, folder: str) -> None:
        """Trainable weights of a saved Flamingo (``save_pretrained`` or a training checkpoint); a missing folder,
        a folder of another model or a different architecture is an error naming the folder."""
        from frozenvl.pretrained import read_pretrained

        try:
            _, tensors = read_pretrained(folder, self.model.model_type, self.model.config_class)
            self.model.load_saved_state_dict(tensors)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"model.init_from: {e}") from None
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
            for i in self.model.fused_indices:
                self.model.decoder_layers[i].xattn.train()
            for module in lora_modules(self.model.lm):  # LoRA adapters train (their dropout) in the frozen LM
                module.train()

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        device = next(p for p in self.model.parameters()).device
        input_ids = batch["input_ids"].to(device)  # (B, L)
        kwargs = {}
        for name in ("attention_mask", "document_ids", "position_ids"):  # a packed batch has no attention_mask
            if batch.get(name) is not None:
                kwargs[name] = batch[name].to(device)
        if batch.get("frame_mask") is not None:  # media of different frame counts in one batch
            kwargs["frame_mask"] = batch["frame_mask"].to(device)
        if batch.get("pixel_values") is not None and self.feature_cache is not None:
            # (B, T_img, F, N, D): the frozen encoder's outputs, computed once per image (keys: the CPU pixels)
            kwargs["vision_features"] = self.feature_cache.encode(batch["pixel_values"],
                                                                  batch.get("frame_mask")).to(device)
        elif batch.get("pixel_values") is not None:
            kwargs["pixel_values"] = batch["pixel_values"].to(device)  # (B, T_img, [F,] C, H, W)
        out = model(input_ids, labels=input_ids, **kwargs)
        tokens = kwargs["attention_mask"].sum() if "attention_mask" in kwargs else torch.tensor(input_ids.numel())
        samples = len(batch["keys"]) if "keys" in batch else input_ids.shape[0]  # a packed row holds several
        return {"loss": out.loss, "tokens": tokens, "samples": torch.tensor(samples)}

    def shard_units(self) -> list[nn.Module]:
        """FSDP2 units: every decoder layer (with its cross-attention block); the rest is the root unit."""
        return list(self.model.decoder_layers)
