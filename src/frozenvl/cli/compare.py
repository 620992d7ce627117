"""FLAME vs its CLIP baseline on the synthetic world, with equal data and steps (issue 5, "show it").

1. the synthetic world (``generate_world``: pairs + the ``classification``, ``heldout`` and ``retrieval`` splits);
2. the pairs' captions embedded once by the frozen LLM into an offline store (``embed_to_store``, resumable);
3. both models trained by the shared engine (``model.kind: flame`` / ``clip_baseline``) from the same seed, on
   the same shards in the same order, with the same optimizer, schedule and number of steps; the image towers are
   identical (same config, same initial weights);
4. both scored by the same code (``frozenvl.flame.evaluate``): zero-shot accuracy on held-out compositions and on
   all 36 compositions, and long-caption retrieval Recall@K.

Options: ``languages`` (e.g. ``[en, fr, es, de]``) scores both models on the retrieval split's captions in each
language (the world's templated translations; both models trained on English pairs only); ``prompt_sets``
(e.g. ``[raw, short, long]``) trains FLAME once per prompt set, scores each on the ``retrieval_val`` split (the
validation split: the set chosen is the one with the best mean R@1 there) and on the test splits.

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
from frozenvl.cli.errors import one_line
from frozenvl.config import Config
from frozenvl.files import read_json, write_text_atomic

log = logging.getLogger(__name__)
MODELS = ("flame", "clip_baseline")
EVAL_SPLITS = ("classification", "heldout", "retrieval", "retrieval_val")


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
    # Retrieval per caption language (en + the world's translations: fr, es, de); both models train on English.
    languages: list[str] = field(default_factory=lambda: ["en"])
    language_captions: str = "long"  # the captions scored per language: long (one per image) or short (first)
    # The number of prompts: FLAME trained once per prompt set (empty: only `prompts`), the best on validation kept.
    prompt_sets: list[str] = field(default_factory=list)
    threads: int | None = 1
    progress: bool = False

    def validate(self, where: str) -> None:
        from frozenvl.config import ConfigError
        from frozenvl.data.synth import caption_languages
        from frozenvl.flame.prompts import OFFICIAL_PROMPT_SETS

        known = ["en", *caption_languages()]
        unknown = [lang for lang in self.languages if lang not in known]
        if unknown or not self.languages:
            raise ConfigError(f"{where}.languages: {unknown or 'empty'}; the synthetic world's caption languages "
                              f"are {', '.join(known)}")
        if self.language_captions not in ("long", "short"):
            raise ConfigError(f"{where}.language_captions must be long or short; got {self.language_captions!r}")
        bad = [p for p in self.prompt_sets if p not in OFFICIAL_PROMPT_SETS]
        if bad or len(set(self.prompt_sets)) != len(self.prompt_sets):
            raise ConfigError(f"{where}.prompt_sets: {bad or 'repeated'}; name distinct sets of "
                              f"{', '.join(OFFICIAL_PROMPT_SETS)}")


def _article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def prepare_world(config: ComparisonConfig) -> Path:
    """The world folder: reused when it holds the same generation settings, else (re)generated."""
    from frozenvl.data import WorldConfig, generate_world

    world = Path(config.world) if config.world else Path(config.out) / "world"
    wanted = WorldConfig(seed=config.seed, image_size=config.image_size, n_pairs=config.n_pairs,
                         n_eval=config.n_eval, shard_size=500, splits=("pairs", *EVAL_SPLITS))
    meta_path = world / "world.json"
    needed = set(EVAL_SPLITS) - (set() if config.prompt_sets else {"retrieval_val"})  # validation: prompt_sets
    if meta_path.exists():
        try:
            meta = read_json(meta_path, "world description")
            same = {k: meta["config"].get(k) for k in ("seed", "image_size", "n_pairs", "n_eval")}
            complete = needed <= set(meta["splits"]) and \
                set(config.languages) <= set(meta.get("caption_languages", ["en"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # binary, not JSON, too deep, other shape
            if config.world:
                raise ValueError(str(e) if isinstance(e, ValueError) else
                                 f"world description {meta_path} is not one ({type(e).__name__}: {e})") from None
            same, complete = None, False  # our own world folder: generated again
        if same == {"seed": wanted.seed, "image_size": wanted.image_size, "n_pairs": wanted.n_pairs,
                    "n_eval": wanted.n_eval} and complete:
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


def run_config(config: ComparisonConfig, kind: str, world: Path, store: str, device: str = "cpu",
               run_name: str | None = None):
    """The engine's run config of one model: everything but ``model`` is the same for both (``device``: the
    engine's ``train.device``; ``run_name``: the run folder under ``out``, default ``run-<kind>``)."""
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
        "train": {"run_dir": str(Path(config.out) / (run_name or f"run-{kind}")), "steps": config.steps,
                  "seed": config.seed,
                  "log_every": max(1, config.steps // 20), "checkpoint_every": 0, "keep_checkpoints": 1,
                  "progress": config.progress, "device": device, "threads": config.threads},
    })


def train_model(config: ComparisonConfig, kind: str, world: Path, store: str,
                device: str = "cpu", run_name: str | None = None) -> tuple[torch.nn.Module, dict]:
    from frozenvl.tasks import build_task
    from frozenvl.train.loop import train

    rc = run_config(config, kind, world, store, device, run_name)
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
    def sibling(prompts: str) -> FacetTextEncoder:  # the same LLM with another prompt set
        return FacetTextEncoder(encoder.model, encoder.tokenizer, prompts, layer=encoder.layer,
                                max_length=encoder.max_length, mode=config.mode, source=config.lm)

    raw_encoder = sibling("raw")
    evals = {split: world_classification(world, split, config.image_size) for split in ("heldout", "classification")}
    evals["retrieval"] = world_retrieval(world, config.image_size, long=True)
    flame_runs = {}  # prompt set -> (model, training, encoder, embedding)
    for prompts in config.prompt_sets or [config.prompts]:
        set_encoder = encoder if prompts == config.prompts else sibling(prompts)
        set_embedding = embed_pairs(dataclasses.replace(config, prompts=prompts), world, set_encoder)
        run_name = f"run-flame-{prompts}" if config.prompt_sets else None
        flame_runs[prompts] = (*train_model(config, "flame", world, set_embedding["store"], engine, run_name),
                               set_encoder, set_embedding)
    ablation = prompt_ablation(config, world, flame_runs, raw_encoder, evals) if config.prompt_sets else None
    chosen = max(ablation, key=lambda p: ablation[p]["validation_R@1"]) if ablation else config.prompts
    flame_model, flame_training, encoder, embedding = flame_runs[chosen]
    results: dict[str, Any] = {"config": asdict(config), "world": str(world), "embedding": embedding,
                               "text_encoder": encoder.describe(), "models": {},
                               "device": str(device), "llm_dtype": str(dtype).removeprefix("torch.")}
    text_encoders = {}
    for kind in MODELS:
        t = time.perf_counter()
        if kind == "flame":
            model, training = flame_model, flame_training
            metrics = ablation[chosen]["metrics"] if ablation else evaluate_model(model, encoder, raw_encoder, evals,
                                                                                  config.templates)
        else:
            model, training = train_model(config, kind, world, embedding["store"], engine)
            text = model.text_encoder()
            metrics = evaluate_model(model, text, text, evals, config.templates)
        text_encoders[kind] = (model, encoder if kind == "flame" else model.text_encoder())
        results["models"][kind] = {"training": training, "eval_seconds": round(time.perf_counter() - t, 1),
                                   **metrics}
    if ablation:
        clip, clip_text = text_encoders["clip_baseline"]
        ablation["clip_baseline"] = {"facets": 1, "metrics": results["models"]["clip_baseline"],
                                     **_short_and_validation(config, world, clip, clip_text)}
        results["prompt_ablation"] = {"chosen": chosen, "rows": ablation}
    if config.languages != ["en"]:
        results["languages"] = score_languages(config, world, text_encoders, results["models"])
    n_classes = len(evals["heldout"].classnames)
    results["chance"] = {"zero_shot_top1": 100 / n_classes, "retrieval_R@1": 100 / len(evals["retrieval"].images)}
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["headline"] = headline(results)
    write_text_atomic(out / "results.json", json.dumps(results, indent=1))
    return results


def _first_caption(data):
    """A retrieval set with the first caption of each image only (one query per image both ways)."""
    from frozenvl.flame.synthetic_eval import TensorRetrievalSet

    first = [data.text_to_image.index(i) for i in range(len(data.images))]
    return TensorRetrievalSet(data.images, [data.captions[j] for j in first], list(range(len(data.images))))


def _short_and_validation(config: ComparisonConfig, world: Path, model, text) -> dict[str, Any]:
    """Short-caption retrieval (first short caption per image) on the test split, and long- and short-caption
    retrieval on the validation split (``retrieval_val``)."""
    from frozenvl.flame.evaluate import score_retrieval
    from frozenvl.flame.synthetic_eval import world_retrieval

    out = {}
    for split, name in (("retrieval", "test"), ("retrieval_val", "validation")):
        sets = {"short": _first_caption(world_retrieval(world, config.image_size, long=False, split=split))}
        if name == "validation":
            sets["long"] = world_retrieval(world, config.image_size, long=True, split=split)
        for captions, data in sets.items():
            out[f"{name}/{captions}"] = score_retrieval(model, text, data.images, data.captions, data.text_to_image,
                                                        batch_size=64)
    out["validation_R@1"] = sum(out[f"validation/{c}"][f"{d}_R@1"] for c in ("long", "short")
                                for d in ("image_to_text", "text_to_image")) / 4
    return out


def prompt_ablation(config: ComparisonConfig, world: Path, flame_runs: dict, raw_encoder,
                    evals: dict[str, Any]) -> dict[str, Any]:
    """Each FLAME run (one per prompt set) scored on the validation split (long and short captions: the
    selection score ``validation_R@1`` is the mean of their R@1 both ways) and on the test splits."""
    rows = {}
    for prompts, (model, training, encoder, embedding) in flame_runs.items():
        rows[prompts] = {"facets": encoder.num_facets, "store": embedding["store"], "training": training,
                         "metrics": evaluate_model(model, encoder, raw_encoder, evals, config.templates),
                         **_short_and_validation(config, world, model, encoder)}
    return rows


def score_languages(config: ComparisonConfig, world: Path, text_encoders: dict, models: dict) -> dict[str, Any]:
    """{language: {model: Recall@1/5/10 both ways}} on the test retrieval split's captions in each language
    (``language_captions``: the long caption, or the first short caption, of each image)."""
    from frozenvl.flame.evaluate import score_retrieval
    from frozenvl.flame.synthetic_eval import world_retrieval

    long = config.language_captions == "long"
    out: dict[str, Any] = {}
    for language in config.languages:
        data = world_retrieval(world, config.image_size, long=long, language=language)
        data = data if long else _first_caption(data)
        out[language] = {}
        for kind, (model, text) in text_encoders.items():
            if language == "en" and long:  # the English long-caption scores are the main table's
                out[language][kind] = models[kind]["retrieval/long"]
            else:
                out[language][kind] = score_retrieval(model, text, data.images, data.captions, data.text_to_image,
                                                      batch_size=64)
    return out


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
    lines += prompt_table(results) + language_table(results)
    e = results["embedding"]
    lines.append(f"LLM embedding: {e['captions']} captions ({e['embedded_now']} now, {e['seconds']} s, "
                 f"{e['captions_per_s']} captions/s); total {results['seconds']} s")
    lines.append(results["headline"])
    return "\n".join(lines)


def _r(metrics: dict, key: str) -> str:
    """Recall in % with its Wilson 95 % half-width (queries: the images for image->text, captions otherwise)."""
    from frozenvl.eval.results import wilson_half_width

    n = metrics["num_images"] if key.startswith("image") else metrics["num_captions"]
    value = metrics[key]
    return f"{value:5.1f}+-{100 * wilson_half_width(round(value * n / 100), n):4.1f}"


def prompt_table(results: dict[str, Any]) -> list[str]:
    """The number-of-prompts table: one row per FLAME prompt set and the CLIP baseline; R@1 image->text /
    text->image with 95 % intervals; * marks the set chosen on the validation split."""
    ablation = results.get("prompt_ablation")
    if not ablation:
        return []
    n = next(iter(ablation["rows"].values()))["metrics"]["retrieval/long"]["num_images"]
    lines = ["", f"number of prompts (R@1 % +- 95 % Wilson half-width, i2t / t2i; {n} images per split; "
                 "* = chosen on validation)",
             f"{'model':<14} {'K':>2} {'val mean R@1':>12} {'test long i2t':>14} {'test long t2i':>14} "
             f"{'test short i2t':>14} {'test short t2i':>14} {'0-shot held-out':>15} {'0-shot all':>11}"]
    for name, row in ablation["rows"].items():
        m = row["metrics"]
        label = ("FLAME " + name + ("*" if name == ablation["chosen"] else "")) if name != "clip_baseline" else "CLIP"
        lines.append(f"{label:<14} {row['facets']:>2} {row['validation_R@1']:>12.1f} "
                     f"{_r(m['retrieval/long'], 'image_to_text_R@1'):>14} "
                     f"{_r(m['retrieval/long'], 'text_to_image_R@1'):>14} "
                     f"{_r(row['test/short'], 'image_to_text_R@1'):>14} "
                     f"{_r(row['test/short'], 'text_to_image_R@1'):>14} "
                     f"{m['zero_shot/heldout']['top1']:>15.1f} {m['zero_shot/classification']['top1']:>11.1f}")
    return lines


def language_table(results: dict[str, Any]) -> list[str]:
    """Retrieval per caption language and model: R@1 (+- 95 % half-width), R@5, R@10 both ways."""
    languages = results.get("languages")
    if not languages:
        return []
    captions = results["config"].get("language_captions", "long")
    lines = ["", f"retrieval per language ({captions} captions; both models trained on English pairs only)",
             f"{'language':<9} {'model':<6} {'i2t R@1':>12} {'R@5':>6} {'R@10':>6} {'t2i R@1':>12} {'R@5':>6} "
             f"{'R@10':>6} {'n':>5}"]
    for language, models in languages.items():
        for kind, m in models.items():
            label = "FLAME" if kind == "flame" else "CLIP"
            lines.append(f"{language:<9} {label:<6} {_r(m, 'image_to_text_R@1'):>12} {m['image_to_text_R@5']:>6.1f} "
                         f"{m['image_to_text_R@10']:>6.1f} {_r(m, 'text_to_image_R@1'):>12} "
                         f"{m['text_to_image_R@5']:>6.1f} {m['text_to_image_R@10']:>6.1f} {m['num_images']:>5}")
    return lines


EPILOG = """\
examples:
  frozenvl compare                                          # the default scale (CPU, about 20 minutes)
  frozenvl compare n_pairs=500 n_eval=100 steps=100         # quicker
  frozenvl compare --config my_comparison.yaml loss=infonce  # a YAML file of ComparisonConfig fields, then overrides
  frozenvl compare languages=[en,fr,es,de]                  # retrieval per caption language (trained on English)
  frozenvl compare prompt_sets=[raw,short,long]             # number of prompts: FLAME per set, chosen on validation

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
        print(f"frozenvl compare: config error: {one_line(e)}", file=sys.stderr)
        return 2
    try:
        device, dtype = device_and_dtype(args)
        engine_device(device)
    except ValueError as e:
        print(f"frozenvl compare: error: {one_line(e)}", file=sys.stderr)
        return 2
    results = run_comparison(config, device, dtype)
    print(json.dumps({k: results[k] for k in ("embedding", "seconds")}))
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
