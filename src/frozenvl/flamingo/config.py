"""FlamingoConfig: everything that describes a Flamingo, saved beside its trainable weights (``config.json``)."""

from __future__ import annotations

from dataclasses import dataclass

from frozenvl.config import Config, ConfigError, check_choice, check_positive


@dataclass
class FlamingoConfig(Config):
    # Frozen backbones, referenced by source (not copied into checkpoints).
    lm: str = "embedded:smollm2-135m"
    vision: str = "embedded:efficientnet-lite0"
    # Gated cross-attention.
    cross_attn_every: int = 4  # a block before every N-th decoder layer
    placement: str = "first"  # "first": layers 0, N, 2N...; "openflamingo": (i + 1) % N == 0; "upper": H, H+N...
    # (H = half the LM's layers: the backward pass stops there, cheaper training)
    xattn_kind: str = "gated_dense"  # "gated_dense" (paper) or "vanilla" (ablation: no dense FFW)
    gating: str = "tanh"  # "tanh" (paper) or "none" (ablation)
    xattn_heads: int = 8
    xattn_dim_head: int = 64
    ff_mult: int = 4
    only_attend_immediate: bool = True  # False: a token sees every previous image of its document
    # Resampler.
    resampler: str = "perceiver"  # "perceiver" | "mlp" | "transformer"
    resampler_dim: int | None = None  # None: the vision feature size (OpenFlamingo); else a projection first
    resampler_depth: int = 6
    resampler_heads: int = 8
    resampler_dim_head: int = 64
    num_latents: int = 64
    max_frames: int | None = 8  # temporal embeddings for video; None: none (OpenFlamingo)
    # Processor.
    max_images: int = 32  # per sequence
    max_length: int = 2048  # tokens per sequence
    # Saving: the LM's base embedding rows (and an untied output head's) were trained outside frozenvl (an
    # OpenFlamingo conversion): save_pretrained saves them with the trainable tensors, as the LM's source lacks them.
    save_lm_embeddings: bool = False
    # LoRA on the frozen LM (peft): low-rank adapters beside the named linear layers of its decoder layers; they
    # train and are saved with the other trainable tensors. 0: off. Target modules are matched by name (as peft's
    # `target_modules`); None: peft's default for the LM's model type (q_proj, v_proj for Llama; c_attn for GPT-2),
    # recorded in the model's config when it is built.
    lora_rank: int = 0
    lora_alpha: float = 16.0  # the adapter's output is scaled by lora_alpha / lora_rank
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = None

    def validate(self, where: str) -> None:
        check_choice(f"{where}.placement", self.placement, ("first", "openflamingo", "upper"))
        check_choice(f"{where}.xattn_kind", self.xattn_kind, ("gated_dense", "vanilla"))
        check_choice(f"{where}.gating", self.gating, ("tanh", "none"))
        check_choice(f"{where}.resampler", self.resampler, ("perceiver", "mlp", "transformer"))
        for name in ("cross_attn_every", "xattn_heads", "xattn_dim_head", "ff_mult", "resampler_depth",
                     "resampler_heads", "resampler_dim_head", "num_latents", "max_images", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}.{name} must be a positive integer; got {value!r}")
        if isinstance(self.lora_rank, bool) or not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ConfigError(f"{where}.lora_rank must be an integer >= 0 (0: no LoRA); got {self.lora_rank!r}")
        check_positive(f"{where}.lora_alpha", self.lora_alpha)
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"{where}.lora_dropout must be in [0, 1); got {self.lora_dropout!r}")
        targets = self.lora_target_modules
        if targets is not None and (not targets or not all(isinstance(t, str) and t.strip() for t in targets)):
            raise ConfigError(f"{where}.lora_target_modules must be a non-empty list of module names (e.g. "
                              f"[q_proj, v_proj]) or null for peft's default; got {targets!r}")
