"""Training-step benchmarks.

Default: samples/s of the demo's Flamingo training (``frozenvl demo``'s run config: frozen SmolLM2-135M +
EfficientNet-Lite0, 16 pairs + 2 pages per step, the shared trainer) with the frozen-encoder feature cache off / on,
fp32 / bf16 autocast, padded / packed batches (``model.packing``), and their combination. The variants run
interleaved, round by round (each round starting with the next variant), in one process on one model, so that a
change of machine load hits them alike; each new trainer starts the same data from the start (its first step, loader
start-up, is not timed). "cache warm" is the steady state of later epochs and runs (every frame read from the
cache); "cache cold" is a first epoch (every frame encoded and written). Threads: the command line's policy
(``frozenvl.cli.threads``), printed; ``--default-threads`` adds fp32 without cache at torch's default (one thread
per core, what ran before the policy).

    python benchmarks/train_step.py [--world DIR] [--rounds 2] [--steps 3]   # ends with a "headline:" line

``--lora-table``: frozen LM vs LoRA on the LM vs every parameter trainable; 1 process vs 2 processes (gloo, CPU).
Model (``--model``): ``embedded`` (default): the embedded default, SmolLM2-135M + EfficientNet-Lite0 with the
demo's small resampler; ``tiny``: a small random Llama-family Flamingo (hidden 256, 8 layers, tiny CNN vision).
Variants: ``frozen_lm`` (the Flamingo parts train), ``lora`` (and LoRA adapters of rank 8 on the LM's q_proj and
v_proj, ``FlamingoConfig.lora_rank``), ``all_trainable`` (every parameter, the vision encoder included).
Each variant runs in its own subprocess so that peak RSS (ru_maxrss) is its own. The 1- vs 2-process throughput
uses the trainer on a tiny synthetic world with a tiny model in both cases.

    python benchmarks/train_step.py --lora-table [--model embedded|tiny]   # ends with its own "headline:" line
    python benchmarks/train_step.py --variant lora embedded    # one variant's figures, as JSON
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
STEPS, WARMUP, BATCH = 8, 2, 4
VARIANTS = ("frozen_lm", "lora", "all_trainable")
LORA_RANK = 8


def step_variant(variant: str, model_kind: str = "embedded") -> dict:
    """Run in a subprocess: time STEPS optimizer steps of one variant; report time, RSS, trainable state bytes."""
    import torch

    from frozenvl.flamingo import build
    from frozenvl.testing import images, tiny_lm, tiny_tokenizer, tiny_vision
    from frozenvl.train.config import OptimConfig
    from frozenvl.train.optim import build_optimizer

    torch.set_num_threads(2)
    torch.manual_seed(0)
    lora = {"lora_rank": LORA_RANK} if variant == "lora" else {}
    if model_kind == "embedded":
        model, proc = build(lm="embedded:smollm2-135m", vision="embedded:efficientnet-lite0", cross_attn_every=4,
                            resampler_depth=2, num_latents=16, resampler_dim=256, **lora)
        pictures = lambda i: [torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(i))] * 2  # noqa: E731
    else:
        lm = tiny_lm("llama", hidden=256, layers=8, heads=8)
        model, proc = build(lm=lm, tokenizer=tiny_tokenizer(), vision=tiny_vision(), cross_attn_every=4,
                            resampler_depth=2, num_latents=16, resampler_dim=128, **lora)
        pictures = lambda i: images(2, seed=i)  # noqa: E731
    if variant == "all_trainable":
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    opt = build_optimizer(model.named_parameters(), OptimConfig(lr=1e-4))
    texts = ["<image>a large red circle at the top left of the picture<|endofchunk|>" * 2] * BATCH
    batch = proc(texts, [pictures(i) for i in range(BATCH)])
    times = []
    for i in range(STEPS):
        t0 = time.perf_counter()
        out = model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], labels=batch["input_ids"])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                      if isinstance(t, torch.Tensor))
    return {"variant": variant, "step_s": sum(times) / len(times), "trainable": n_trainable,
            "total": sum(p.numel() for p in model.parameters()), "optimizer_state_mb": state_bytes / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def throughput(nproc: int, root: Path, world: Path) -> float:
    """Samples/s of the trainer on the tiny synthetic world: `nproc` processes, the same global batch."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "train"))
    from trainfixtures import tiny_tree, write_config

    from frozenvl.train.loop import METRICS_NAME

    run = root / f"run{nproc}"
    tree = tiny_tree(world, run, steps=12, grad_accum=2 // nproc, checkpoint_every=0, log_every=4)
    cfg = write_config(root / f"c{nproc}.yaml", tree)
    cmd = [sys.executable, "-m", "frozenvl.cli.train", "--config", str(cfg)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               "29533", "-m", "frozenvl.cli.train", "--config", str(cfg)]
    subprocess.run(cmd, env=ENV, check=True, capture_output=True)
    records = [json.loads(x) for x in (run / METRICS_NAME).read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records if "samples_per_s" in r][1:]  # first window: warm-up
    return sum(rates) / len(rates)


DEFAULT_THREADS = "fp32, torch's threads"
DEMO_VARIANTS = {  # name: (feature cache: None | "warm" | "cold", precision, packed batches)
    "fp32": (None, "fp32", False),
    "bf16": (None, "bf16", False),
    "cache warm, fp32": ("warm", "fp32", False),
    "packed, fp32": (None, "fp32", True),
    "cache warm, bf16": ("warm", "bf16", False),
    "cache warm, bf16, packed": ("warm", "bf16", True),
    "cache cold, fp32": ("cold", "fp32", False),
}
ALL = "cache warm, bf16, packed"


def demo_speed(world: Path, root: Path, rounds: int, steps: int, default_threads: bool = False) -> dict[str, float]:
    """Samples/s of each DEMO_VARIANTS entry on the demo's run config (``world``: a synthetic world); with
    ``default_threads`` also fp32 without cache at torch's default thread count (one per core, what ran before the
    thread policy), the other variants keeping the policy's threads."""
    import copy

    import torch
    import yaml

    from frozenvl.cli.demo import FULL, flamingo_run_config
    from frozenvl.cli.threads import usable_cores
    from frozenvl.config import from_dict
    from frozenvl.flamingo.feature_cache import FeatureCache
    from frozenvl.tasks import ModelConfig, build_task
    from frozenvl.train.config import load_config
    from frozenvl.train.loop import Trainer

    base = flamingo_run_config(world, root / "unused", FULL)
    base["data"]["eval_datasets"] = []
    base["train"].update(progress=False, eval_every=0, checkpoint_every=0, log_every=10**6, steps=10**6)
    base["model"]["feature_cache"] = False  # the benchmark sets the cache per variant
    torch.manual_seed(0)
    task = build_task(from_dict(ModelConfig, base["model"], "model"))
    task.set_train_mode()
    warm = FeatureCache(root / "features-warm", task.model.vision)
    samples = {name: 0.0 for name in DEMO_VARIANTS}
    seconds = {name: 0.0 for name in DEMO_VARIANTS}
    runs = 0

    def trainer_for(precision: str) -> Trainer:
        nonlocal runs
        runs += 1
        tree = copy.deepcopy(base)
        tree["train"].update(precision=precision, run_dir=str(root / f"run-{runs}"))
        path = root / f"run-{runs}.yaml"
        path.write_text(yaml.safe_dump(tree))
        return Trainer(load_config(path), task=task)

    # Fill the warm cache with the steps every variant will take (each trainer starts the data from the start).
    task.feature_cache = warm
    trainer = trainer_for("fp32")
    for _ in range(steps + 1):
        trainer.train_step()
    trainer.close()
    variants = dict(DEMO_VARIANTS)
    if default_threads:
        variants[DEFAULT_THREADS] = (None, "fp32", False)
    samples.update({name: 0.0 for name in variants})
    seconds.update({name: 0.0 for name in variants})
    policy, cores = torch.get_num_threads(), usable_cores()
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # each round starts with another variant
            cache, precision, packed = variants[name]
            task.collate.pack = packed
            torch.set_num_threads(cores if name == DEFAULT_THREADS else policy)
            task.feature_cache = {None: None, "warm": warm}.get(cache) if cache != "cold" else FeatureCache(
                root / f"features-cold-{r}", task.model.vision)
            trainer = trainer_for(precision)
            trainer.train_step()  # loader start-up, cold shuffle buffer: not timed
            if cache == "cold":  # the untimed step filled part of the cold cache: start it empty again
                task.feature_cache = FeatureCache(root / f"features-cold-{r}-b", task.model.vision)
            t0 = time.perf_counter()
            for _ in range(steps):
                samples[name] += trainer.train_step()["samples"]
            seconds[name] += time.perf_counter() - t0
            trainer.close()
            print(f"  round {r + 1}/{rounds} {name:24s} {samples[name] / seconds[name]:6.2f} samples/s so far",
                  flush=True)
    print(f"  warm cache: {warm.stats.hits} frames read, {warm.stats.misses} encoded (all in the filling pass: "
          f"{(steps + 1)} steps)")
    torch.set_num_threads(policy)
    return {name: samples[name] / seconds[name] for name in variants}


def main_demo(world: str | None, rounds: int, steps: int, default_threads: bool = False) -> None:
    from frozenvl.cli.threads import apply_thread_policy

    choice = apply_thread_policy()
    print(f"threads: {choice.describe()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if world is None:
            from frozenvl.data import WorldConfig, generate_world

            world_path = root / "world"
            generate_world(world_path, WorldConfig(seed=0, n_pairs=400, n_interleaved=60, n_video=30, n_eval=40,
                                                   n_episodes=6, shard_size=50), progress=False, log=None)
        else:
            world_path = Path(world)
        print(f"demo configuration, {rounds} round(s) x {steps} timed steps per variant, interleaved")
        rates = demo_speed(world_path, root, rounds, steps, default_threads)
    base = rates["fp32"]
    for name, rate in rates.items():
        print(f"{name:24s} {rate:6.2f} samples/s  {rate / base:5.2f}x")
    if DEFAULT_THREADS in rates:
        print(f"thread policy ({choice.threads}) vs torch's default ({choice.cores}), fp32 without cache: "
              f"{base / rates[DEFAULT_THREADS]:.2f}x; everything vs the old default step: "
              f"{rates[ALL] / rates[DEFAULT_THREADS]:.2f}x")
    print(f"headline: samples/s, feature cache (warm) + bf16 + packed batches vs none of them = "
          f"{rates[ALL] / base:.2f}x")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--variant":
        print(json.dumps(step_variant(sys.argv[2], sys.argv[3])))
        return
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("embedded", "tiny"), default="embedded")
    parser.add_argument("--lora-table", action="store_true", help="frozen LM vs LoRA vs all trainable, 1 vs 2 procs")
    parser.add_argument("--world", help="a synthetic world folder (default: a small one in a temporary folder)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--default-threads", action="store_true",
                        help="also time fp32 without cache at torch's default threads (one per core)")
    args = parser.parse_args()
    if not args.lora_table:
        main_demo(args.world, args.rounds, args.steps, args.default_threads)
        return
    print(f"model: {args.model}; {STEPS - WARMUP} timed steps of batch {BATCH} after {WARMUP} warm-up steps")
    results = {}
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--variant", variant, args.model], env=ENV, check=True,
                             capture_output=True, text=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[variant]
        print(f"{variant:14s} step {r['step_s'] * 1000:7.1f} ms  trainable {r['trainable'] / 1e6:6.2f}M of "
              f"{r['total'] / 1e6:.2f}M  optimizer state {r['optimizer_state_mb']:6.1f} MiB  "
              f"peak RSS {r['peak_rss_mb']:7.1f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "train"))
        from trainfixtures import make_world

        world = make_world(Path(tmp) / "world")
        one = throughput(1, Path(tmp), world)
        two = throughput(2, Path(tmp), world)
    print(f"trainer on the tiny world (global batch 2 slots): 1 process {one:.2f} samples/s, "
          f"2 processes (gloo) {two:.2f} samples/s, ratio {two / one:.2f}x")
    f, a, lo = results["frozen_lm"], results["all_trainable"], results["lora"]
    print(f"LoRA rank {LORA_RANK} / frozen-LM: trainable {lo['trainable'] / f['trainable']:.2f}x, step time "
          f"{lo['step_s'] / f['step_s']:.2f}x, optimizer state "
          f"{lo['optimizer_state_mb'] / max(f['optimizer_state_mb'], 1e-9):.2f}x")
    print(f"all-trainable / frozen-LM: step time {a['step_s'] / f['step_s']:.2f}x, optimizer state "
          f"{a['optimizer_state_mb'] / max(f['optimizer_state_mb'], 1e-9):.1f}x, peak RSS "
          f"{a['peak_rss_mb'] / f['peak_rss_mb']:.2f}x")
    print(f"headline: optimizer state, every parameter trainable vs frozen LM = "
          f"{a['optimizer_state_mb'] / max(f['optimizer_state_mb'], 1e-9):.1f}x")


if __name__ == "__main__":
    main()
