"""Training-step benchmark: frozen LM vs LoRA on the LM vs every parameter trainable; 1 process vs 2 processes
(gloo, CPU).

Model (``--model``): ``embedded`` (default): the embedded default, SmolLM2-135M + EfficientNet-Lite0 with the
demo's small resampler; ``tiny``: a small random Llama-family Flamingo (hidden 256, 8 layers, tiny CNN vision).
Variants: ``frozen_lm`` (the Flamingo parts train), ``lora`` (and LoRA adapters of rank 8 on the LM's q_proj and
v_proj, ``FlamingoConfig.lora_rank``), ``all_trainable`` (every parameter, the vision encoder included).
Each variant runs in its own subprocess so that peak RSS (ru_maxrss) is its own. The 1- vs 2-process throughput
uses the trainer on a tiny synthetic world with a tiny model in both cases.

    python benchmarks/train_step.py [--model embedded|tiny]   # prints the figures and a final "headline:" line
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


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--variant":
        print(json.dumps(step_variant(sys.argv[2], sys.argv[3])))
        return
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("embedded", "tiny"), default="embedded")
    args = parser.parse_args()
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
