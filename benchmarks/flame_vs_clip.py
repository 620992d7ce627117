"""FLAME (frozen LLM text side) vs the CLIP baseline (trainable text tower), equal data and steps, on the
synthetic world: zero-shot accuracy on held-out compositions and long-caption retrieval.

    python benchmarks/flame_vs_clip.py --out runs/flame_vs_clip                 # the default scale (CPU, ~20 min)
    python benchmarks/flame_vs_clip.py --pairs 500 --eval 100 --steps 100        # quicker

Writes OUT/results.json and prints a table ending with a ``headline:`` line. Rerunning reuses the world and the
embedding store (the store resumes if it was interrupted). See docs/flame.md, "FLAME vs CLIP".
"""

from __future__ import annotations

import argparse
import json
import logging

from frozenvl.cli.compare import ComparisonConfig, format_table, run_comparison


def main(argv: list[str] | None = None) -> int:
    d = ComparisonConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=d.out, help=f"output folder (default {d.out})")
    p.add_argument("--world", default=None, help="an existing synthetic world (default: generate OUT/world)")
    p.add_argument("--lm", default=d.lm, help=f"frozen LLM for FLAME (default {d.lm})")
    p.add_argument("--prompts", default=d.prompts, help=f"prompt set of the store: short or long (default {d.prompts})")
    p.add_argument("--pairs", type=int, default=d.n_pairs, help=f"training pairs (default {d.n_pairs})")
    p.add_argument("--eval", type=int, default=d.n_eval, help=f"records per eval split (default {d.n_eval})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps per model (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"(default {d.lr})")
    p.add_argument("--loss", choices=("sigmoid", "infonce"), default=d.loss, help=f"both models (default {d.loss})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=d.threads, help=f"torch CPU threads (default {d.threads})")
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config = ComparisonConfig(out=args.out, world=args.world, lm=args.lm, prompts=args.prompts, n_pairs=args.pairs,
                              n_eval=args.eval, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              loss=args.loss, seed=args.seed, threads=args.threads, progress=args.progress)
    results = run_comparison(config)
    print(json.dumps({k: results[k] for k in ("embedding", "seconds")}))
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
