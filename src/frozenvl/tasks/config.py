"""``ModelConfig``: the ``model:`` section of a run config - which task, what it builds, what trains and what stays
frozen. ``kind`` picks the task (``flamingo``, ``flame``, ``clip_baseline``); each kind reads its own section."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from frozenvl.config import Config, ConfigError
from frozenvl.config import check_choice as _choice
from frozenvl.config import check_positive as _positive
from frozenvl.flamingo import FlamingoConfig
from frozenvl.tasks.clip_baseline import ClipBaselineTaskOptions
from frozenvl.tasks.flame import FlameTaskOptions


@dataclass
class ModelConfig(Config):
    """What is trained. Table 3 switches: ``flamingo`` (xattn kind/frequency, gating, resampler), ``vision``,
    ``lm`` and ``lm_init``, ``train_lm`` / ``train_vision`` (fine-tuning, with their own learning rates)."""

    kind: str = "flamingo"
    # Sources: see frozenvl.flamingo.build; "tiny:llama" / "tiny" build frozenvl.testing's random tiny models.
    lm: str = "embedded:smollm2-135m"
    vision: str = "embedded:efficientnet-lite0"
    lm_init: str = "pretrained"  # "pretrained" | "random" (ablation: a randomly initialised LM)
    flamingo: FlamingoConfig = field(default_factory=FlamingoConfig)  # kind "flamingo": the architecture
    train_lm: bool = False  # fine-tuning: the whole LM trains (at lm_lr)
    train_vision: bool = False  # fine-tuning: the vision encoder trains (at vision_lr)
    lm_lr: float | None = None  # None: optim.lr
    vision_lr: float | None = None
    gradient_checkpointing: bool = False  # recompute decoder-layer activations in the backward pass
    # kind "flamingo": the frozen vision encoder's outputs computed once per image and stored (fp16) for later
    # epochs and runs (frozenvl.flamingo.feature_cache). None: on when the encoder is frozen (train_vision false)
    feature_cache: bool | None = None
    feature_cache_dir: str | None = None  # None: the user cache's features/ folder
    # kind "flamingo": start from the trainable weights of a saved Flamingo (save_pretrained folder or a training
    # checkpoint), e.g. a second training stage; the architecture in `flamingo` must match it
    init_from: str | None = None
    # kind "flamingo": each micro-batch's samples end to end in one row, without padding (positions restarting per
    # sample, no attention or images across samples; the same loss as the padded batch): fewer slots for the LM
    # to compute. Needs an LM that honours restarting position_ids (checked when the task is built).
    packing: bool = False
    flame: FlameTaskOptions = field(default_factory=FlameTaskOptions)  # kind "flame"
    clip_baseline: ClipBaselineTaskOptions = field(default_factory=ClipBaselineTaskOptions)  # kind "clip_baseline"

    def __post_init__(self) -> None:
        # The run's backbones are `lm` / `vision`: the Flamingo section records them, as the saved FlamingoConfig
        # does, so a printed config does not show other sources there.
        self.flamingo = replace(self.flamingo, lm=self.lm, vision=self.vision)
        super().__post_init__()

    def validate(self, where: str) -> None:
        _choice(f"{where}.kind", self.kind, ("flamingo", "flame", "clip_baseline"))
        _choice(f"{where}.lm_init", self.lm_init, ("pretrained", "random"))
        for name in ("init_from", "packing"):
            if getattr(self, name) and self.kind != "flamingo":
                raise ConfigError(f"{where}.{name} is for model.kind flamingo, not {self.kind!r}")
        if self.kind == "flame":
            self.flame.check_store(f"{where}.flame")
        if self.feature_cache and self.train_vision:
            raise ConfigError(f"{where}.feature_cache needs a frozen vision encoder: {where}.train_vision is true, "
                              "so the encoder's outputs change as it trains")
        for name in ("lm_lr", "vision_lr"):
            if getattr(self, name) is not None:
                _positive(f"{where}.{name}", getattr(self, name))
