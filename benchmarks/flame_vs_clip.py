"""FLAME (frozen LLM text side) vs the CLIP baseline (trainable text tower), equal data and steps, on the
synthetic world: zero-shot accuracy on held-out compositions and long-caption retrieval; optionally retrieval per
caption language (both trained on English pairs only) and FLAME per prompt set (chosen on a validation split).

    python benchmarks/flame_vs_clip.py out=runs/flame_vs_clip                 # the default scale (CPU, ~20 min)
    python benchmarks/flame_vs_clip.py n_pairs=500 n_eval=100 steps=100        # quicker
    python benchmarks/flame_vs_clip.py languages=[en,fr,es,de]                 # retrieval per caption language
    python benchmarks/flame_vs_clip.py prompt_sets=[raw,short,long]            # number of prompts (1 / 3 / 7)

The same as ``frozenvl compare`` (its ``--help`` lists the keys): writes OUT/results.json and prints a table ending
with a ``headline:`` line. Rerunning reuses the world and the embedding store (the store resumes if it was
interrupted). See docs/flame.md, "FLAME vs CLIP".
"""

from __future__ import annotations

import sys

from frozenvl.cli.compare import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
