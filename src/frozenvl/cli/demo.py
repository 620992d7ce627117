"""``frozenvl demo``: the main job on the embedded default, offline, on the CPU (or a GPU: ``--device``).

Stages (each is skipped when its output already exists, so a re-run reuses what is computed):

1. ``world/``: the synthetic world (webdataset shards for training and evaluation);
2. ``flamingo/``: a Flamingo on frozen SmolLM2-135M + frozen EfficientNet-Lite0, trained with the paper's
   multi-dataset objective (pairs + interleaved pages + video) by the shared training engine;
3. ``fewshot/``: few-shot evaluation at 0/4/8 shots (the in-context task ``synth_icl_words`` and captioning),
   demonstration prefixes encoded once;
4. ``flame/``: FLAME facet embeddings from the frozen SmolLM2, the FLAME image tower and the CLIP baseline trained
   on the same pairs, scored on held-out compositions and long-caption retrieval;
5. ``report.md`` with PNG plots and ``results.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from frozenvl.cli.devices import add_device_arguments
from frozenvl.files import read_json, write_text_atomic


@dataclass(frozen=True)
class DemoPlan:
    n_pairs: int
    n_interleaved: int
    n_video: int
    n_eval: int
    n_episodes: int
    flamingo_steps: int
    pairs_batch: int  # image-caption pairs per step, the visual pathway's main signal
    eval_every: int
    icl_queries: int
    caption_queries: int
    shots: tuple[int, ...]
    flame_captions: int
    flame_steps: int
    reliance_pairs: int = 200  # held-out pairs of the image-reliance check
    pages_batch: int = 2  # interleaved pages per step; most are in-context naming ("words") pages
    words_pages: float = 12.0  # weight of the "words" page theme in the world (caption, qa, count: 1 each)
    icl_trials: int = 3  # demonstration draws of synth_icl_words per shot count
    placement: str = "first"  # FlamingoConfig.placement; "upper" (cheaper steps) barely looked on the validation world
    lr: float = 5.0e-4  # at 1e-3 the attention gates never opened on the validation world (docs/evaluation.md)
    flame_eval: int = 100  # images per FLAME evaluation split (retrieval: one long caption each, in 4 languages)
    # The second training stage (0 steps: none), continuing the first: mostly in-context naming pages, so that the
    # model learns to take a picture's name from earlier pictures of its prompt (docs/evaluation.md).
    icl_steps: int = 0
    icl_pairs_batch: int = 4  # image-caption pairs kept in every step: pages alone make the model forget captions
    icl_pages_batch: int = 6
    icl_lr: float = 1.0e-3
    icl_gate_lr: float = 5.0e-3  # the gates are open after the first stage; its 2e-2 was for opening them


ADAM_BETAS = (0.9, 0.95)  # the demo's AdamW betas, both stages (see flamingo_run_config)

# Settings chosen on a validation world (frozenvl data synth --seed 1, not the demo's seed 0); docs/evaluation.md.
# The in-context stage is off (icl_steps=0): 300 steps of it raised 8-shot synth_icl_words to 45.8 % on the validation
# world but left the demo's world at chance (29.9 %, 3 draws) at twice the training time (docs/evaluation.md).
FULL = DemoPlan(n_pairs=3000, n_interleaved=600, n_video=20, n_eval=100, n_episodes=40, flamingo_steps=200,
                pairs_batch=16, eval_every=100, icl_queries=240, caption_queries=50, shots=(0, 4, 8),
                flame_captions=500, flame_steps=150, reliance_pairs=200, flame_eval=100)
QUICK = DemoPlan(n_pairs=300, n_interleaved=60, n_video=30, n_eval=40, n_episodes=6, flamingo_steps=6, pairs_batch=4,
                 eval_every=3, icl_queries=4, caption_queries=2, shots=(0, 4), flame_captions=60, flame_steps=10,
                 pages_batch=1, icl_trials=1, reliance_pairs=8, flame_eval=20)


def _say(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------------------------ stages
def stage_world(out: Path, plan: DemoPlan) -> Path:
    from frozenvl.data import WorldConfig, generate_world

    world = out / "world"
    if (world / "world.json").exists():
        _say(f"[1/5] synthetic world: reusing {world}")
        return world
    _say(f"[1/5] synthetic world: {plan.n_pairs} pairs, {plan.n_interleaved} pages (in-context naming pages "
         f"weighted {plan.words_pages:g}), {plan.n_video} videos ...")
    generate_world(world, WorldConfig(seed=0, n_pairs=plan.n_pairs, n_interleaved=plan.n_interleaved,
                                      n_video=plan.n_video, n_eval=plan.n_eval, n_episodes=plan.n_episodes,
                                      page_themes={"words": plan.words_pages},
                                      shard_size=max(50, plan.n_pairs // 10)))
    return world


def _pair_shards(world: Path) -> list[str]:
    """The world's pair shards in order; the first is held out of the demo's Flamingo training."""
    from frozenvl.data.synth import world_split_shards

    return world_split_shards(world, "pairs")


def flamingo_run_config(world: Path, run_dir: Path, plan: DemoPlan, device: str = "auto",
                        init_from: Path | None = None) -> dict[str, Any]:
    """The run config of the demo's Flamingo: written beside the run, loadable with ``frozenvl train``
    (``device``: its ``train.device``). Without ``init_from``: the first stage, from scratch (``plan.flamingo_steps``
    steps that open the visual pathway); with it: the in-context stage continuing that checkpoint
    (``plan.icl_steps`` steps, mostly in-context naming pages, its own batch and learning rates)."""
    from frozenvl.data.synth import split_glob

    pairs = _pair_shards(world)
    icl = init_from is not None
    steps = plan.icl_steps if icl else plan.flamingo_steps
    pairs_batch, pages_batch = (plan.icl_pairs_batch, plan.icl_pages_batch) if icl else (plan.pairs_batch,
                                                                                          plan.pages_batch)
    config = {
        "model": {
            "lm": "embedded:smollm2-135m",
            "vision": "embedded:efficientnet-lite0",
            "flamingo": {"cross_attn_every": 4, "placement": plan.placement, "resampler": "perceiver",
                         "resampler_dim": 256, "resampler_depth": 2, "num_latents": 16, "max_frames": 8,
                         "max_images": 10, "max_length": 192},
            # The frozen encoder's features, computed once per image, beside the run (a re-run of the demo reuses
            # them; deleting the demo's folder deletes them): about 123 KiB per frame.
            "feature_cache": True,
            "feature_cache_dir": str(run_dir.parent / "features"),
            # Each micro-batch's samples in one row without padding (a third of a padded step's slots were
            # padding): the same loss, 1.29x the samples/s with the cache and bf16 (benchmarks/train_step.py).
            "packing": True,
        },
        "data": {
            "mixing": "accumulate",
            "datasets": [
                {"name": "pairs", "shards": pairs[1:], "weight": 1.0, "batch_size": pairs_batch},
                # Pages whose pictures are named with nonsense words defined on the page (the in-context task's
                # format), with the other themes; every picture kept.
                {"name": "interleaved", "shards": split_glob(world, "interleaved"), "weight": 1.0,
                 "batch_size": pages_batch, "max_images": 9, "max_tokens": 128, "single_image_drop_prob": 0.0},
            ],
            "eval_datasets": [{"name": "pairs", "shards": pairs[:1], "batch_size": 16}],
            "eval_batches": 2,
            "shuffle_buffer": 200,
        },
        # The tanh gates start at 0 and Adam moves a scalar by about its learning rate per step: at lr 5e-4 a
        # few hundred steps leave them below ~0.1 and the adapters learn the captions' text instead of the
        # images. A 40x gate learning rate opens them (docs/evaluation.md, "Does the model look?").
        # Adam's second moment averaged over ~20 steps (beta2 0.95, as large LM runs use) rather than ~1000: on the
        # validation world the gradient spikes stay small (largest norm 38 vs 153) and the model looks more (image
        # reliance gain 0.288 +- 0.051 vs 0.136 +- 0.031, n=200; docs/evaluation.md).
        "optim": {"lr": plan.icl_lr if icl else plan.lr, "gate_lr": plan.icl_gate_lr if icl else 2.0e-2,
                  "betas": list(ADAM_BETAS), "weight_decay": 0.1, "warmup_steps": min(10, steps // 2),
                  "schedule": "cosine", "min_lr_ratio": 0.1, "grad_clip": 1.0},
        "train": {"run_dir": str(run_dir), "steps": steps, "precision": training_precision(device),
                  "log_every": 5,
                  "eval_every": plan.eval_every, "checkpoint_every": plan.eval_every, "keep_checkpoints": 2,
                  "device": device},
    }
    if icl:
        config["model"]["init_from"] = str(init_from)
    return config


ICL_RUN = "flamingo_icl"  # the in-context stage's run folder, beside the first stage's "flamingo"


def _final_checkpoint(run_dir: Path, steps: int) -> Path | None:
    from frozenvl.train.checkpoint import step_dir
    from frozenvl.train.loop import CHECKPOINTS_DIR

    final = step_dir(run_dir / CHECKPOINTS_DIR, steps)
    return final if final.exists() else None


def _train_stage(run_dir: Path, config: dict[str, Any], label: str) -> Path:
    """Trains one stage in ``run_dir`` (reused when its final checkpoint exists; resumed when it was killed)."""
    from frozenvl.train.config import load_config
    from frozenvl.train.loop import RUN_CONFIG_NAME, run_outputs, train

    steps = config["train"]["steps"]
    done = _final_checkpoint(run_dir, steps)
    if done is not None:
        _say(f"[2/5] Flamingo: reusing {done} ({label})")
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / RUN_CONFIG_NAME
    write_text_atomic(config_path, yaml.safe_dump(config, sort_keys=False))
    resume = bool(run_outputs(run_dir))  # a run killed before its first checkpoint resumes from scratch
    start = "resuming" if resume else "continuing" if "init_from" in config["model"] else "from scratch"
    _say(f"[2/5] Flamingo ({label}): training {steps} steps ({start}; config {config_path}) ...")
    result = train(load_config(config_path), resume=resume)
    if result.checkpoint is None:
        raise RuntimeError("training wrote no checkpoint")
    return Path(result.checkpoint)


def stage_flamingo(out: Path, world: Path, plan: DemoPlan, device: str = "auto") -> Path:
    """The demo's Flamingo: the first stage (``flamingo/``) opens the visual pathway on image-caption pairs and a
    few pages; the in-context stage (``flamingo_icl/``, when ``plan.icl_steps``) continues it on mostly in-context
    naming pages. Returns the final checkpoint."""
    look = _train_stage(out / "flamingo", flamingo_run_config(world, out / "flamingo", plan, device),
                        "stage 1 of 2, pairs + pages" if plan.icl_steps else "pairs + pages")
    if not plan.icl_steps:
        return look
    return _train_stage(out / ICL_RUN, flamingo_run_config(world, out / ICL_RUN, plan, device, init_from=look),
                        "stage 2 of 2, mostly in-context naming pages")


def stage_fewshot(out: Path, world: Path, trained: Callable[[], tuple[Any, Any]], plan: DemoPlan
                  ) -> dict[str, Any]:
    """``trained()``: the trained Flamingo and its processor (loaded on first use, shared between stages)."""
    from frozenvl.eval.harness import EvalConfig, evaluate
    from frozenvl.eval.results import EvalResults
    from frozenvl.eval.synthetic import synthetic_task_data
    from frozenvl.eval.tasks import get_task

    fewshot = out / "fewshot"
    tasks = {"synth_icl_words": plan.icl_queries, "synth_captioning": plan.caption_queries}
    summaries: dict[str, Any] = {}
    trials = {"synth_icl_words": plan.icl_trials, "synth_captioning": 1}
    for i, (task, limit) in enumerate(tasks.items()):
        path = fewshot / f"{task}.json"
        if path.exists():
            _say(f"[3/5] few-shot {task}: reusing {path}")
            summaries[task] = EvalResults.load(path).summary()
            continue
        model, processor = trained()
        _say(f"[3/5] few-shot {task}: {limit} queries x {trials[task]} demonstration draw(s) at "
             f"{list(plan.shots)} shots ...")
        output = evaluate(model, processor, get_task(task), synthetic_task_data(task, world),
                          EvalConfig(shots=plan.shots, trials=trials[task], seed=i, limit=limit), out_dir=fewshot)
        summaries[task] = output.summary
    return summaries


def stage_image_reliance(out: Path, world: Path, trained: Callable[[], tuple[Any, Any]], n: int = 200,
                         batch_size: int = 16) -> dict[str, float]:
    """Held-out pair loss with the right images vs rolled (wrong) ones over ``n`` held-out pairs (in batches, images
    rolled within each), with a 95 % interval of the gain: does the trained Flamingo look?"""
    from frozenvl.data import LoaderConfig, ShardDataset
    from frozenvl.eval.reliance import image_reliance
    from frozenvl.flamingo.feature_cache import FeatureCache
    from frozenvl.tasks import FlamingoCollator

    path = out / "fewshot" / "image_reliance.json"
    if path.exists():
        _say(f"[3/5] image reliance: reusing {path}")
        return read_json(path, "the demo's image-reliance result")
    model, processor = trained()
    held_out = _pair_shards(world)[0]
    samples = [s for _, s in zip(range(n), ShardDataset(held_out, LoaderConfig(shuffle_shards=False)))]
    collate = FlamingoCollator(processor)
    batches = [collate(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)
               if len(samples[i:i + batch_size]) >= 2]
    cache = FeatureCache(out / "features", model.vision)  # the training run's cache: its held-out pairs are there
    result = image_reliance(model, batches, feature_cache=cache).as_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    _say(f"[3/5] image reliance: held-out pair loss {result['right']:.3f} with the right images, "
         f"{result['shuffled']:.3f} with wrong ones ({result['samples']} pairs)")
    return result


FLAME_LANGUAGES = ["en", "fr", "es", "de"]


def flame_llm_dtype(device: Any = None) -> str:
    """The frozen LLM's dtype in the demo: bfloat16 where bf16 products are native (a CPU with AVX512-BF16 or AMX,
    a GPU with bf16; :func:`frozenvl.cli.devices.fast_bf16`): 3.0-3.2x the captions/s of float32 on such a CPU
    (SmolLM2-135M, short prompts, 1 thread), facet embeddings within cosine 0.9998 of float32 (0.9987 mean, 0.996
    min after centring over the captions); float32 elsewhere, where bf16 products are emulated. The store keeps
    float16 either way."""
    import torch

    from frozenvl.cli.devices import fast_bf16

    return "bfloat16" if fast_bf16(torch.device("cpu") if device is None else device) else "float32"


def flamingo_eval_dtype(device: Any = None) -> str:
    """The evaluated Flamingo's dtype in the demo (few-shot and image reliance): bfloat16 where bf16 products are
    native (see :func:`flame_llm_dtype`), else float32. On the demo's trained model (AVX512-BF16 CPU, 2 threads) the
    few-shot stage took 166 s in bfloat16 vs 345 s in float32, the same in-context answer for 98.7 % of 2160
    queries and the same accuracies and image reliance within their intervals (docs/evaluation.md, "The demo's
    evaluation in bfloat16")."""
    return flame_llm_dtype(device)


def training_precision(device: str = "auto") -> str:
    """The demo's Flamingo training precision on the engine's ``train.device`` (``auto``, ``cpu`` or ``cuda``):
    bf16 autocast where bf16 products are native (see :func:`flame_llm_dtype`), else fp32 (an AVX2-only CPU
    emulates bf16 products, far slower than fp32). The plan's settings hold in both: on the validation world the
    schedules gave the same gate behaviour in fp32 and bf16 (docs/evaluation.md)."""
    import torch

    from frozenvl.cli.devices import fast_bf16

    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "bf16" if fast_bf16(torch.device("cuda" if cuda else "cpu")) else "fp32"


def stage_flame(out: Path, plan: DemoPlan, device: Any = None, dtype: Any = None) -> dict[str, Any]:
    """FLAME (frozen SmolLM2 facet embeddings) vs the CLIP baseline: same image tower, data and steps; retrieval
    scored per caption language (both trained on English pairs), figures with n and 95 % Wilson intervals.
    ``device``: where the LLM embeds and the towers train (default: the CPU); ``dtype``: the LLM's (default:
    :func:`flame_llm_dtype`)."""
    import torch

    from frozenvl.cli.compare import ComparisonConfig, format_table, headline, run_comparison
    from frozenvl.cli.compare_plots import flame_summary, plot_languages, plot_long_captions

    flame_dir = out / "flame"
    result_path = flame_dir / "results.json"
    if result_path.exists():
        _say(f"[4/5] FLAME vs CLIP baseline: reusing {result_path}")
        results = read_json(result_path, "the demo's FLAME result")
    else:
        dtype = str(dtype).removeprefix("torch.") if dtype is not None else flame_llm_dtype(device)
        _say(f"[4/5] FLAME vs CLIP baseline: {plan.flame_captions} captions through the frozen SmolLM2 (FDA, "
             f"{dtype}), then {plan.flame_steps} steps for each model; retrieval in "
             f"{'/'.join(FLAME_LANGUAGES)} on {plan.flame_eval} images ...")
        config = ComparisonConfig(out=str(flame_dir), n_pairs=plan.flame_captions, n_eval=plan.flame_eval,
                                  steps=plan.flame_steps, batch_size=64 if plan.flame_steps >= 100 else 16,
                                  warmup_steps=max(1, min(50, plan.flame_steps // 5)), threads=None,
                                  languages=FLAME_LANGUAGES)
        results = run_comparison(config, device=device, dtype=getattr(torch, dtype))
    summary = flame_summary(results)
    figures = {"long_captions": plot_long_captions(summary, flame_dir / "long_captions_zero_shot.png")}
    if summary["languages"]:  # a results.json of an older demo has English only
        figures["languages"] = plot_languages(summary, flame_dir / "retrieval_per_language.png")
    return {"table": format_table(results), "headline": headline(results).removeprefix("headline: "),
            "results": str(result_path), "figures": {k: str(v.relative_to(out)) for k, v in figures.items()},
            "llm_dtype": results.get("llm_dtype"), "embedding": results.get("embedding"), **summary}


# ------------------------------------------------------------------------------------------------ report
def _training_curve(metrics: Path | Sequence[Path], png: Path) -> dict[str, Any]:
    """Plots the training losses and the held-out pair loss of one run, or of several stages run one after the
    other (``metrics``: their metrics.jsonl in order; a later stage's steps continue the earlier one's)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train: dict[str, list[tuple[int, float]]] = {}
    held_out: list[tuple[int, float]] = []
    boundaries, offset = [], 0
    for k, path in enumerate([metrics] if isinstance(metrics, Path) else list(metrics)):
        last = 0
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by a kill mid-write (the engine drops it on resume): not plotted
                continue
            if not isinstance(row, dict):
                continue
            step = row.get("step", 0)
            last = max(last, step)
            if "eval/loss" in row and not (k and step == 0):  # a later stage's step 0 is the earlier one's end
                held_out.append((offset + step, row["eval/loss"]))
            for key, value in row.items():
                if key.startswith("loss/") and value is not None:
                    train.setdefault(key.removeprefix("loss/"), []).append((offset + step, value))
        offset += last
        boundaries.append(offset)
    fig = Figure(figsize=(6, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, points in train.items():
        ax.plot(*zip(*points), label=f"train {name}", alpha=0.6)
    if held_out:
        ax.plot(*zip(*held_out), "k-o", label="held-out pairs")
    for step in boundaries[:-1]:
        ax.axvline(step, color="grey", linestyle=":", linewidth=1)
        ax.annotate("stage 2", (step, 0.95), xycoords=("data", "axes fraction"), fontsize=7, ha="left")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("next-token loss (nats)")
    ax.set_title("Flamingo, frozen SmolLM2 + EfficientNet-Lite0", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png)
    return {"held_out_loss": held_out}


def _score(summary: dict, shots: int) -> dict[str, Any] | None:
    """A summary cell of the headline score: {"mean", "n", "ci95", ...} (keys as int or, read back, as str)."""
    entry = summary.get(shots) or summary.get(str(shots)) or {}
    return entry.get("score")


def format_cell(cell: dict[str, Any] | None) -> str:
    """``mean +- ci95 (n=N)``: the 95 % half-width and the queries per draw beside the mean."""
    if cell is None:
        return "-"
    text = f"{cell['mean']:.1f}"
    if cell.get("ci95") is not None:
        text += f" ± {cell['ci95']:.1f}"
    trials = len(cell.get("values") or [1])
    if cell.get("n"):
        text += f" (n={cell['n']}" + (f" x {trials} draws" if trials > 1 else "") + ")"
    return text


def _pct(cell: dict[str, Any]) -> str:
    """``12.0 % [7.0, 19.8] (n=100)``: a proportion with its 95 % Wilson interval and n."""
    return f"{cell['value']:.1f} % [{cell['ci95'][0]:.1f}, {cell['ci95'][1]:.1f}] (n={cell['n']})"


def flame_section(flame: dict[str, Any]) -> list[str]:
    """The report's FLAME section: the figures, what they show (each comparison with both 95 % intervals and
    which is higher only where they do not overlap), then the comparison's table."""
    from frozenvl.cli.compare_plots import verdict

    lines = ["## FLAME vs CLIP baseline", "",
             "The same ViT image tower trained from scratch against FLAME's frozen-SmolLM2 facet embeddings (computed "
             "once, offline) and, as the baseline, CLIP-style against open_clip's BPE tokenizer and a small text "
             "transformer trained from scratch; equal data and steps, English pairs only. Bars: 95 % Wilson "
             "intervals, n queries each; dotted: chance."
             + (f" The frozen LLM ran in {flame['llm_dtype']}." if flame.get("llm_dtype") else ""), ""]
    lines += [f"![FLAME vs CLIP: {name}]({path})" for name, path in (flame.get("figures") or {}).items()] + [""]
    rows = []
    if flame.get("long_captions"):
        f, c = flame["long_captions"]["flame"], flame["long_captions"]["clip_baseline"]
        rows += [(f"long captions (en) R@1 {arrow}", f[key], c[key])
                 for key, arrow in (("image_to_text_R@1", "image->text"), ("text_to_image_R@1", "text->image"))]
        z = flame["zero_shot"]
        rows.append(("zero-shot top-1, held-out compositions", z["flame"]["heldout"], z["clip_baseline"]["heldout"]))
    for language, models in (flame.get("languages") or {}).items():
        if language != "en":
            rows += [(f"{language} captions R@1 {arrow}", models["flame"][key], models["clip_baseline"][key])
                     for key, arrow in (("image_to_text_R@1", "image->text"), ("text_to_image_R@1", "text->image"))]
    if rows:
        chance = flame["chance"]
        lines += ["| comparison | FLAME | CLIP baseline | reading |", "|---|---|---|---|"]
        lines += [f"| {label} | {_pct(f)} | {_pct(c)} | {verdict(f, c)} |" for label, f, c in rows]
        lines += ["", f"Chance: retrieval R@1 {chance['retrieval_R@1']:.1f} % ({chance['retrieval_images']} images), "
                  f"zero-shot top-1 {chance['zero_shot_top1']:.1f} %. \"FLAME higher\" / \"CLIP higher\" only where "
                  "the two 95 % intervals do not overlap; one seed.", ""]
    return lines + ["```", flame["table"], "```", "", flame["headline"], ""]


def write_report(out: Path, plan: DemoPlan, checkpoint: Path, fewshot: dict[str, Any], flame: dict[str, Any],
                 timings: dict[str, float], reliance: dict[str, float] | None = None, threads: str | None = None,
                 device: str = "cpu", eval_dtype: str | None = None) -> Path:
    from frozenvl.train.loop import METRICS_NAME, RUN_CONFIG_NAME

    run_dir = checkpoint.parent.parent
    run_config = run_dir / RUN_CONFIG_NAME
    precision = (yaml.safe_load(run_config.read_text()) or {}).get("train", {}).get("precision") \
        if run_config.is_file() else None
    precision_text = {"bf16": "bf16 autocast", "fp32": "float32"}.get(precision or "", "precision as in its run config")
    stages = [run_dir.parent / "flamingo", run_dir] if run_dir.name == ICL_RUN else [run_dir]
    curve = _training_curve([d / METRICS_NAME for d in stages if (d / METRICS_NAME).is_file()],
                            out / "training_curve.png")
    held = curve["held_out_loss"]
    lines = [
        "# frozenvl demo report",
        "",
        "Everything below was computed on this machine by `frozenvl demo`"
        f"{' --quick' if plan == QUICK else ''}, offline, "
        + ("on the CPU." if device == "cpu" else f"on {device}."),
        "",
        "## Setup",
        "",
        "- Frozen LM: SmolLM2-135M-Instruct (`embedded:smollm2-135m`); frozen vision encoder: EfficientNet-Lite0 "
        "(`embedded:efficientnet-lite0`).",
        f"- Data: the synthetic world ({plan.n_pairs} image-text pairs, {plan.n_interleaved} interleaved pages, "
        f"{plan.n_video} videos), `world/`.",
        f"- Flamingo: Perceiver Resampler (256-d, 2 layers, 16 latents), gated cross-attention before every 4th LM "
        f"layer (placement `{plan.placement}`); {plan.flamingo_steps} steps ({plan.pairs_batch} pairs + "
        f"{plan.pages_batch} interleaved pages each, mostly in-context naming pages, gradients accumulated), "
        f"lr {plan.lr:g}, tanh-gate lr 2e-2, AdamW betas {ADAM_BETAS}, packed batches"
        + (f"; then {plan.icl_steps} steps of {plan.icl_pairs_batch} pairs + {plan.icl_pages_batch} pages "
           f"(lr {plan.icl_lr:g}, tanh-gate lr {plan.icl_gate_lr:g}), `{ICL_RUN}/`" if plan.icl_steps else "")
        + f"; {precision_text}.",
        "",
        "## Training",
        "",
        "![training curve](training_curve.png)",
        "",
    ]
    if held:
        lines += [f"Held-out pair loss: {held[0][1]:.3f} at step {held[0][0]} -> {held[-1][1]:.3f} at step "
                  f"{held[-1][0]}.", ""]
    lines += ["## Few-shot evaluation", "",
              "| task | " + " | ".join(f"{s} shots" for s in plan.shots) + " |",
              "|---|" + "---|" * len(plan.shots)]
    for task, summary in fewshot.items():
        cells = [_score(summary, s) for s in plan.shots]
        lines.append(f"| {task} | " + " | ".join(format_cell(c) for c in cells) + " |")
    lines += ["", "`synth_icl_words`: accuracy (%) of naming a shape or colour with a word whose meaning only the "
              "episode's demonstrations define (chance: 33.3); `synth_captioning`: CIDEr. 0 shots = two text-only "
              "demonstrations. Each cell: mean ± the half-width of a 95 % interval (Wilson for accuracy, bootstrap "
              "for CIDEr; per-query scores of every draw pooled), n = queries per draw."
              + (f" The trained Flamingo was evaluated in {eval_dtype}." if eval_dtype else ""), ""]
    lines += [f"![{task}](fewshot/{task}.png)" for task in fewshot] + [""]
    if reliance is not None:
        verdict = ("the images lower the loss" if reliance["gain"] > 0.01 else
                   "the images make next to no difference: the model has learned the captions' text, not to look, "
                   "and few-shot captions then copy a demonstration")
        lines += ["## Does it look at the images?", "",
                  f"Held-out pair loss over {reliance['samples']} samples: {reliance['right']:.3f} with the right "
                  f"images, {reliance['shuffled']:.3f} with each text given another sample's image, "
                  f"{reliance['zero']:.3f} with blank images (gain {reliance['gain']:.4f}"
                  + (f" ± {reliance['gain_ci95']:.4f}, 95 % bootstrap interval" if reliance.get("gain_ci95")
                     is not None else "") + f" nats/token): {verdict}.", ""]
    lines += flame_section(flame)
    lines += ["## Time", ""]
    if threads:
        lines += [f"Threads: {threads}.", ""]
    lines += ["| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()] + [""]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines))
    write_text_atomic(out / "results.json", json.dumps({
        "plan": asdict(plan), "checkpoint": str(checkpoint), "held_out_loss": held,
        "fewshot": fewshot, "image_reliance": reliance, "flame": flame, "seconds": timings, "threads": threads,
        "device": device, "eval_dtype": eval_dtype,
    }, indent=2, default=str) + "\n")
    return report


def run_demo(out: Path, quick: bool = False, device: Any = None, dtype: Any = None) -> Path:
    """``device``: where every stage's model runs (a ``torch.device``; default: cuda when a GPU is available, else
    the CPU); ``dtype``: the evaluated Flamingo's and FLAME's frozen LLM's (default: the plan's, see ``--help``);
    training runs in bf16 autocast where bf16 products are native, else float32 (:func:`training_precision`)."""
    from frozenvl.cli.devices import engine_device, resolve_device
    from frozenvl.cli.threads import apply_thread_policy

    plan = QUICK if quick else FULL
    device = resolve_device(None) if device is None else device
    engine = engine_device(device)  # before any work: the engine trains on cpu or cuda
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    threads = apply_thread_policy().describe()  # the cores actually free (frozenvl.cli.threads)
    _say(f"threads: {threads}")

    def timed(name, fn, *args):
        t0 = time.perf_counter()
        result = fn(*args)
        timings[name] = time.perf_counter() - t0
        return result

    world = timed("world", stage_world, out, plan)
    checkpoint = timed("flamingo training", stage_flamingo, out, world, plan, engine)
    eval_dtype = str(dtype).removeprefix("torch.") if dtype is not None else flamingo_eval_dtype(device)

    @functools.cache
    def trained() -> tuple[Any, Any]:  # the trained Flamingo, loaded once and only if a stage needs it
        import torch

        from frozenvl.flamingo import load_pretrained

        model, processor = load_pretrained(checkpoint, device=device, dtype=getattr(torch, eval_dtype))
        return model.eval(), processor

    fewshot = timed("few-shot evaluation", stage_fewshot, out, world, trained, plan)
    reliance = timed("image reliance", stage_image_reliance, out, world, trained, plan.reliance_pairs)
    trained.cache_clear()  # free it before FLAME
    flame = timed("FLAME", stage_flame, out, plan, device, dtype)
    report = write_report(out, plan, checkpoint, fewshot, flame, timings, reliance, threads, str(device), eval_dtype)
    _say(f"[5/5] report: {report}  (total {sum(timings.values()) / 60:.1f} min)")
    return report


def describe_demo(plan: DemoPlan = FULL) -> str:
    """``demo --help``: what the demo does, from the plan it runs (so the text follows the plan)."""
    shots = "/".join(str(s) for s in plan.shots)
    return (
        "The main job, offline on the CPU (or on a GPU when there is one: --device), in five stages (each reused "
        "when its output exists):\n"
        f"  1. world/      the synthetic world: {plan.n_pairs} image-text pairs, {plan.n_interleaved} interleaved "
        f"pages, {plan.n_video} videos\n"
        "  2. flamingo/   a Flamingo on frozen SmolLM2-135M + frozen EfficientNet-Lite0 (Perceiver Resampler, gated\n"
        f"                 cross-attention every 4th layer, placement {plan.placement}), {plan.flamingo_steps} "
        f"steps of {plan.pairs_batch} pairs +\n"
        f"                 {plan.pages_batch} interleaved pages (mostly in-context naming pages), bf16 autocast "
        "where the CPU\n                 (AVX512-BF16/AMX) or GPU has bf16 products, else float32; the frozen\n"
        "                 encoder's features cached in features/ (model.feature_cache)\n"
        + (f"     {ICL_RUN}/ then {plan.icl_steps} steps of {plan.icl_pairs_batch} pairs + {plan.icl_pages_batch} "
           "pages, mostly in-context naming\n                 pages, continuing it (learns to name a picture from "
           "its prompt's examples)\n" if plan.icl_steps else "")
        +
        f"  3. fewshot/   synth_icl_words ({plan.icl_queries} queries x {plan.icl_trials} demonstration draws) and "
        f"synth_captioning ({plan.caption_queries}) at {shots} shots;\n"
        f"                 image reliance on {plan.reliance_pairs} held-out pairs (right vs another's vs blank "
        "images);\n                 the model in bfloat16 where bf16 products are native, else float32\n"
        f"  4. flame/     FLAME vs its CLIP baseline, {plan.flame_captions} captions, {plan.flame_steps} steps each;\n"
        f"                 retrieval in {'/'.join(FLAME_LANGUAGES)} on {plan.flame_eval} images (trained on English)\n"
        "  5. report.md  plots and tables (each figure with n and a 95 % interval) and results.json\n"
        "Torch threads: the cores actually free (frozenvl.cli.threads; FROZENVL_THREADS to set them), printed in "
        "the report.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the main job on the embedded default (no internet; the CPU, or a GPU "
                                       "when there is one)",
                          description=describe_demo(), formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo); a re-run reuses the "
                                                         "stages already there")
    demo.add_argument("--quick", action="store_true",
                      help=f"a smoke test of every stage ({QUICK.flamingo_steps} training steps, "
                           f"{QUICK.icl_queries} + {QUICK.caption_queries} few-shot queries): minutes, not results")
    add_device_arguments(demo, "every stage's model", devices="cpu or cuda (GPU 0; CUDA_VISIBLE_DEVICES picks "
                                                            "another)",
                         dtype_of="the evaluated Flamingo and FLAME's frozen LLM (training: bf16 autocast where "
                                  "bf16 products are native, else float32)",
                         unset_dtype="the plan's: the Flamingo evaluated and FLAME's LLM in bfloat16 where bf16 "
                                     "products are native (a CPU with AVX512-BF16 or AMX, a GPU), else float32")
    demo.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from frozenvl.cli.devices import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = None if args.dtype is None else resolve_dtype(args.dtype, device)
    run_demo(Path(args.out), quick=args.quick, device=device, dtype=dtype)
    return 0
