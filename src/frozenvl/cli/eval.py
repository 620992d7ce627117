"""``frozenvl eval flamingo``: few-shot evaluation of a Flamingo on one task, for several shot counts.

    frozenvl eval flamingo --model runs/flamingo --task synth_icl_words --data data/world --shots 0 4 8
    frozenvl eval flamingo --lm embedded:smollm2-135m --vision embedded:efficientnet-lite0 \\
        --task coco --data dataset_coco.json --image-root coco/ --split test --pool-split train --shots 0 4
    torchrun --nproc_per_node 2 --no-python frozenvl eval flamingo --model runs/flamingo --task coco ...

Under torchrun the processes share the queries (each with its own prefix cache, on GPU LOCAL_RANK or the CPU) and
rank 0 scores the gathered predictions and writes the results: the same as one process, faster.

Writes ``<out>/<task>.json`` (config, per-sample predictions, metrics per shot count and trial) and
``<out>/<task>.png`` (score against shots), and prints a summary table. The default ``<out>`` is named by the model
(:func:`default_out_dir`), so evaluating a second model never overwrites the first one's results.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from frozenvl.cli.devices import add_device_arguments, device_and_dtype
from frozenvl.distributed import Dist, setup, teardown, world_size_from_env
from frozenvl.eval.metrics import VQA_NORMALIZATIONS
from frozenvl.eval.tasks import TASKS, TaskSpec, get_task
from frozenvl.files import check_writable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frozenvl eval", description="Few-shot evaluation.")
    sub = parser.add_subparsers(dest="system", metavar="SYSTEM", required=True)
    p = sub.add_parser("flamingo", help="few-shot evaluation of a Flamingo (the protocol of docs/evaluation.md)",
                       description="Few-shot evaluation of a Flamingo: beam search with 3 beams, 20 new tokens "
                                   "for captions and 5 for short answers, candidates ranked by length-normalised "
                                   "log-likelihood; 0 shots = two text-only demonstrations.")
    p.add_argument("--model", help="a Flamingo folder written by save_pretrained / training")
    p.add_argument("--lm", default="embedded:smollm2-135m", help="LM source for an untrained model (no --model)")
    p.add_argument("--vision", default="embedded:efficientnet-lite0", help="vision source (no --model)")
    p.add_argument("--task", required=True, help=f"one of: {', '.join(sorted(TASKS))}")
    p.add_argument("--data", required=True, nargs="+",
                   help="the task's files: a synthetic world folder; COCO/Karpathy JSON; VQAv2 questions "
                        "[annotations]; a class folder root; a video annotation JSON (videos in --image-root)")
    p.add_argument("--image-root", help="folder the images (or videos: files such as ID.mp4, or frame folders ID/) "
                                        "are found in")
    p.add_argument("--split", help="Karpathy split of the queries (e.g. test)")
    p.add_argument("--pool", nargs="+", help="files of the demonstration pool (default: the queries' files, "
                                              "a query never being its own demonstration)")
    p.add_argument("--pool-split", help="Karpathy split(s) of the pool, comma separated (e.g. train,restval)")
    p.add_argument("--class-names", help="class list for a class folder task (text, JSON list or JSON object)")
    p.add_argument("--shots", type=int, nargs="+", default=[0, 4, 8])
    p.add_argument("--trials", type=int, default=1, help="random demonstration draws per shot count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rices", action="store_true", help="demonstrations by image similarity (RICES)")
    p.add_argument("--limit", type=int, help="evaluate the first N queries only")
    p.add_argument("--batch-size", type=int, default=8, help="queries decoded together")
    p.add_argument("--no-prefix-cache", action="store_true", help="recompute the prompt per query (slow)")
    p.add_argument("--save-prompts", action="store_true", help="store each query's prompt in the JSON")
    p.add_argument("--vqa-normalization", choices=VQA_NORMALIZATIONS, default="official",
                   help="VQA accuracy: normalise answers only when the annotators disagree, as the official VQA "
                        "evaluation does (official), or always, as OpenFlamingo's published numbers (openflamingo)")
    p.add_argument("--out", help="output folder (default: runs/eval/<model>/<task>, <model> named after the --model "
                                 "folder, or untrained-<lm>-<vision> without --model)")
    p.add_argument("--no-progress", action="store_true")
    add_device_arguments(p)
    return parser


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    import frozenvl.flamingo as fl

    device, dtype = device_and_dtype(args)
    if args.model:
        if not Path(args.model).is_dir():
            raise FileNotFoundError(f"model folder {args.model} does not exist")
        return fl.load_pretrained(args.model, dtype=dtype, device=device)
    return fl.build(lm=args.lm, vision=args.vision, dtype=dtype, device=device)


def _read(spec: TaskSpec, paths: Sequence[str], image_root: str | None, split: str | list[str] | None,
          class_names: str | None) -> tuple[list, list[str] | None]:
    from frozenvl.eval import records as readers

    if spec.reader == "coco_captions":
        return readers.read_coco_captions(paths[0], image_root, split=split), None
    if spec.reader == "vqav2":
        return readers.read_vqav2(paths[0], paths[1] if len(paths) > 1 else None, image_root), None
    if spec.reader in ("textvqa", "vizwiz", "hateful_memes"):
        reader = {"textvqa": readers.read_textvqa, "vizwiz": readers.read_vizwiz,
                  "hateful_memes": readers.read_hateful_memes}[spec.reader]
        return reader(paths[0], image_root), None
    if spec.reader == "class_folder":
        names = readers.read_class_names(class_names) if class_names else None
        return readers.read_class_folder(paths[0], names)
    if spec.reader in ("video_captions", "video_qa"):
        if image_root is None:
            raise ValueError(f"task {spec.name!r}: pass the folder of the videos (files or frame folders) with "
                             "--image-root")
        reader = readers.read_video_captions if spec.reader == "video_captions" else readers.read_video_qa
        return reader(image_root, paths[0]), None
    raise ValueError(f"task {spec.name!r} has no reader for --data")


def load_task_data(spec: TaskSpec, args: argparse.Namespace) -> Any:
    """Queries, demonstration pool and class names of a task from the command line's files."""
    from frozenvl.eval.harness import TaskData
    from frozenvl.eval.synthetic import SYNTHETIC_TASKS, synthetic_task_data

    if spec.name in SYNTHETIC_TASKS:
        return synthetic_task_data(spec.name, args.data[0])
    queries, class_names = _read(spec, args.data, args.image_root, args.split, args.class_names)
    pool = queries
    if args.pool or args.pool_split:
        pool_split = args.pool_split.split(",") if args.pool_split else None
        pool, _ = _read(spec, args.pool or args.data, args.image_root, pool_split, args.class_names)
    return TaskData(queries=queries, pool=pool, class_names=class_names)


def default_out_dir(model: str | None, lm: str, vision: str, task: str) -> Path:
    """``runs/eval/<model>/<task>``: ``<model>`` is the --model folder's path (relative to the current folder when
    inside it, a leading ``runs/`` dropped) with its separators as ``-``, e.g. ``demo-flamingo-checkpoints-step-200``;
    without --model, ``untrained-<lm>-<vision>``."""
    import re

    if model:
        path = Path(model).resolve()
        try:
            parts = path.relative_to(Path.cwd().resolve()).parts
        except ValueError:
            parts = path.parts[1:]
        if parts[:1] == ("runs",) and len(parts) > 1:
            parts = parts[1:]
        name = "-".join(parts)
    else:
        name = f"untrained-{lm}-{vision}"
    return Path("runs") / "eval" / (re.sub(r"[^A-Za-z0-9._]+", "-", name).strip("-.") or "model") / task


def run(args: argparse.Namespace) -> int:
    from frozenvl.eval.harness import EvalConfig, evaluate, format_summary

    spec = dataclasses.replace(get_task(args.task), vqa_normalization=args.vqa_normalization)
    device_and_dtype(args)  # an unusable --device fails before any data is read
    out_dir = Path(args.out) if args.out else default_out_dir(args.model, args.lm, args.vision, spec.name)
    check_writable(out_dir, folder=True, what="--out")  # before the evaluation, not after it
    for path in args.data:
        if not os.path.exists(path):
            raise FileNotFoundError(f"--data {path} does not exist")
    config = EvalConfig(shots=args.shots, trials=args.trials, seed=args.seed, rices=args.rices, limit=args.limit,
                        batch_size=args.batch_size, prefix_cache=not args.no_prefix_cache,
                        save_prompts=args.save_prompts)
    data = load_task_data(spec, args)
    group = join_process_group(args)
    try:
        model, processor = load_model(args)
        output = evaluate(model, processor, spec, data, config, out_dir, progress=not args.no_progress,
                          rank=group.rank, world_size=group.world_size)
    finally:
        teardown(group)
    if not group.is_main:  # rank 0 scored every process's predictions and writes them
        return 0
    output.results.config["model_source"] = args.model or {"lm": args.lm, "vision": args.vision}
    output.results.save(output.json_path)
    print(f"{spec.name} ({spec.metric}), {len(data.queries[: args.limit])} queries")
    print(format_summary(output.results))
    print(f"results: {output.json_path}\nplot: {output.plot_path}")
    return 0


def join_process_group(args: argparse.Namespace) -> Dist:
    """Under torchrun (WORLD_SIZE > 1): join its process group (gloo on the CPU, NCCL on GPUs) and run this process
    on GPU LOCAL_RANK with ``--device cuda``; one process: a world of one, ``--device`` as given."""
    if world_size_from_env() == 1:
        return Dist()
    device, _ = device_and_dtype(args)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: under torchrun the evaluation runs on cpu or cuda (each process on GPU "
                         "LOCAL_RANK)")
    group = setup(device.type, option="--device")
    args.device = str(group.device)
    return group


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``frozenvl eval``; returns the exit code (2 with one line on a bad argument or file)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return run(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"frozenvl eval {args.system}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
