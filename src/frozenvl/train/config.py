"""The run configuration: a tree of dataclasses, loaded from YAML, with dotted ``key=value`` overrides.

``RunConfig`` = ``model`` (what is trained and what stays frozen) + ``data`` (the dataset mixture) + ``optim``
(AdamW and the learning-rate schedule) + ``train`` (steps, batch layout, precision, distribution, checkpoints,
logging). Every field has a default, so a YAML file only lists what differs. Unknown keys and bad values raise
:class:`ConfigError` naming the dotted key (the engine: :mod:`frozenvl.config`).

Overrides: ``optim.lr=3e-4``, ``model.flamingo.cross_attn_every=2``, ``data.datasets.pairs.weight=0.5``
(a dataset by name, or by index: ``data.datasets.0.weight``). Values are parsed as YAML (``true``, ``1e-4``,
``[a, b]``, ``null``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frozenvl.config import Config, ConfigError, apply_override, dump_yaml, load_yaml
from frozenvl.config import check_choice as _choice
from frozenvl.config import check_positive as _positive
from frozenvl.tasks.config import ModelConfig

__all__ = ["ConfigError", "DataConfig", "DatasetConfig", "ModelConfig", "OptimConfig", "RunConfig", "TrainConfig",
           "dump_config", "load_config"]


@dataclass
class DatasetConfig(Config):
    """One dataset of the mixture: its shards, its weight lambda and its per-slot batch size."""

    name: str = "pairs"
    shards: str | list[str] = ""
    weight: float = 1.0  # lambda in  L = sum_d lambda_d * NLL_d
    batch_size: int = 8  # samples per micro-batch (per slot, see TrainConfig.grad_accum)
    max_images: int = 5
    max_tokens: int = 256
    single_image_drop_prob: float = 0.0
    min_similarity: float | None = None

    def validate(self, where: str) -> None:
        if not self.name or "." in self.name or "/" in self.name:
            raise ConfigError(f"{where}.name must be a non-empty name without '.' or '/'; got {self.name!r}")
        _positive(f"{where}.weight", self.weight, allow_zero=True)
        for name in ("batch_size", "max_images", "max_tokens"):
            v = getattr(self, name)
            if v < 1:
                raise ConfigError(f"{where}.{name} must be >= 1; got {v!r}")


@dataclass
class DataConfig(Config):
    datasets: list[DatasetConfig] = field(default_factory=list)
    # "accumulate" (paper): each step sums the weighted gradients of every dataset before one optimizer step.
    # "round_robin" (ablation): step t uses dataset t mod D only.
    mixing: str = "accumulate"
    eval_datasets: list[DatasetConfig] = field(default_factory=list)  # held-out loss, weights ignored
    eval_batches: int = 8  # per eval dataset and rank
    seed: int = 0
    shuffle_buffer: int = 256
    num_workers: int = 0  # loader workers per (slot, dataset)

    def validate(self, where: str) -> None:
        _choice(f"{where}.mixing", self.mixing, ("accumulate", "round_robin"))
        for group in ("datasets", "eval_datasets"):
            names = set()
            for i, d in enumerate(getattr(self, group)):
                # Checked here, not by DatasetConfig, whose default (the template of an entry) has no shards.
                if not d.shards:
                    raise ConfigError(f"{where}.{group}.{i}.shards is empty: give a folder, a glob, a brace range "
                                      "or a list of files")
                if d.name in names:
                    raise ConfigError(f"{where}.{group}: the name {d.name!r} is used twice")
                names.add(d.name)
        if self.datasets and not any(d.weight > 0 for d in self.datasets):
            raise ConfigError(f"{where}.datasets: at least one weight must be > 0")
        _positive(f"{where}.num_workers", self.num_workers, allow_zero=True)
        _positive(f"{where}.eval_batches", self.eval_batches)


@dataclass
class OptimConfig(Config):
    lr: float = 1e-4
    weight_decay: float = 0.1  # never on norms, biases, gates, latents or embedding rows
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warmup from 0
    schedule: str = "constant"  # after warmup: "constant" | "cosine" (down to min_lr_ratio * lr at train.steps)
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0  # max global grad norm, applied once per optimizer step; None: no clipping
    # Learning rate of the tanh-gate scalars of the cross-attention blocks (None: lr). They start at 0 and an
    # AdamW step moves each by about lr, so at small lr they open slowly; a larger gate_lr opens them sooner.
    gate_lr: float | None = None

    def validate(self, where: str) -> None:
        _positive(f"{where}.lr", self.lr)
        if self.gate_lr is not None:
            _positive(f"{where}.gate_lr", self.gate_lr)
        _positive(f"{where}.weight_decay", self.weight_decay, allow_zero=True)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{where}.betas must be two numbers in [0, 1); got {self.betas!r}")
        _positive(f"{where}.eps", self.eps)
        _positive(f"{where}.warmup_steps", self.warmup_steps, allow_zero=True)
        _choice(f"{where}.schedule", self.schedule, ("constant", "cosine"))
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"{where}.min_lr_ratio must be in [0, 1]; got {self.min_lr_ratio!r}")
        if self.grad_clip is not None:
            _positive(f"{where}.grad_clip", self.grad_clip)


@dataclass
class TrainConfig(Config):
    run_dir: str = "runs/flamingo"
    steps: int = 1000  # optimizer steps
    # Micro-batches per rank per step. The global batch is world_size x grad_accum "slots", each reading its own
    # part of the data: (2 ranks, grad_accum 1) and (1 rank, grad_accum 2) see the same samples in the same step.
    grad_accum: int = 1
    precision: str = "fp32"  # "fp32" | "bf16" (autocast)
    distributed: str = "ddp"  # with torchrun: "ddp" | "fsdp" (FSDP2 fully_shard); ignored in one process
    device: str = "auto"  # "auto" (cuda if available) | "cpu" | "cuda"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100  # 0: only at the start and the end
    checkpoint_every: int = 100  # 0: only at the end
    keep_checkpoints: int = 3  # the last K are kept
    max_nonfinite_steps: int = 10  # steps with a NaN/inf loss or gradient are skipped; stop when more than this
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = False  # also write TensorBoard events (if the tensorboard package is installed)
    threads: int | None = None  # torch CPU threads per process (None: torch's default)

    def validate(self, where: str) -> None:
        for name in ("steps", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be >= 1; got {getattr(self, name)!r}")
        for name in ("eval_every", "checkpoint_every", "max_nonfinite_steps"):
            _positive(f"{where}.{name}", getattr(self, name), allow_zero=True)
        if self.threads is not None and not (isinstance(self.threads, int) and self.threads >= 1):
            raise ConfigError(f"{where}.threads must be >= 1 (or null: torch's default); got {self.threads!r}")
        _choice(f"{where}.precision", self.precision, ("fp32", "bf16"))
        _choice(f"{where}.distributed", self.distributed, ("ddp", "fsdp"))
        _choice(f"{where}.device", self.device, ("auto", "cpu", "cuda"))
        if not self.run_dir:
            raise ConfigError(f"{where}.run_dir must not be empty")


@dataclass
class RunConfig(Config):
    """A whole run; every section checked when built. The defaults are a valid config with nothing to train on:
    :func:`load_config` also asks for at least one dataset."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config (or the defaults when ``path`` is None), apply overrides, check it; a run needs at
    least one dataset."""
    tree: dict[str, Any] = load_yaml(path) if path is not None else {}
    for assignment in overrides:
        apply_override(tree, assignment, RunConfig)
    config = RunConfig.from_dict(tree)
    if not config.data.datasets:
        raise ConfigError("data.datasets is empty: list at least one dataset to train on")
    return config


def dump_config(config: RunConfig) -> str:
    return dump_yaml(config)
