"""The ``frozenvl`` command: a thin layer over the library. Each subcommand has ``--help``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

SKIMAGE_PREFIX = "skimage:"


class CLIError(Exception):
    """A user mistake: printed as one line, exit code 2."""


def _load_image(spec: str):
    """A path, or ``skimage:NAME`` for one of scikit-image's sample photos (astronaut, chelsea, coffee...)."""
    from PIL import Image

    if spec.startswith(SKIMAGE_PREFIX):
        import skimage.data

        name = spec[len(SKIMAGE_PREFIX):]
        loader = getattr(skimage.data, name, None)
        if loader is None or not callable(loader):
            raise CLIError(f"unknown scikit-image sample {name!r} (try astronaut, chelsea, coffee, rocket)")
        return Image.fromarray(loader()).convert("RGB")
    path = Path(spec)
    if not path.exists():
        raise CLIError(f"image {spec} does not exist")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as e:
        raise CLIError(f"image {spec} cannot be decoded: {e}") from e


def _load_video(folder: str, max_frames: int):
    path = Path(folder)
    if not path.is_dir():
        raise CLIError(f"video frame folder {folder} does not exist")
    frames = sorted(p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp"))
    if not frames:
        raise CLIError(f"video frame folder {folder} has no image files")
    step = max(1, len(frames) // max_frames)
    return [_load_image(str(p)) for p in frames[::step][:max_frames]]


class _AppendMedia(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        media = list(getattr(namespace, "media", None) or [])
        media.append(("video" if option_string == "--video" else "image", values))
        namespace.media = media


def _load_flamingo(args):
    import frozenvl.flamingo as fl

    if args.model:
        if not Path(args.model).is_dir():
            raise CLIError(f"model folder {args.model} does not exist")
        return fl.load_pretrained(args.model)
    return fl.build(lm=args.lm, vision=args.vision, cross_attn_every=args.cross_attn_every)


def cmd_generate(args) -> int:
    import torch

    # Read every image before loading the model, so that a wrong path fails at once.
    media = [_load_video(value, args.max_frames) if kind == "video" else _load_image(value)
             for kind, value in args.media or []]
    model, processor = _load_flamingo(args)
    torch.manual_seed(args.seed)
    batch = processor([args.prompt], [media], padding_side="left")
    out = model.generate(**batch, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                         do_sample=args.sample, temperature=args.temperature, top_p=args.top_p)
    print(processor.batch_decode_new(out, batch["input_ids"].shape[1])[0])
    return 0


def cmd_demo(args) -> int:
    from frozenvl.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0


def _delegate(module: str):
    def run(args) -> int:
        return importlib.import_module(module).main(args.rest)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frozenvl",
        description="Vision-language learning on frozen language models: Flamingo and FLAME.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the main job on the embedded default (no internet, no GPU)",
                          description="Few-shot generation with a Flamingo built on the embedded SmolLM2-135M and "
                                      "EfficientNet-Lite0, on scikit-image's sample photos.")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="a shorter run")
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate", help="few-shot prompting from the command line",
                         description="Generate a continuation of an interleaved prompt. Put one <image> in the "
                                     "prompt per --image/--video, in order. Images may be paths or skimage:NAME.")
    gen.add_argument("--prompt", required=True, help='e.g. "<image>Output: a cat.<|endofchunk|><image>Output:"')
    gen.add_argument("--image", dest="media", action=_AppendMedia, help="an image path or skimage:NAME (repeat)")
    gen.add_argument("--video", dest="media", action=_AppendMedia, help="a folder of video frames (repeat)")
    gen.add_argument("--model", help="a Flamingo folder written by save_pretrained / training")
    gen.add_argument("--lm", default="embedded:smollm2-135m", help="LM source when --model is not given")
    gen.add_argument("--vision", default="embedded:efficientnet-lite0", help="vision source without --model")
    gen.add_argument("--cross-attn-every", type=int, default=4, help="without --model: fusion frequency")
    gen.add_argument("--max-frames", type=int, default=8, help="frames sampled from each --video folder")
    gen.add_argument("--max-new-tokens", type=int, default=20)
    gen.add_argument("--num-beams", type=int, default=3)
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy/beam search")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=cmd_generate, media=[])

    for name, (module, text) in DELEGATED.items():
        p = sub.add_parser(name, help=text, add_help=False, description=text)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_delegate(module))
    return parser


DELEGATED = {
    name: (module, text) for name, module, text in [
        ("train", "frozenvl.train.cli", "train a Flamingo from a YAML config (torchrun for several processes)"),
        ("eval", "frozenvl.eval.cli", "few-shot evaluation of a Flamingo (captioning, VQA, classification, video)"),
        ("data", "frozenvl.data.cli", "write the synthetic world, convert datasets to shards"),
        ("flame", "frozenvl.flame.cli", "FLAME: offline facet embeddings and evaluation"),
    ]
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if argv and argv[0] in DELEGATED:  # these subcommands own their whole argument list, --help included
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        return int(importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"frozenvl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
        print(f"frozenvl {args.command}: error: {e}", file=sys.stderr)
        return 2
