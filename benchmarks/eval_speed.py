"""Few-shot evaluation speed on the embedded default (SmolLM2-135M + EfficientNet-Lite0), CPU.

1. Close-ended classification over 100 class names, 8-shot: the prompt (demonstrations + query) encoded once
   and the candidates scored in batches from its cache, vs one full forward (text and images) per class name.
2. 8-shot captioning (beam 3, 20 new tokens): the demonstrations encoded once and their cache reused by a batch
   of queries, vs generation from the full prompt.

Both paths run in one process with the same settings (one torch thread by default: the machines are shared
2-core boxes, where two threads mostly wait on each other). Both score / generate the same token ids; the script
checks that they agree (same ranking, scores within 1e-4, same captions). The model is untrained (gates at 0),
which does not change the cost of a forward, but it never ends a caption early: every beam runs all 20 tokens, the
decoding both paths share is at its longest and the ratio at its lowest. ``--model DIR`` measures a trained
checkpoint instead (e.g. one from ``configs/flamingo_icl_cpu.yaml``), whose captions end when it says so.
Demonstrations and queries come from a small synthetic world written to a temporary folder.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_speed.py``. The last line is the headline figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from frozenvl.data import WorldConfig, generate_world
from frozenvl.data.synth import COLOURS, SHAPES
from frozenvl.eval import build_prompt, get_task
from frozenvl.eval.scoring import FewShotScorer
from frozenvl.eval.synthetic import read_world_split
from frozenvl.flamingo import build, load_pretrained


def class_names(n: int) -> list[str]:
    names = [f"{size} {colour} {shape}" for size in ("small", "large", "medium") for colour in COLOURS
             for shape in SHAPES]
    if n > len(names):
        raise ValueError(f"at most {len(names)} class names")
    return names[:n]


def bench_classification(scorer: FewShotScorer, world: str, shots: int, n_classes: int, n_queries: int) -> float:
    spec = get_task("synth_classification")
    records = read_world_split(world, "classification")
    names = list(records[0].meta["choices"])
    demos, queries = records[:shots], records[shots:shots + n_queries]
    candidates = class_names(n_classes)
    prompts = [build_prompt(spec, demos, q, class_names=names) for q in queries]
    context, context_media = prompts[0].context, prompts[0].media[:shots]

    start = time.perf_counter()
    cached = []
    for p in prompts:  # the whole prompt (demonstrations + query) is this query's shared prefix
        prefix = scorer.encode_prefix(context, context_media)
        cached.append(scorer.score_candidates(prefix, p.query, p.media[shots:], candidates))
    t_cached = (time.perf_counter() - start) / len(prompts)

    start = time.perf_counter()
    plain = [scorer.score_candidates_uncached(context, context_media, p.query, p.media[shots:], candidates)
             for p in prompts]
    t_plain = (time.perf_counter() - start) / len(prompts)

    diff = max(abs(a - b) for ca, pa in zip(cached, plain) for a, b in zip(ca, pa))
    same = all(max(range(n_classes), key=c.__getitem__) == max(range(n_classes), key=p.__getitem__)
               for c, p in zip(cached, plain))
    tokens = len(scorer.encode_prefix(context, context_media).ids)
    print(f"[1] classification, {shots}-shot prompt ({tokens} context tokens, {shots + 1} images), "
          f"{n_classes} class names, {len(prompts)} queries")
    print(f"    shared prefix, candidates in batches of {scorer.candidate_batch_size}: {t_cached:7.2f} s/query")
    print(f"    one full forward per class name:        {t_plain:7.2f} s/query")
    print(f"    speed-up {t_plain / t_cached:.1f}x; same top class: {same}; max |score diff| = {diff:.1e}")
    return t_plain / t_cached


def bench_captioning(scorer: FewShotScorer, world: str, shots: int, n_queries: int, beams: int,
                     new_tokens: int) -> float:
    spec = get_task("synth_captioning")
    records = read_world_split(world, "captioning")
    demos, queries = records[:shots], records[shots:shots + n_queries]
    prompts = [build_prompt(spec, demos, q) for q in queries]
    context, context_media = prompts[0].context, prompts[0].media[:shots]
    texts = [p.query for p in prompts]
    media = [p.media[shots:] for p in prompts]

    start = time.perf_counter()
    prefix = scorer.encode_prefix(context, context_media)
    cached = scorer.generate_ids(prefix, texts, media, new_tokens, beams)
    t_cached = time.perf_counter() - start

    start = time.perf_counter()
    plain = scorer.generate_ids_uncached(context, context_media, texts, media, new_tokens, beams)
    t_plain = time.perf_counter() - start

    generated = sum(len(c) for c in cached)
    print(f"[2] captioning, {shots}-shot prompt ({len(prefix.ids)} context tokens, {shots + 1} images), "
          f"{n_queries} queries in one batch, beam {beams}, <= {new_tokens} new tokens ({generated} generated)")
    print(f"    demonstration prefix reused: {t_cached:7.2f} s ({t_cached / n_queries:.2f} s/query)")
    print(f"    full prompt per query:       {t_plain:7.2f} s ({t_plain / n_queries:.2f} s/query)")
    print(f"    speed-up {t_plain / t_cached:.1f}x; same captions: {cached == plain}")
    print(f"    e.g. {scorer.decode(cached[:1])[0]!r}")
    return t_plain / t_cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--cls-shots", type=int, default=8)
    parser.add_argument("--cls-queries", type=int, default=1)
    parser.add_argument("--cap-shots", type=int, default=8)
    parser.add_argument("--cap-queries", type=int, default=8)
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--candidate-batch-size", type=int, default=50)
    parser.add_argument("--model", default=None,
                        help="a trained Flamingo folder (default: the untrained embedded default)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine, 2 threads stall each other)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    if args.model:
        model, processor = load_pretrained(args.model)
    else:
        model, processor = build(resampler_dim=256, resampler_depth=2, num_latents=16)
    model.eval()
    print(f"{args.model or 'untrained embedded default'} built in {time.perf_counter() - start:.1f} s; "
          f"torch threads: {torch.get_num_threads()}")
    scorer = FewShotScorer(model, processor, candidate_batch_size=args.candidate_batch_size)
    with tempfile.TemporaryDirectory() as world:
        generate_world(world, WorldConfig(seed=0, n_eval=24, splits=("captioning", "classification")),
                       progress=False, log=None)
        # warm-up: first calls allocate and pick kernels
        warm = scorer.encode_prefix("<|endofchunk|>")
        scorer.score_candidates(warm, "Output:", [], ["a b"])
        cls = bench_classification(scorer, world, args.cls_shots, args.classes, args.cls_queries)
        cap = bench_captioning(scorer, world, args.cap_shots, args.cap_queries, args.beams, args.new_tokens)
    print(f"total {time.perf_counter() - start:.0f} s")
    print(f"headline: {args.classes}-class scoring, shared prefix vs full forward per class = {cls:.1f}x "
          f"({args.cap_shots}-shot captioning, prefix reuse vs none = {cap:.1f}x)")


if __name__ == "__main__":
    main()
