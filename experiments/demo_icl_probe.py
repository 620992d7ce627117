"""Probe the demo's Flamingo schedule on a validation world: does it learn in-context naming?

Builds a world as the demo does but with another seed (settings are chosen here, never on the demo's seed-0
world), trains the demo's run config with overrides (``key=value`` on the run config, dotted, YAML values; plus
``--pages-weight`` for the interleaved dataset's loss weight), then reports what the demo reports for the
trained model: ``synth_icl_words`` at the given shots (one demonstration draw, 95 % Wilson intervals) and image
reliance over 200 held-out pairs.

    python experiments/demo_icl_probe.py --out /tmp/probe_a --seed 1 data.datasets.1.batch_size=6
    python experiments/demo_icl_probe.py --out /tmp/probe_b --pages-weight 4

Ends with ``headline: synth_icl_words 8-shot minus 0-shot = <points> pts``. Findings are in docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import yaml

from frozenvl.cli import demo
from frozenvl.files import write_text_atomic


def _set(config: dict[str, Any], dotted: str, value: Any) -> None:
    node: Any = config
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1, help="world seed (the demo's is 0: never probe on it)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's)")
    parser.add_argument("--pages-weight", type=float, default=None, help="loss weight of the interleaved pages")
    parser.add_argument("--queries", type=int, default=240, help="synth_icl_words queries")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 8])
    parser.add_argument("--plan", nargs="*", default=[], help="DemoPlan fields, name=value (e.g. pages_batch=6)")
    parser.add_argument("overrides", nargs="*", help="run config key=value (dotted, YAML values)")
    args = parser.parse_args()

    from frozenvl.cli.threads import apply_thread_policy
    from frozenvl.data import WorldConfig, generate_world

    apply_thread_policy()
    plan = demo.FULL
    for item in args.plan:
        name, value = item.split("=", 1)
        plan = dataclasses.replace(plan, **{name: yaml.safe_load(value)})
    if args.steps is not None:
        plan = dataclasses.replace(plan, flamingo_steps=args.steps)
    out = args.out
    world = out / "world"
    if not (world / "world.json").exists():
        generate_world(world, WorldConfig(seed=args.seed, n_pairs=plan.n_pairs, n_interleaved=plan.n_interleaved,
                                          n_video=plan.n_video, n_eval=plan.n_eval, n_episodes=plan.n_episodes,
                                          page_themes={"words": plan.words_pages},
                                          shard_size=max(50, plan.n_pairs // 10)))
    run_dir = out / "flamingo"
    config = demo.flamingo_run_config(world, run_dir, plan)
    if args.pages_weight is not None:
        config["data"]["datasets"][1]["weight"] = args.pages_weight
    for item in args.overrides:
        key, value = item.split("=", 1)
        _set(config, key, yaml.safe_load(value))
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "probe_config.yaml"
    write_text_atomic(config_path, yaml.safe_dump(config, sort_keys=False))

    from frozenvl.train.config import load_config
    from frozenvl.train.loop import train

    started = time.perf_counter()
    result = train(load_config(config_path), resume=False)
    train_s = time.perf_counter() - started
    checkpoint = Path(result.checkpoint)

    from frozenvl.cli.compare_plots import wilson_interval
    from frozenvl.flamingo import load_pretrained

    model, processor = load_pretrained(checkpoint)
    model.eval()
    loaded = (model, processor)

    probe_plan = dataclasses.replace(plan, icl_queries=args.queries, caption_queries=0, shots=tuple(args.shots),
                                     icl_trials=1)
    started = time.perf_counter()
    from frozenvl.eval.harness import EvalConfig, evaluate
    from frozenvl.eval.synthetic import synthetic_task_data
    from frozenvl.eval.tasks import get_task

    output = evaluate(model, processor, get_task("synth_icl_words"), synthetic_task_data("synth_icl_words", world),
                      EvalConfig(shots=probe_plan.shots, trials=1, seed=0, limit=args.queries),
                      out_dir=out / "fewshot", progress=False)
    eval_s = time.perf_counter() - started
    reliance = demo.stage_image_reliance(out, world, lambda: loaded, n=plan.reliance_pairs)
    icl = {}
    for shots in probe_plan.shots:
        cell = output.summary[shots]["score"]
        n = cell["n"]
        low, high = wilson_interval(cell["mean"], n)
        icl[shots] = {"mean": cell["mean"], "n": n, "ci95": [low, high]}
        print(f"synth_icl_words {shots} shots: {cell['mean']:.1f} % [{low:.1f}, {high:.1f}] (n={n})")
    gain = reliance["shuffled"] - reliance["right"]
    print(f"image reliance: right {reliance['right']:.3f} shuffled {reliance['shuffled']:.3f} "
          f"zero {reliance['zero']:.3f}; gain {gain:.3f} (n={reliance['samples']})")
    print(f"training {train_s:.0f} s ({train_s / plan.flamingo_steps:.2f} s/step), evaluation {eval_s:.0f} s")
    summary = {"plan": dataclasses.asdict(plan), "overrides": args.overrides, "pages_weight": args.pages_weight,
               "icl": icl, "reliance": reliance, "train_s": train_s, "eval_s": eval_s}
    write_text_atomic(out / "probe.json", json.dumps(summary, indent=2) + "\n")
    first, last = min(probe_plan.shots), max(probe_plan.shots)
    print(f"headline: synth_icl_words {last}-shot minus {first}-shot = "
          f"{icl[last]['mean'] - icl[first]['mean']:.1f} pts")


if __name__ == "__main__":
    main()
