"""What does the frozen LM itself learn in context on ``synth_icl_words`` when every picture is written as words?

The words of an episode are defined only by its demonstrations, so a Flamingo names a query picture through the
frozen LM's own in-context machinery (attending back to the name that followed a matching demonstration), with
the gated cross-attention supplying what each picture shows. This script gives that machinery the pictures as
text instead, with the harness's own queries, demonstrations (same seeds), template and scoring
(length-normalised log-likelihood of ``word<|endofchunk|>``), and no training at all:

- ``--describe object``: the whole picture, e.g. ``red circle Output:zorb`` (the LM must find which of the two
  attributes the episode names, as a Flamingo must);
- ``--describe attribute``: only the attribute the episode names, e.g. ``circle Output:zorb`` (easier).

It is a reference point, not a bound: a trained Flamingo's adapters also steer the LM (the one in
docs/evaluation.md does better than ``object``). The Flamingo's ``<|endofchunk|>`` is a learned token the bare
LM does not have; it is written as a newline here.

    python experiments/icl_as_text.py --world data/world_icl --shots 0 4 8 --limit 240

Ends with ``headline: frozen LM, pictures as text (<describe>): accuracy 0 -> 8 shots = <a> -> <b> %``.
Measurements (2-core CPU) are in docs/evaluation.md ("In-context naming").
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch

from frozenvl.backbones.language import load_causal_lm
from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN
from frozenvl.eval.harness import TaskData, select_demos
from frozenvl.eval.prompts import build_prompt, candidate_continuation, demos_for_shots
from frozenvl.eval.records import EvalRecord
from frozenvl.eval.synthetic import synthetic_task_data
from frozenvl.eval.tasks import get_task

SEPARATOR = "\n"  # stands in for <|endofchunk|>, which the bare LM does not know


def describe(record: EvalRecord, how: str) -> str:
    """What the picture shows, as words: ``red circle`` (object) or the named attribute's value (attribute)."""
    if how == "object":
        return f"{record.meta['colour']} {record.meta['shape']}"
    return str(record.meta["concept"])


def as_text(text: str, pictures: Sequence[EvalRecord], how: str) -> str:
    """Each ``<image>`` marker, in order, becomes its picture's description; ``<|endofchunk|>`` a newline."""
    parts = text.split(IMAGE_TOKEN)
    if len(parts) != len(pictures) + 1:
        raise ValueError(f"{len(parts) - 1} image markers for {len(pictures)} pictures in {text!r}")
    out = parts[0]
    for record, rest in zip(pictures, parts[1:]):
        out += f"{describe(record, how)} {rest}"
    return out.replace(END_OF_CHUNK, SEPARATOR)


@torch.no_grad()
def score(lm: Any, tokenizer: Any, context: str, candidates: Sequence[str]) -> list[float]:
    """Mean log-probability per token of each candidate after the context (the harness's length-normalised
    close-ended score)."""
    prefix = tokenizer(context, add_special_tokens=False)["input_ids"]
    scores = []
    for candidate in candidates:
        cont = tokenizer(candidate, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prefix + cont])
        logp = lm(ids).logits[0, len(prefix) - 1:-1].log_softmax(-1)  # (len(cont), V)
        scores.append(float(logp.gather(1, torch.tensor(cont)[:, None]).mean()))
    return scores


def accuracy(lm: Any, tokenizer: Any, data: TaskData, shots: int, how: str, limit: int | None,
             seed: int = 0) -> float:
    """Accuracy (%) of the text-only version of one (shots, trial 0) run of ``synth_icl_words``."""
    spec = get_task("synth_icl_words")
    queries = data.queries[:limit]
    num, text_only = demos_for_shots(shots)
    right = 0
    for query, demos in zip(queries, select_demos(data, queries, num, trial=0, seed=seed)):
        prompt = build_prompt(spec, demos, query, text_only_demos=text_only)
        pictures = [*([] if text_only else demos), query]
        candidates = spec.candidates_for(query, None)
        conts = [candidate_continuation(c).replace(END_OF_CHUNK, SEPARATOR) for c in candidates]
        scores = score(lm, tokenizer, as_text(prompt.text, pictures, how), conts)
        right += candidates[max(range(len(scores)), key=scores.__getitem__)] == spec.target(query, None)
    return 100.0 * right / len(queries)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", required=True, help="synthetic world folder (frozenvl data synth)")
    ap.add_argument("--lm", default="embedded:smollm2-135m", help="causal LM: embedded:NAME, folder or Hub id")
    ap.add_argument("--describe", choices=("object", "attribute"), default="object")
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 4, 8])
    ap.add_argument("--limit", type=int, default=None, help="first N queries (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="demonstration seed (the harness's --seed)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    lm, tokenizer = load_causal_lm(args.lm)
    lm.eval()
    data = synthetic_task_data("synth_icl_words", args.world)
    results = {}
    for shots in args.shots:
        results[shots] = accuracy(lm, tokenizer, data, shots, args.describe, args.limit, args.seed)
        print(f"{shots}-shot: {results[shots]:.1f} % ({len(data.queries[:args.limit])} queries)", flush=True)
    first, last = min(results), max(results)
    print(f"headline: frozen LM, pictures as text ({args.describe}): accuracy {first} -> {last} shots = "
          f"{results[first]:.1f} -> {results[last]:.1f} %")


if __name__ == "__main__":
    main()
