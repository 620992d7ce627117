"""``frozenvl flame embed`` and ``frozenvl flame eval``: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from frozenvl.cli.devices import add_device_arguments, device_and_dtype
from frozenvl.cli.errors import run_command
from frozenvl.constants import CONFIG_NAME, WEIGHTS_NAME
from frozenvl.files import check_writable, write_text_atomic


def _add_text_args(p: argparse.ArgumentParser, prompts_default: str | None) -> None:
    p.add_argument("--lm", default=None,
                   help="frozen causal LM: 'embedded:smollm2-135m' (default), a local folder or a Hub id")
    p.add_argument("--prompts", default=prompts_default,
                   help="prompt set: raw, short, long (official) or a YAML file with 'prefix' and 'prompts'")
    p.add_argument("--layer", type=int, default=None,
                   help="hidden_states index to read (default: number of layers - 1, the penultimate block's "
                        "output, before the final norm)")
    p.add_argument("--max-length", type=int, default=1024,
                   help="token budget of prefix + all prompts; only the caption is truncated (default 1024)")
    p.add_argument("--batch-size", type=int, default=32, help="captions per LM pass (default 32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frozenvl flame",
        description="FLAME: multifaceted caption embeddings from a frozen LLM, and evaluation of image towers.")
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser(
        "embed", help="embed captions once into a resumable offline store",
        description="Embed captions into a sharded fp16 store (one row of K facet embeddings per key). "
                    "Rerunning after an interruption resumes; a store made with another LM, layer or prompt "
                    "set is refused.")
    embed.add_argument("--input", nargs="+", required=True,
                       help="JSONL files of {\"key\", \"caption\"} or webdataset .tar shards (caption in .txt or "
                            "in .json as \"caption\")")
    embed.add_argument("--out", required=True, help="store folder (created, or extended if compatible)")
    _add_text_args(embed, "long")
    add_device_arguments(embed, "the LM")
    embed.add_argument("--mode", choices=("fda", "packed", "prefix_cache", "naive"), default="fda",
                       help="fda: one pass with the facet-decoupled mask (default); packed: fda with several "
                            "captions per row, no padding between them (captions of mixed lengths); prefix_cache: "
                            "shared prefix KV cache; naive: one pass per prompt")
    embed.add_argument("--commit-every", "--shard-size", dest="commit_every", type=int, default=256,
                       help="commit a shard every N new captions, so a killed run loses at most N and a rerun "
                            "resumes after the last commit (default 256; --shard-size is the older name)")
    embed.add_argument("--official-compat", nargs="?", const="sdpa", default=False, choices=("sdpa", "eager"),
                       help="reproduce the official FLAME code (left padding leaks into the mask, padding rows "
                            "blank, positions do not restart; embeddings then depend on batch padding) as it runs "
                            "with transformers 4.43 on SDPA (default, its CUDA setup) or eager attention")
    embed.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = sub.add_parser(
        "eval", help="zero-shot classification or retrieval with a trained FLAME image tower",
        description=f"Evaluate a FLAME checkpoint (a folder with {CONFIG_NAME} + {WEIGHTS_NAME}: written by "
                    "save_pretrained, or a training checkpoint run_dir/checkpoints/step-N). The text encoder "
                    "defaults to the one recorded in the checkpoint. Results are printed and written as JSON.")
    ev.add_argument("--checkpoint", required=True,
                    help="FLAME checkpoint: a save_pretrained folder, a training checkpoint run_dir/checkpoints/"
                         "step-N, or a run folder (its latest checkpoint)")
    ev.add_argument("--task", choices=("retrieval", "zero-shot"), required=True)
    ev.add_argument("--format", choices=("karpathy", "urban1k", "sharegpt4v", "imagefolder", "world"),
                    required=True,
                    help="karpathy: COCO/Flickr JSON; urban1k: image/ + caption/ folders; sharegpt4v: long-caption "
                         "JSON; imagefolder: root/CLASS/images (zero-shot); world: a synthetic world folder "
                         "(frozenvl data synth), its classification / heldout splits (zero-shot) or its retrieval "
                         "split")
    ev.add_argument("--data", required=True, help="annotation file or dataset folder")
    ev.add_argument("--image-root", default="", help="folder the image paths of the annotations are relative to")
    ev.add_argument("--split", default=None,
                    help="Karpathy split (default test); world: classification (default) or heldout for zero-shot, "
                         "retrieval for retrieval")
    ev.add_argument("--captions", choices=("long", "short"), default="long",
                    help="world retrieval: each image's long caption (default) or its short captions")
    ev.add_argument("--limit", type=int, default=1000, help="ShareGPT4V entries to use (default 1000)")
    ev.add_argument("--aggregate", choices=("mean_embedding", "mean_similarity"), default="mean_embedding",
                    help="facet aggregation: mean of facet embeddings (official) or mean of per-facet similarities")
    ev.add_argument("--templates", default=None,
                    help="zero-shot: a text file with one class template per line, '{}' for the class name "
                         "(default: the CLIP templates; world: '{}.' with the class name and its article, the "
                         "form of the world's captions)")
    ev.add_argument("--out", default=None, help="write the results JSON here")
    _add_text_args(ev, None)
    add_device_arguments(ev, "the LM and the image tower")
    return parser


def _encoder(args, text_meta: dict | None = None, prompts: str = "long"):
    from frozenvl.flame.text_encoder import DEFAULT_LM, FacetTextEncoder

    device, dtype = device_and_dtype(args)
    text_meta = text_meta or {}
    lm = args.lm or text_meta.get("lm") or DEFAULT_LM
    if lm == "<instance>":
        lm = DEFAULT_LM
    layer = args.layer if args.layer is not None else text_meta.get("layer")
    kwargs = {"layer": layer, "max_length": args.max_length}
    if getattr(args, "mode", None):
        kwargs.update(mode=args.mode, official_compat=args.official_compat)
    return FacetTextEncoder.from_source(lm, prompts, dtype=dtype, device=device, **kwargs)


def _run_embed(args) -> dict:
    from frozenvl.flame.caption_sources import iter_captions
    from frozenvl.flame.store import embed_to_store

    for path in args.input:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"caption input {path} does not exist")
    encoder = _encoder(args, prompts=args.prompts)
    report = embed_to_store(iter_captions(args.input), encoder, args.out, batch_size=args.batch_size,
                            commit_every=args.commit_every, progress=not args.no_progress)
    return {"store": str(args.out), **report.to_dict(), **encoder.describe()}


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A model folder: ``path`` itself when it holds the model's files, else the latest training checkpoint of a
    run folder (``path/checkpoints/step-N``) or of a checkpoints folder (``path/step-N``)."""
    from frozenvl.train.checkpoint import latest_checkpoint

    folder = Path(path)
    if (folder / CONFIG_NAME).is_file():
        return folder
    for root in (folder / "checkpoints", folder):
        latest = latest_checkpoint(root)
        if latest is not None:
            return latest
    raise FileNotFoundError(f"{folder} holds no {CONFIG_NAME} + {WEIGHTS_NAME} and no complete training checkpoint "
                            "(checkpoints/step-N): give a save_pretrained folder, a step-N folder or a run folder")


def _world_data(args, task: str, image_size: int):
    from frozenvl.flame.synthetic_eval import WORLD_CLASSIFICATION_SPLITS, world_classification, world_retrieval

    if task == "zero-shot":
        split = args.split or "classification"
        if split not in WORLD_CLASSIFICATION_SPLITS:
            raise ValueError(f"--split {split}: the world's zero-shot splits are {WORLD_CLASSIFICATION_SPLITS}")
        return world_classification(args.data, split, image_size)
    split = args.split or "retrieval"
    return world_retrieval(args.data, image_size, long=args.captions == "long", split=split)


def _run_eval(args) -> dict:
    from frozenvl.flame import evaluate as ev
    from frozenvl.flame.model import FlameModel
    from frozenvl.flame.prompts import OFFICIAL_PROMPT_SETS
    from frozenvl.flame.store import check_text_encoder
    from frozenvl.flame.synthetic_eval import with_article

    device, dtype = device_and_dtype(args)  # an unusable --device fails before anything is read
    if args.out:
        check_writable(args.out, what="--out")  # before any work, not after it
    if args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    templates = _read_templates(args.templates) if args.templates else None  # checked before the models load
    try:
        checkpoint = resolve_checkpoint(args.checkpoint)
        model = FlameModel.from_pretrained(checkpoint, dtype=dtype, device=device).eval()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--checkpoint: not a FLAME checkpoint: {e}") from None
    text_meta = model.config.text
    if args.task == "zero-shot":
        prompts = args.prompts or "raw"  # class-name templates are wrapped in the raw prompt
    else:
        recorded = text_meta.get("prompt_set")
        prompts = args.prompts or (recorded if recorded in OFFICIAL_PROMPT_SETS else "long")
    encoder = _encoder(args, text_meta, prompts)
    if encoder.hidden_size != model.config.text_dim:
        raise ValueError(f"the LM's hidden size {encoder.hidden_size} does not match the checkpoint's text_dim "
                         f"{model.config.text_dim}: pass the --lm the model was trained with")
    check_text_encoder(text_meta, encoder)  # the LM (its weights) and the layer the tower was trained with
    extra = {}
    if args.format == "world":
        data = _world_data(args, args.task, model.config.vision.image_size)
        extra["split"] = args.split or ("classification" if args.task == "zero-shot" else "retrieval")
        if args.task == "zero-shot":
            classnames = [with_article(c) for c in data.classnames]
            results = ev.score_zero_shot(model, encoder, data.images, data.labels, classnames, templates or ["{}."],
                                         args.aggregate, args.batch_size)
        else:
            extra["captions"] = args.captions
            results = ev.score_retrieval(model, encoder, data.images, data.captions, data.text_to_image,
                                         args.aggregate, args.batch_size)
    elif args.task == "zero-shot":
        if args.format != "imagefolder":
            raise ValueError("zero-shot classification reads --format imagefolder or world")
        results = ev.evaluate_zero_shot(model, encoder, ev.load_image_folder(args.data),
                                        templates or ev.DEFAULT_CLASS_TEMPLATES, args.aggregate, args.batch_size)
    else:
        if args.format == "imagefolder":
            raise ValueError("retrieval reads --format karpathy, urban1k, sharegpt4v or world")
        if args.format == "urban1k":
            dataset = ev.load_urban1k(args.data)
        elif args.format == "sharegpt4v":
            dataset = ev.load_sharegpt4v(args.data, args.image_root, args.limit)
        else:
            dataset = ev.load_karpathy(args.data, args.image_root, args.split or "test")
        results = ev.evaluate_retrieval(model, encoder, dataset, args.aggregate, args.batch_size)
    return {**results, **extra, "checkpoint": str(checkpoint), "format": args.format, "text": encoder.describe()}


def _read_templates(path: str) -> list[str]:
    """Class-name templates, one per line, each checked by :func:`~frozenvl.flame.inference.check_class_template`
    (exactly one ``{}``). One error names the file and line."""
    from frozenvl.flame.inference import check_class_template

    if not Path(path).is_file():  # missing, a folder, or a FIFO whose read would block
        raise ValueError(f"--templates {path} is not a file")
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"--templates {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    templates = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            check_class_template(line)
        except ValueError as e:
            raise ValueError(f"--templates {path}:{number}: {e}") from None
        templates.append(line)
    if not templates:
        raise ValueError(f"--templates {path} holds no template")
    return templates


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A bad input (a ValueError or OSError, StoreMismatchError included) is the one line "frozenvl flame: error:
    # ...", as for every command (also when this main is called directly).
    return run_command("flame", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    result = _run_embed(args) if args.command == "embed" else _run_eval(args)
    text = json.dumps(result, indent=1)
    if getattr(args, "out", None) and args.command == "eval":
        write_text_atomic(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
