"""Few-shot evaluation speed on the embedded default (SmolLM2-135M + EfficientNet-Lite0), CPU.

1. Close-ended classification over 100 class names, 8-shot, as the harness scores it: the demonstrations encoded
   once, the queries scored on their cache in batches of ``--cls-batch`` (``score_candidates_batch``: the queries
   in one forward, each query's class names packed as a tree), vs one full forward (text and images) per class
   name for each of the first ``--cls-plain-queries`` queries.
2. 8-shot captioning (beam 3, 20 new tokens): the demonstrations encoded once and their cache reused by a batch
   of queries, vs generation from the full prompt.

Both paths run in one process with the same settings (one torch thread by default: the machines are shared
2-core boxes, where two threads mostly wait on each other). Both score / generate the same token ids; the script
checks that they agree (same ranking, scores within 1e-4, same captions). The model is untrained (gates at 0),
which does not change the cost of a forward, but it never ends a caption early: every beam runs all 20 tokens, the
decoding both paths share is at its longest and the ratio at its lowest. ``--model DIR`` measures a trained
checkpoint instead (e.g. one from ``configs/flamingo_icl_cpu.yaml``), whose captions end when it says so.
Demonstrations and queries come from a small synthetic world written to a temporary folder.

3. ``--processes 1 2``: the whole harness (``FewShotHarness.run``, the queries shared by rank as under torchrun,
   rank 0 scoring the gathered predictions) in 1 and then 2 gloo processes started here, each with ``--threads``
   torch threads and its own copy of the model; queries/s of each (time from a barrier before the run to the end of
   the gather and the scoring) and whether the results are identical. Replaces modes 1 and 2.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_speed.py [--processes 1 2]``. The last line is the headline
figure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch

from frozenvl.data import WorldConfig, generate_world
from frozenvl.data.synth import COLOURS, SHAPES
from frozenvl.distributed import Dist, all_gather_object, barrier, setup, teardown
from frozenvl.eval import build_prompt, get_task
from frozenvl.eval.harness import EvalConfig, FewShotHarness
from frozenvl.eval.scoring import FewShotScorer
from frozenvl.eval.synthetic import SYNTHETIC_TASKS, read_world_split, synthetic_task_data
from frozenvl.flamingo import build, load_pretrained


def class_names(n: int) -> list[str]:
    names = [f"{size} {colour} {shape}" for size in ("small", "large", "medium") for colour in COLOURS
             for shape in SHAPES]
    if n > len(names):
        raise ValueError(f"at most {len(names)} class names")
    return names[:n]


def bench_classification(scorer: FewShotScorer, world: str, shots: int, n_classes: int, n_queries: int,
                         batch: int, n_plain: int) -> float:
    spec = get_task("synth_classification")
    records = read_world_split(world, "classification")
    names = list(records[0].meta["choices"])
    demos, queries = records[:shots], records[shots:shots + n_queries]
    candidates = class_names(n_classes)
    prompts = [build_prompt(spec, demos, q, class_names=names) for q in queries]
    context, context_media = prompts[0].context, prompts[0].media[:shots]

    start = time.perf_counter()
    prefix = scorer.encode_prefix(context, context_media)  # the demonstrations, once (as the harness)
    cached = []
    for s in range(0, len(prompts), batch):
        chunk = prompts[s:s + batch]
        cached += scorer.score_candidates_batch(prefix, [p.query for p in chunk], [p.media[shots:] for p in chunk],
                                                [candidates] * len(chunk))
    t_cached = (time.perf_counter() - start) / len(prompts)

    start = time.perf_counter()
    plain = [scorer.score_candidates_uncached(context, context_media, p.query, p.media[shots:], candidates)
             for p in prompts[:n_plain]]
    t_plain = (time.perf_counter() - start) / len(plain)

    diff = max(abs(a - b) for ca, pa in zip(cached, plain) for a, b in zip(ca, pa))
    same = all(max(range(n_classes), key=c.__getitem__) == max(range(n_classes), key=p.__getitem__)
               for c, p in zip(cached, plain))
    tokens = len(prefix.ids)
    print(f"[1] classification, {shots}-shot prompt ({tokens} context tokens, {shots + 1} images), "
          f"{n_classes} class names, {len(prompts)} queries ({len(plain)} for the full forwards)")
    print(f"    shared prefix, {batch} queries per batch, {scorer.candidate_batch_size} candidates per forward: "
          f"{t_cached:7.2f} s/query")
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


def _load_model(model_dir: str | None):
    torch.manual_seed(0)  # every process builds the same untrained model
    if model_dir:
        return load_pretrained(model_dir)
    return build(resampler_dim=256, resampler_depth=2, num_latents=16)


def _harness_worker(rank: int, world: int, port: int, args: argparse.Namespace, world_dir: str, out: str) -> None:
    """One process of the harness under a gloo process group (what torchrun sets up, done here by hand)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(args.threads)
    group = setup("cpu", option="--device") if world > 1 else Dist()
    model, processor = _load_model(args.model)
    spec, data = get_task(args.dist_task), synthetic_task_data(args.dist_task, world_dir)
    config = EvalConfig(shots=args.dist_shots, limit=args.dist_queries, candidate_batch_size=args.candidate_batch_size)
    harness = FewShotHarness(model.eval(), processor, config, rank=rank, world_size=world)
    harness.run(spec, data, progress=False)  # warm-up (kernels, allocations); the timed run repeats it
    barrier()
    start, cpu = time.perf_counter(), time.process_time()
    results = harness.run(spec, data, progress=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    cpus = all_gather_object(cpu)  # CPU seconds of every process: the work done, whatever else runs on the machine
    if rank == 0:
        Path(out).write_text(json.dumps({"seconds": seconds, "cpu_seconds": cpus, "results": results.to_dict()}))
    teardown(group)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_processes(args: argparse.Namespace) -> None:
    import torch.multiprocessing as mp

    runs = len(args.dist_shots)
    with tempfile.TemporaryDirectory() as tmp:
        world_dir = str(Path(tmp) / "world")
        split = SYNTHETIC_TASKS[args.dist_task]
        generate_world(world_dir, WorldConfig(seed=0, n_eval=max(args.dist_queries, 12), splits=(split,)),
                       progress=False, log=None)
        measured = {}
        for n in args.processes:
            out = str(Path(tmp) / f"result-{n}.json")
            mp.spawn(_harness_worker, args=(n, _free_port(), args, world_dir, out), nprocs=n)
            measured[n] = json.loads(Path(out).read_text())
            qps = args.dist_queries * runs / measured[n]["seconds"]
            cpu = measured[n]["cpu_seconds"]
            print(f"[3] {args.dist_task}, shots {args.dist_shots}, {args.dist_queries} queries: {n} process(es) x "
                  f"{args.threads} thread(s): {measured[n]['seconds']:.1f} s, {qps:.2f} queries/s; CPU s per process "
                  f"{', '.join(f'{c:.1f}' for c in cpu)} (sum {sum(cpu):.1f})")
    first, last = args.processes[0], args.processes[-1]
    same = all(m["results"] == measured[first]["results"] for m in measured.values())
    qps = {n: args.dist_queries * runs / m["seconds"] for n, m in measured.items()}
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    cpu = {n: sum(m["cpu_seconds"]) for n, m in measured.items()}
    print(f"headline: {args.dist_task} evaluation, {first} vs {last} processes: {qps[first]:.2f} vs {qps[last]:.2f} "
          f"queries/s = {qps[last] / qps[first]:.2f}x (CPU s in all: {cpu[first]:.1f} vs {cpu[last]:.1f}); identical "
          f"results: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--cls-shots", type=int, default=8)
    parser.add_argument("--cls-queries", type=int, default=8)
    parser.add_argument("--cls-batch", type=int, default=8, help="queries per batch (the harness's batch_size)")
    parser.add_argument("--cls-plain-queries", type=int, default=1,
                        help="queries timed (and compared) with one full forward per class name")
    parser.add_argument("--cap-shots", type=int, default=8)
    parser.add_argument("--cap-queries", type=int, default=8)
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--candidate-batch-size", type=int, default=50)
    parser.add_argument("--model", default=None,
                        help="a trained Flamingo folder (default: the untrained embedded default)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine, 2 threads stall each other)")
    parser.add_argument("--processes", type=int, nargs="+", default=None,
                        help="mode 3: the harness in each of these numbers of gloo processes, e.g. 1 2")
    parser.add_argument("--dist-task", default="synth_classification",
                        help="mode 3's synthetic task (synth_classification, synth_vqa, synth_captioning)")
    parser.add_argument("--dist-shots", type=int, nargs="+", default=[4])
    parser.add_argument("--dist-queries", type=int, default=16)
    args = parser.parse_args()

    if args.processes:
        bench_processes(args)
        return
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
        cls = bench_classification(scorer, world, args.cls_shots, args.classes, args.cls_queries, args.cls_batch,
                                   args.cls_plain_queries)
        cap = bench_captioning(scorer, world, args.cap_shots, args.cap_queries, args.beams, args.new_tokens)
    print(f"total {time.perf_counter() - start:.0f} s")
    print(f"headline: {args.classes}-class scoring, shared prefix vs full forward per class = {cls:.1f}x "
          f"({args.cap_shots}-shot captioning, prefix reuse vs none = {cap:.1f}x)")


if __name__ == "__main__":
    main()
