"""AdamW over the trainable parameters only, with weight decay only where it belongs, and the LR schedule.

Frozen parameters (``requires_grad=False``) are never handed to the optimizer, so they carry no optimizer state.
No weight decay on: biases and other 1-D parameters (norm scales, tanh gate alphas), the resampler's learned
latents and temporal embeddings, and the trainable embedding rows of the new tokens (``new_weight``/``new_bias``).
LoRA adapters of the LM (``lora_A``/``lora_B``, ``model.flamingo.lora_rank``) are a group of their own at the base
``lr`` (new weights trained from scratch, like the cross-attention; ``lm_lr`` is for fine-tuning the LM's own
weights) and take weight decay, as transformers' Trainer gives them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from frozenvl.train.config import ModelConfig, OptimConfig

NO_DECAY_MARKERS = ("norm", "gate", "alpha", "latents", "time_emb", "temporal", "new_weight", "new_bias",
                    "embed", "pos_emb", "bias")


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies to the parameter called ``name``."""
    if param.ndim < 2:
        return False
    lowered = name.lower()
    return not any(marker in lowered for marker in NO_DECAY_MARKERS)


def _component(name: str) -> str:
    """'vision', 'lm' (frozen-LM weights unfrozen by fine-tuning), 'lora' (LoRA adapters in the LM), 'gate' (the
    tanh-gate scalars of the cross-attention blocks) or 'adapter' (the other Flamingo parts)."""
    if name.startswith("vision."):
        return "vision"
    if ".lora_A." in name or ".lora_B." in name:
        return "lora"
    if ".xattn." in name and name.endswith("_gate.alpha"):
        return "gate"
    is_adapter = (".xattn." in name or name.startswith(("resampler.", "vision_proj."))
                  or name.endswith(("new_weight", "new_bias")))
    return "adapter" if is_adapter else "lm"


def param_groups(named: Iterable[tuple[str, nn.Parameter]], optim: OptimConfig,
                 model: ModelConfig | None = None) -> list[dict]:
    """AdamW groups: (component x decay) with per-component learning rates. Frozen parameters are left out."""
    lrs = {"adapter": optim.lr, "lora": optim.lr, "lm": optim.lr, "vision": optim.lr,
           "gate": optim.gate_lr if optim.gate_lr is not None else optim.lr}
    if model is not None:
        lrs["lm"] = model.lm_lr if model.lm_lr is not None else optim.lr
        lrs["vision"] = model.vision_lr if model.vision_lr is not None else optim.lr
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        key = (_component(name), decays(name, p))
        if key not in groups:
            groups[key] = {"name": f"{key[0]}/{'decay' if key[1] else 'no_decay'}", "params": [], "names": [],
                           "lr": lrs[key[0]], "base_lr": lrs[key[0]],
                           "weight_decay": optim.weight_decay if key[1] else 0.0}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return [groups[k] for k in sorted(groups)]


def build_optimizer(named: Iterable[tuple[str, nn.Parameter]], optim: OptimConfig,
                    model: ModelConfig | None = None) -> torch.optim.AdamW:
    groups = param_groups(named, optim, model)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                             weight_decay=optim.weight_decay)


def lr_factor(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Multiplier of each group's base learning rate at optimizer step ``step`` (0-based).

    Linear warmup over ``warmup_steps`` (step 0 gets 1/warmup), then constant or cosine down to ``min_lr_ratio``.
    """
    warmup = optim.warmup_steps
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if optim.schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * cosine


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
