"""Which languages does the frozen LLM understand? Facet embeddings of a synthetic-world caption and of its
templated translation (French, Spanish, German: ``frozenvl.data.languages``) against those of random pairs.

For ``n`` scenes of the world's ``retrieval`` split, the long caption in English and in each other language, and
(a same-language control) the first short caption in English, go through the frozen LLM (FDA, a prompt set) and
are reduced as at inference (mean of the normalised facets, normalised). Per language it reports:

- ``matched``: mean cosine of a scene's English caption with its translation; ``random``: with the translation
  of another scene (all n(n-1) off-diagonal pairs); ``gap`` = matched - random, with the 95 % percentile-bootstrap
  half-width over scenes (2000 resamples);
- the same after centring (the mean embedding of all captions subtracted, then normalised): SmolLM2's raw
  embeddings are so anisotropic (any two captions have cosine ~0.95) that the raw gap is small by construction;
- ``R@1``: how often the translation is the nearest of the n translations to the English caption (chance 1/n),
  with its Wilson 95 % half-width, raw and centred.

    python experiments/flame_languages.py --n 60 --out runs/flame_languages.json

Ends with ``headline:`` naming each language's centred R@1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from frozenvl.data.formats import decode_sample
from frozenvl.data.synth import World, WorldConfig
from frozenvl.eval.results import wilson_half_width
from frozenvl.flame.text_encoder import FacetTextEncoder


def scene_captions(n: int, seed: int, languages: tuple[str, ...]) -> dict[str, list[str]]:
    """{"en": long captions, "en_short": first short captions, language: long captions} of n retrieval scenes."""
    world = World(WorldConfig(seed=seed, languages=languages))
    out: dict[str, list[str]] = {"en": [], "en_short": [], **{c: [] for c in languages}}
    for i in range(n):
        record = decode_sample(world.sample("retrieval", i))
        out["en"].append(record["long_captions"][0])
        out["en_short"].append(record["captions"][0])
        for code in languages:
            out[code].append(record["translations"][code]["long_captions"][0])
    return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def pair_statistics(a: torch.Tensor, b: torch.Tensor, seed: int = 0) -> dict:
    """a, b: (n, D) unit rows, row i of each the same scene."""
    n = a.shape[0]
    sim = (a @ b.T).double()  # (n, n)
    matched = sim.diag()
    off = ~torch.eye(n, dtype=torch.bool)
    random_rows = (sim * off).sum(1) / (n - 1)  # (n,): mean cosine of scene i's English with other translations
    gap = (matched - random_rows).numpy()
    rng = np.random.default_rng(seed)
    means = [gap[rng.integers(0, n, n)].mean() for _ in range(2000)]
    lo, hi = np.percentile(means, [2.5, 97.5])
    hits = int((sim.argmax(dim=1) == torch.arange(n)).sum())
    return {"matched": round(matched.mean().item(), 4), "random": round(sim[off].mean().item(), 4),
            "gap": round(float(gap.mean()), 4), "gap_ci95": round(float(hi - lo) / 2, 4),
            "R@1": round(100 * hits / n, 1), "R@1_ci95": round(100 * wilson_half_width(hits, n), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=60, help="scenes (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lm", default="embedded:smollm2-135m")
    p.add_argument("--prompts", default="short", help="prompt set (default short, K=3)")
    p.add_argument("--languages", nargs="+", default=["fr", "es", "de"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    captions = scene_captions(args.n, args.seed, tuple(args.languages))
    encoder = FacetTextEncoder.from_source(args.lm, args.prompts)
    t0 = time.perf_counter()
    emb = {}
    with torch.inference_mode():
        for name, texts in captions.items():
            facets = torch.cat([encoder.encode(texts[i:i + args.batch_size])
                                for i in range(0, len(texts), args.batch_size)])  # (n, K, D)
            emb[name] = _unit(_unit(facets).mean(dim=1))  # (n, D): the inference rule, mean of unit facets
    seconds = time.perf_counter() - t0
    centre = torch.cat(list(emb.values())).mean(dim=0)  # (D,)
    centred = {k: _unit(v - centre) for k, v in emb.items()}
    results = {"n": args.n, "lm": args.lm, "prompts": args.prompts, "seed": args.seed,
               "captions_encoded": sum(len(t) for t in captions.values()), "seconds": round(seconds, 1),
               "chance_R@1": round(100 / args.n, 1), "pairs": {}}
    for other in ["en_short", *args.languages]:
        results["pairs"][f"en-{other}"] = {"raw": pair_statistics(emb["en"], emb[other]),
                                           "centred": pair_statistics(centred["en"], centred[other])}
    print(f"{'pair':<12} {'cos matched':>11} {'cos random':>10} {'gap (95%)':>16} {'R@1 % (95%)':>14} "
          f"{'centred gap (95%)':>18} {'centred R@1 %':>14}")
    for pair, r in results["pairs"].items():
        raw, cen = r["raw"], r["centred"]
        print(f"{pair:<12} {raw['matched']:>11.4f} {raw['random']:>10.4f} {raw['gap']:>9.4f} +-{raw['gap_ci95']:.4f}"
              f" {raw['R@1']:>7.1f} +-{raw['R@1_ci95']:<4.1f} {cen['gap']:>10.4f} +-{cen['gap_ci95']:.4f}"
              f" {cen['R@1']:>7.1f} +-{cen['R@1_ci95']:.1f}")
    print(f"n = {args.n} scenes, chance R@1 {results['chance_R@1']}%, {results['captions_encoded']} captions in "
          f"{results['seconds']} s")
    print("headline: centred translation R@1 " + ", ".join(
        f"{lang} {results['pairs'][f'en-{lang}']['centred']['R@1']:.1f}%" for lang in args.languages)
        + f" (chance {results['chance_R@1']}%, n={args.n})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
