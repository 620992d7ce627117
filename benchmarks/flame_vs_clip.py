"""FLAME (frozen LLM text side) vs the CLIP baseline (trainable text tower), equal data and steps, on the
synthetic world: zero-shot accuracy on held-out compositions and long-caption retrieval.

    python benchmarks/flame_vs_clip.py out=runs/flame_vs_clip                 # the default scale (CPU, ~20 min)
    python benchmarks/flame_vs_clip.py n_pairs=500 n_eval=100 steps=100        # quicker

The same as ``frozenvl compare`` (its ``--help`` lists the keys): writes OUT/results.json and prints a table ending
with a ``headline:`` line. Rerunning reuses the world and the embedding store (the store resumes if it was
interrupted). See docs/flame.md, "FLAME vs CLIP".
"""

from __future__ import annotations

import sys

from frozenvl.cli.compare import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
