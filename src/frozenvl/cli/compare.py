"""FLAME vs its CLIP baseline on the synthetic world, with equal data and steps (issue 5, "show it").

1. the synthetic world (``generate_world``: pairs + the ``classification``, ``heldout`` and ``retrieval`` splits);
2. the pairs' captions embedded once by the frozen LLM into an offline store (``embed_to_store``, resumable);
3. both models trained by the shared engine (``model.kind: flame`` / ``clip_baseline``) from the same seed, on
   the same shards in the same order, with the same optimizer, schedule and number of steps; the image towers are
   identical (same config, same initial weights);
4. both scored by the same code (``frozenvl.flame.evaluate``): zero-shot accuracy on held-out compositions and on
   all 36 compositions, and long-caption retrieval Recall@K.

``run_comparison(ComparisonConfig(...))`` returns the results dict and writes ``results.json``;
``format_table(results)`` gives the table ending with a ``headline:`` line. Script: ``benchmarks/flame_vs_clip.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from frozenvl.cli.devices import add_device_arguments, device_and_dtype, engine_device
from frozenvl.config import Config
from frozenvl.files import write_text_atomic

log = logging.getLogger(__name__)
MODELS = ("flame", "clip_baseline")
EVAL_SPLITS = ("classification", "heldout", "retrieval")


@dataclass
class ComparisonConfig(Config):
    out: str = "runs/flame_vs_clip"
    world: str | None = None  # an existing synthetic world; None: generate one under out/world
    seed: int = 0
    n_pairs: int = 2000  # training pairs (every caption goes through the frozen LLM once)
    n_eval: int = 300  # records per evaluation split
    image_size: int = 64
    # The frozen LLM and how it embeds (FLAME side).
    lm: str = "embedded:smollm2-135m"
    prompts: str = "short"  # the store's prompt set; zero-shot class prompts use "raw"
    mode: str = "fda"
    embed_batch_size: int = 16
    # Training, identical for both models.
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    loss: str = "sigmoid"
    sampled_facets: int = 3
    # The shared image tower: a preset, then overrides.
    preset: str = "tiny"
    vision: dict[str, Any] = field(default_factory=lambda: {"patch_size": 8, "width": 128, "layers": 4, "heads": 4})
    head_hidden: int | None = 512
    # The baseline's text tower.
    text: dict[str, Any] = field(default_factory=lambda: {"width": 128, "layers": 2, "heads": 4})
    tokenizer: dict[str, Any] = field(default_factory=lambda: {"max_length": 77})  # CLIP's BPE (open_clip)
    # Zero-shot class prompts, "{}" = the class name with its article ("a red square", "an orange circle").
    templates: list[str] = field(default_factory=lambda: ["{}."])
    threads: int | None = 1
    progress: bool = False


def _article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def prepare_world(config: ComparisonConfig) -> Path:
    """The world folder: reused when it holds the same generation settings, else (re)generated."""
    from frozenvl.data import WorldConfig, generate_world

    world = Path(config.world) if config.world else Path(config.out) / "world"
    wanted = WorldConfig(seed=config.seed, image_size=config.image_size, n_pairs=config.n_pairs,
                         n_eval=config.n_eval, shard_size=500, splits=("pairs", *EVAL_SPLITS))
    meta_path = world / "world.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        same = {k: meta["config"].get(k) for k in ("seed", "image_size", "n_pairs", "n_eval")}
        if same == {"seed": wanted.seed, "image_size": wanted.image_size, "n_pairs": wanted.n_pairs,
                    "n_eval": wanted.n_eval} and set(EVAL_SPLITS) <= set(meta["splits"]):
            return world
        if config.world:
            raise ValueError(f"{world} was generated with other settings ({same}); use another folder")
    generate_world(world, wanted, progress=config.progress, log=None)
    return world


def embed_pairs(config: ComparisonConfig, world: Path, encoder) -> dict[str, Any]:
    """Embed every training caption once (resumable; a store made with another LLM or prompt set is refused)."""
    from frozenvl.data.synth import world_split_shards
    from frozenvl.flame.caption_sources import iter_captions
    from frozenvl.flame.store import EmbeddingStore, embed_to_store

    store = Path(config.out) / f"store-{config.prompts}"
    shards = world_split_shards(world, "pairs")
    start = time.perf_counter()
    report = embed_to_store(iter_captions(shards), encoder, store, batch_size=config.embed_batch_size,
                            shard_size=1000, progress=config.progress, total=config.n_pairs)
    seconds = time.perf_counter() - start
    return {"store": str(store), "captions": len(EmbeddingStore(store)), "embedded_now": report.written,
            "seconds": round(seconds, 1),
            "captions_per_s": round(report.written / seconds, 2) if report.written else None}


def run_config(config: ComparisonConfig, kind: str, world: Path, store: str, device: str = "cpu"):
    """The engine's run config of one model: everything but ``model`` is the same for both (``device``: the
    engine's ``train.device``)."""
    from frozenvl.data.synth import split_glob
    from frozenvl.train.config import RunConfig

    tower = {"preset": config.preset, "image_size": config.image_size, "vision": dict(config.vision),
             "head_hidden": config.head_hidden, "loss": config.loss, "store": store}
    if kind == "flame":
        options = {**tower, "sampled_facets": config.sampled_facets}
    else:
        options = {**tower, "text": dict(config.text), "tokenizer": dict(config.tokenizer), "caption": "caption"}
    return RunConfig.from_dict({
        "model": {"kind": kind, kind: options},
        "data": {"datasets": [{"name": "pairs", "shards": split_glob(world, "pairs"),
                               "batch_size": config.batch_size}],
                 "seed": config.seed, "shuffle_buffer": 512},
        "optim": {"lr": config.lr, "weight_decay": config.weight_decay, "warmup_steps": config.warmup_steps,
                  "schedule": "cosine", "min_lr_ratio": 0.05},
        "train": {"run_dir": str(Path(config.out) / f"run-{kind}"), "steps": config.steps, "seed": config.seed,
                  "log_every": max(1, config.steps // 20), "checkpoint_every": 0, "keep_checkpoints": 1,
                  "progress": config.progress, "device": device, "threads": config.threads},
    })


def train_model(config: ComparisonConfig, kind: str, world: Path, store: str,
                device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    from frozenvl.tasks import build_task
    from frozenvl.train.loop import train

    rc = run_config(config, kind, world, store, device)
    torch.manual_seed(config.seed)  # both models build visual then head first: identical initial image towers
    task = build_task(rc.model)
    result = train(rc, task=task, overwrite=True)  # a rerun trains again from scratch
    trainable = sum(p.numel() for p in task.model.parameters() if p.requires_grad)
    return task.model.eval(), {"steps": result.step, "final_loss": result.last_loss,
                               "seconds": round(result.seconds, 1), "trainable_parameters": trainable,
                               "checkpoint": str(result.checkpoint) if result.checkpoint else None}


def evaluate_model(model, retrieval_encoder, class_encoder, evals: dict[str, Any], templates: list[str]) -> dict:
    from frozenvl.flame.evaluate import score_retrieval, score_zero_shot

    out = {}
    for split in ("heldout", "classification"):
        data = evals[split]
        classnames = [_article(c) for c in data.classnames]
        out[f"zero_shot/{split}"] = score_zero_shot(model, class_encoder, data.images, data.labels, classnames,
                                                    templates, batch_size=64)
    data = evals["retrieval"]
    out["retrieval/long"] = score_retrieval(model, retrieval_encoder, data.images, data.captions,
                                            data.text_to_image, batch_size=64)
    return out


def run_comparison(config: ComparisonConfig, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """``device``: where the frozen LLM embeds and both models train and are scored (default: the CPU);
    ``dtype``: the frozen LLM's (the towers train in float32)."""
    from frozenvl.flame.synthetic_eval import world_classification, world_retrieval
    from frozenvl.flame.text_encoder import FacetTextEncoder

    device = torch.device("cpu") if device is None else device
    engine = engine_device(device)  # before any work

    if config.threads:
        torch.set_num_threads(config.threads)
    start = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    world = prepare_world(config)
    encoder = FacetTextEncoder.from_source(config.lm, config.prompts, mode=config.mode, dtype=dtype, device=device)
    raw_encoder = FacetTextEncoder(encoder.model, encoder.tokenizer, "raw", layer=encoder.layer,
                                   max_length=encoder.max_length, mode=config.mode, source=config.lm)
    embedding = embed_pairs(config, world, encoder)
    evals = {split: world_classification(world, split, config.image_size) for split in ("heldout", "classification")}
    evals["retrieval"] = world_retrieval(world, config.image_size, long=True)
    results: dict[str, Any] = {"config": asdict(config), "world": str(world), "embedding": embedding,
                               "text_encoder": encoder.describe(), "models": {},
                               "device": str(device), "llm_dtype": str(dtype).removeprefix("torch.")}
    for kind in MODELS:
        model, training = train_model(config, kind, world, embedding["store"], engine)
        t = time.perf_counter()
        if kind == "flame":
            metrics = evaluate_model(model, encoder, raw_encoder, evals, config.templates)
        else:
            text = model.text_encoder()
            metrics = evaluate_model(model, text, text, evals, config.templates)
        results["models"][kind] = {"training": training, "eval_seconds": round(time.perf_counter() - t, 1),
                                   **metrics}
    n_classes = len(evals["heldout"].classnames)
    results["chance"] = {"zero_shot_top1": 100 / n_classes, "retrieval_R@1": 100 / len(evals["retrieval"].images)}
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["headline"] = headline(results)
    write_text_atomic(out / "results.json", json.dumps(results, indent=1))
    return results


ROWS = (
    ("zero-shot top-1, held-out compositions", "zero_shot/heldout", "top1"),
    ("zero-shot top-1, all 36 compositions", "zero_shot/classification", "top1"),
    ("long-caption R@1 image->text", "retrieval/long", "image_to_text_R@1"),
    ("long-caption R@1 text->image", "retrieval/long", "text_to_image_R@1"),
    ("long-caption R@5 image->text", "retrieval/long", "image_to_text_R@5"),
    ("long-caption R@5 text->image", "retrieval/long", "text_to_image_R@5"),
)


def headline(results: dict[str, Any]) -> str:
    f, c = results["models"]["flame"], results["models"]["clip_baseline"]
    cfg = results["config"]

    def r1(m: dict) -> str:
        r = m["retrieval/long"]
        return f"{r['image_to_text_R@1']:.1f}/{r['text_to_image_R@1']:.1f}%"

    return (f"headline: {cfg['n_pairs']} pairs, {cfg['steps']} steps x {cfg['batch_size']}: held-out zero-shot "
            f"top-1 FLAME {f['zero_shot/heldout']['top1']:.1f}% vs CLIP {c['zero_shot/heldout']['top1']:.1f}% "
            f"(chance {results['chance']['zero_shot_top1']:.1f}%); long-caption R@1 (i2t/t2i) FLAME {r1(f)} vs "
            f"CLIP {r1(c)} (chance {results['chance']['retrieval_R@1']:.1f}%)")


def format_table(results: dict[str, Any]) -> str:
    f, c = results["models"]["flame"], results["models"]["clip_baseline"]
    lines = [f"{'metric':<42} {'FLAME':>8} {'CLIP':>8}", "-" * 60]
    for label, group, key in ROWS:
        lines.append(f"{label:<42} {f[group][key]:>8.1f} {c[group][key]:>8.1f}")
    for label, key in (("final train loss", "final_loss"), ("train seconds", "seconds"),
                       ("trainable parameters", "trainable_parameters")):
        fv, cv = f["training"][key], c["training"][key]
        fmt = "{:>8.3f}" if isinstance(fv, float) and key == "final_loss" else "{:>8}"
        lines.append(f"{label:<42} " + fmt.format(fv) + " " + fmt.format(cv))
    e = results["embedding"]
    lines.append(f"LLM embedding: {e['captions']} captions ({e['embedded_now']} now, {e['seconds']} s, "
                 f"{e['captions_per_s']} captions/s); total {results['seconds']} s")
    lines.append(results["headline"])
    return "\n".join(lines)


EPILOG = """\
examples:
  frozenvl compare                                          # the default scale (CPU, about 20 minutes)
  frozenvl compare n_pairs=500 n_eval=100 steps=100         # quicker
  frozenvl compare --config my_comparison.yaml loss=infonce  # a YAML file of ComparisonConfig fields, then overrides

Rerunning with the same out reuses the world and the embedding store (the store resumes if it was interrupted).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frozenvl compare",
        description="FLAME (frozen LLM text side) vs its CLIP baseline (trainable text tower), equal data and steps, "
                    "on the synthetic world: zero-shot accuracy on held-out compositions and long-caption retrieval. "
                    "Writes OUT/results.json and prints a table ending with a headline line.",
        epilog=EPILOG + "\n" + textwrap.fill("keys: " + ", ".join(f.name for f in dataclasses.fields(ComparisonConfig)),
                                             width=116, subsequent_indent="    ") + "\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file of ComparisonConfig fields (default: the defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="field overrides (values parsed as YAML)")
    add_device_arguments(p, "the frozen LLM and both towers (--dtype: the LLM's; the towers train in float32)")
    return p


def main(argv: list[str] | None = None) -> int:
    from frozenvl.config import ConfigError, apply_override, load_yaml

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        tree = load_yaml(args.config) if args.config else {}
        for assignment in args.overrides:
            apply_override(tree, assignment, ComparisonConfig)
        config = ComparisonConfig.from_dict(tree)
    except ConfigError as e:
        print(f"frozenvl compare: config error: {e}", file=sys.stderr)
        return 2
    try:
        device, dtype = device_and_dtype(args)
        engine_device(device)
    except ValueError as e:
        print(f"frozenvl compare: error: {e}", file=sys.stderr)
        return 2
    results = run_comparison(config, device, dtype)
    print(json.dumps({k: results[k] for k in ("embedding", "seconds")}))
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
