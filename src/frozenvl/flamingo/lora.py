"""LoRA on the frozen LM, with the ``peft`` library: low-rank adapters beside linear layers of its decoder layers.

``add_lora`` runs before the decoder layers are fused, so the adapters go into the LM's own layers only, never
into a cross-attention block, the resampler, the embeddings or the output head. peft's ``inject_adapter_in_model``
replaces each targeted linear layer in place by a LoRA layer holding it: the LM's module paths are unchanged, a
targeted layer's frozen weight becomes ``<name>.base_layer.weight`` and its adapters ``<name>.lora_A.default.weight``
and ``<name>.lora_B.default.weight`` (trainable, so saved with the other trainable tensors). peft starts B at zero:
a fresh Flamingo with LoRA still computes exactly what its LM computes.
"""

from __future__ import annotations

from torch import nn

from frozenvl.flamingo.config import FlamingoConfig


def lora_target_modules(lm: nn.Module, config: FlamingoConfig) -> list[str]:
    """The target names of ``config``, or peft's default for the LM's model type when it names none."""
    if config.lora_target_modules is not None:
        return list(config.lora_target_modules)
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(lm, "config", None), "model_type", None)
    if model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        raise ValueError(f"lora_target_modules: peft has no default for LM type {model_type!r}; name the linear "
                         f"layers to adapt (e.g. [q_proj, v_proj]); this LM's are: {', '.join(_linear_names(lm))}")
    return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])


def add_lora(lm: nn.Module, layers_path: str, config: FlamingoConfig) -> list[str]:
    """Inject LoRA adapters (``config.lora_*``) into the linear layers of ``lm``'s decoder layers (the module list at
    ``layers_path``) whose names end with a target name. Returns the target names used. Parameters that were
    trainable stay trainable (peft would freeze them); everything else of the LM stays frozen.

    A target name that matches no linear layer of the decoder layers is one error listing the names there are."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = lora_target_modules(lm, config)
    linear = {name: module for name, module in lm.named_modules()
              if name.startswith(f"{layers_path}.") and _is_linear(module)}
    unknown = [t for t in targets if not any(n.endswith(f".{t}") for n in linear)]
    if unknown:
        raise ValueError(f"lora_target_modules: {', '.join(unknown)} matches no linear layer of the LM's decoder "
                         f"layers; their linear layers are named: {', '.join(_linear_names(lm, layers_path))}")
    # Exact paths, so that peft cannot match anything outside the decoder layers.
    chosen = sorted(n for n in linear if any(n.endswith(f".{t}") for t in targets))
    trainable = [p for p in lm.parameters() if p.requires_grad]
    peft_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                             target_modules=chosen, bias="none",
                             fan_in_fan_out=all(not isinstance(linear[n], nn.Linear) for n in chosen))  # GPT-2 Conv1D
    inject_adapter_in_model(peft_config, lm)
    for p in trainable:
        p.requires_grad_(True)
    return targets


def lora_modules(model: nn.Module) -> list[nn.Module]:
    """The adapters' own modules (``<layer>.lora_A.default``, ``lora_B``, ``lora_dropout``): what a training mode
    puts in train mode (for the dropout) when the frozen LM around them stays in eval mode."""
    return [m for name, m in model.named_modules() if name.rpartition(".")[0].rpartition(".")[2].startswith("lora_")]


def _is_linear(module: nn.Module) -> bool:
    """nn.Linear, or transformers' Conv1D (GPT-2's linear layers, weight stored transposed)."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def _linear_names(lm: nn.Module, layers_path: str | None = None) -> list[str]:
    """The distinct last names of the linear layers (of the decoder layers, with ``layers_path``)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in lm.named_modules()
                   if _is_linear(module) and (layers_path is None or name.startswith(f"{layers_path}."))})
