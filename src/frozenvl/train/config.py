"""The run configuration: a tree of dataclasses, loaded from YAML, with dotted ``key=value`` overrides.

``RunConfig`` = ``model`` (what is trained and what stays frozen) + ``data`` (the dataset mixture) + ``optim``
(AdamW and the learning-rate schedule) + ``train`` (steps, batch layout, precision, distribution, checkpoints,
logging). Every field has a default, so a YAML file only lists what differs. Unknown keys and bad values raise
:class:`ConfigError` naming the dotted key.

Overrides: ``optim.lr=3e-4``, ``model.flamingo.cross_attn_every=2``, ``data.datasets.pairs.weight=0.5``
(a dataset by name, or by index: ``data.datasets.0.weight``). Values are parsed as YAML (``true``, ``1e-4``,
``[a, b]``, ``null``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration: one message naming the key and the problem."""


def _choice(where: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _positive(where: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where} must be {'>= 0' if allow_zero else '> 0'}; got {value!r}")


@dataclass
class ModelConfig:
    """What is trained. Table 3 switches: ``flamingo`` (xattn kind/frequency, gating, resampler), ``vision``,
    ``lm`` and ``lm_init``, ``train_lm`` / ``train_vision`` (fine-tuning, with their own learning rates)."""

    kind: str = "flamingo"
    # Sources: see frozenvl.flamingo.build; "tiny:llama" / "tiny" build frozenvl.testing's random tiny models.
    lm: str = "embedded:smollm2-135m"
    vision: str = "embedded:efficientnet-lite0"
    lm_init: str = "pretrained"  # "pretrained" | "random" (ablation: a randomly initialised LM)
    flamingo: dict[str, Any] = field(default_factory=dict)  # FlamingoConfig fields
    train_lm: bool = False  # fine-tuning: the whole LM trains (at lm_lr)
    train_vision: bool = False  # fine-tuning: the vision encoder trains (at vision_lr)
    lm_lr: float | None = None  # None: optim.lr
    vision_lr: float | None = None
    gradient_checkpointing: bool = False  # recompute decoder-layer activations in the backward pass
    # kind "flamingo": start from the trainable weights of a saved Flamingo (save_pretrained folder or a training
    # checkpoint), e.g. a second training stage; the architecture in `flamingo` must match it
    init_from: str | None = None
    # kind "flame": FlameTaskOptions fields (store, preset, image_size, vision, head_hidden, loss, sampled_facets);
    # kind "clip_baseline": ClipBaselineTaskOptions fields (the same image tower + text, tokenizer, caption, ...).
    flame: dict[str, Any] = field(default_factory=dict)
    clip_baseline: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str = "model") -> None:
        _choice(f"{where}.kind", self.kind, ("flamingo", "flame", "clip_baseline"))
        _choice(f"{where}.lm_init", self.lm_init, ("pretrained", "random"))
        if self.init_from is not None and self.kind != "flamingo":
            raise ConfigError(f"{where}.init_from is for model.kind flamingo, not {self.kind!r}")
        if self.kind in ("flame", "clip_baseline"):
            from frozenvl.flame.task import ClipBaselineTaskOptions, FlameTaskOptions

            options = FlameTaskOptions if self.kind == "flame" else ClipBaselineTaskOptions
            try:
                options.from_dict(getattr(self, self.kind))
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{where}.{self.kind}: {e}") from None
        from frozenvl.flamingo import FlamingoConfig

        try:
            FlamingoConfig.from_dict(self.flamingo)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}.flamingo: {e}") from None
        for name in ("lm_lr", "vision_lr"):
            if getattr(self, name) is not None:
                _positive(f"{where}.{name}", getattr(self, name))


@dataclass
class DatasetConfig:
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
        if not self.shards:
            raise ConfigError(f"{where}.shards is empty: give a folder, a glob, a brace range or a list of files")
        _positive(f"{where}.weight", self.weight, allow_zero=True)
        for name in ("batch_size", "max_images", "max_tokens"):
            v = getattr(self, name)
            if v < 1:
                raise ConfigError(f"{where}.{name} must be >= 1; got {v!r}")


@dataclass
class DataConfig:
    datasets: list[DatasetConfig] = field(default_factory=list)
    # "accumulate" (paper): each step sums the weighted gradients of every dataset before one optimizer step.
    # "round_robin" (ablation): step t uses dataset t mod D only.
    mixing: str = "accumulate"
    eval_datasets: list[DatasetConfig] = field(default_factory=list)  # held-out loss, weights ignored
    eval_batches: int = 8  # per eval dataset and rank
    seed: int = 0
    shuffle_buffer: int = 256
    num_workers: int = 0  # loader workers per (slot, dataset)

    def validate(self, where: str = "data") -> None:
        _choice(f"{where}.mixing", self.mixing, ("accumulate", "round_robin"))
        for group in ("datasets", "eval_datasets"):
            names = set()
            for i, d in enumerate(getattr(self, group)):
                d.validate(f"{where}.{group}.{i}")
                if d.name in names:
                    raise ConfigError(f"{where}.{group}: the name {d.name!r} is used twice")
                names.add(d.name)
        if self.datasets and not any(d.weight > 0 for d in self.datasets):
            raise ConfigError(f"{where}.datasets: at least one weight must be > 0")
        _positive(f"{where}.num_workers", self.num_workers, allow_zero=True)
        _positive(f"{where}.eval_batches", self.eval_batches)


@dataclass
class OptimConfig:
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

    def validate(self, where: str = "optim") -> None:
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
class TrainConfig:
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

    def validate(self, where: str = "train") -> None:
        for name in ("steps", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be >= 1; got {getattr(self, name)!r}")
        for name in ("eval_every", "checkpoint_every", "max_nonfinite_steps"):
            _positive(f"{where}.{name}", getattr(self, name), allow_zero=True)
        _choice(f"{where}.precision", self.precision, ("fp32", "bf16"))
        _choice(f"{where}.distributed", self.distributed, ("ddp", "fsdp"))
        _choice(f"{where}.device", self.device, ("auto", "cpu", "cuda"))
        if not self.run_dir:
            raise ConfigError(f"{where}.run_dir must not be empty")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> RunConfig:
        self.model.validate()
        self.data.validate()
        self.optim.validate()
        self.train.validate()
        if not self.data.datasets:
            raise ConfigError("data.datasets is empty: list at least one dataset to train on")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return _build(cls, data, "").validate()


# ----------------------------------------------------------------------------------------- dict -> dataclass


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where} must be {' or '.join(_type_name(a) for a in args)}; got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {tp.__name__} fields; got {value!r}")
        return _build(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list; got {value!r}")
        return [_coerce(item, v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping; got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false; got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number; got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string; got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]}; {cls.__name__} has: {', '.join(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------- overrides


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict (value parsed as YAML). Lists are indexed by position or name."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e}") from None
    parts = key.split(".")
    node: Any = tree
    schema: Any = RunConfig
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            index = _list_index(node, part, where)
            if last:
                node[index] = value
                return
            node = node[index]
            schema = typing.get_args(schema)[0]
            continue
        if dataclasses.is_dataclass(schema):
            hints = typing.get_type_hints(schema)
            if part not in hints:
                raise ConfigError(f"unknown key {where}; {schema.__name__} has: {', '.join(hints)}")
            field_type = hints[part]
        else:  # a free mapping (model.flamingo): any key, validated later
            field_type = Any
        if last:
            node[part] = value
            return
        if part not in node or node[part] is None:
            default = _default_of(schema, part) if dataclasses.is_dataclass(schema) else {}
            node[part] = default
        node = node[part]
        schema = field_type


def _default_of(schema: type, name: str) -> Any:
    for f in dataclasses.fields(schema):
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = f.default
            return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    raise ConfigError(f"unknown key {name}")


def _list_index(items: list, part: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if not -len(items) <= index < len(items):
            raise ConfigError(f"{where}: index {index} out of range (the list has {len(items)} entries)")
        return index
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    names = [str(it.get("name")) for it in items if isinstance(it, dict)]
    raise ConfigError(f"{where}: no entry named {part!r} (entries: {', '.join(names) or 'none'})")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config (or the defaults when ``path`` is None), apply overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping (model:, data:, optim:, train:)")
    for assignment in overrides:
        apply_override(tree, assignment)
    return RunConfig.from_dict(tree)


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
