"""``frozenvl generate``: few-shot prompting of a Flamingo from the command line (images, video files, frame
folders)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from frozenvl.cli.devices import add_device_arguments, device_and_dtype
from frozenvl.cli.errors import CLIError

SKIMAGE_PREFIX = "skimage:"


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
    if not path.is_file():  # a folder, or a FIFO whose open() would block
        raise CLIError(f"image {spec} is not a regular file")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # bombs: PIL's pixel limit
        raise CLIError(f"image {spec} cannot be decoded: {e}") from e


def _load_video(folder: str, max_frames: int, fps: float = 1.0):
    """A video file (decoded at ``fps``, at most ``max_frames`` frames spread over the clip) or a frame folder."""
    path = Path(folder)
    if path.is_file():
        from frozenvl.data.video import read_video_frames

        try:
            return read_video_frames(path, fps, max_frames)
        except ValueError as e:
            raise CLIError(str(e)) from e
    if not path.is_dir():
        raise CLIError(f"video {folder} does not exist (a video file or a folder of frames)")
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


GATE_CLOSED = 1e-3  # |tanh(alpha)| below this: the block adds (almost) nothing


def closed_gates_warning(model) -> str | None:
    """A warning when every tanh gate of the model is ~0: its images change nothing, the LM answers alone (a fresh
    model's gates start at 0). None when a gate is open or the model has no tanh gates (``gating="none"``)."""
    from frozenvl.flamingo.cross_attention import TanhGate

    gates = [m for m in model.modules() if isinstance(m, TanhGate)] if hasattr(model, "modules") else []
    if not gates or any(float(m.alpha.detach().float().tanh().abs().max()) >= GATE_CLOSED for m in gates):
        return None
    return (f"warning: all {len(gates)} cross-attention gates of this model are closed (|tanh(alpha)| < "
            f"{GATE_CLOSED:g}): it ignores its images and answers from its language model alone. It is untrained: "
            "pass --model with a trained Flamingo (frozenvl demo, frozenvl train)")


def _load_flamingo(args):
    import frozenvl.flamingo as fl

    device, dtype = device_and_dtype(args)
    if args.model:
        if not Path(args.model).is_dir():
            raise CLIError(f"model folder {args.model} does not exist")
        return fl.load_pretrained(args.model, dtype=dtype, device=device)
    return fl.build(lm=args.lm, vision=args.vision, cross_attn_every=args.cross_attn_every, dtype=dtype,
                    device=device)


def run(args: argparse.Namespace) -> int:
    import torch

    # Check the arguments and read every image before loading the model, so that a mistake fails at once.
    if args.num_beams is None:
        args.num_beams = 1 if args.sample else 3
    if args.sample and args.num_beams > 1:
        raise CLIError(f"--sample draws one sequence: use it with --num-beams 1 (got --num-beams {args.num_beams})")
    if not args.video_fps > 0:
        raise CLIError(f"--video-fps must be > 0, got {args.video_fps}")
    if args.num_beams < 1 or args.max_frames < 1 or args.max_new_tokens < 1:
        raise CLIError("--num-beams, --max-frames and --max-new-tokens must be >= 1, got "
                       f"{args.num_beams}, {args.max_frames} and {args.max_new_tokens}")
    if args.repetition_penalty <= 0 or args.no_repeat_ngram_size < 0 or args.min_new_tokens < 0:
        raise CLIError("--repetition-penalty must be > 0 and --no-repeat-ngram-size, --min-new-tokens >= 0, got "
                       f"{args.repetition_penalty}, {args.no_repeat_ngram_size} and {args.min_new_tokens}")
    if not 0 < args.top_p <= 1 or args.temperature <= 0:
        raise CLIError(f"--top-p must be in (0, 1] and --temperature > 0, got {args.top_p} and {args.temperature}")
    media = [_load_video(value, args.max_frames, args.video_fps) if kind == "video" else _load_image(value)
             for kind, value in args.media or []]
    model, processor = _load_flamingo(args)
    warning = closed_gates_warning(model)
    if warning:
        print(warning, file=sys.stderr)
    torch.manual_seed(args.seed)
    batch = processor([args.prompt], [media], padding_side="left").to(model.device)
    out = model.generate(**batch, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                         do_sample=args.sample, temperature=args.temperature, top_p=args.top_p,
                         repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
                         min_new_tokens=args.min_new_tokens)
    print(processor.batch_decode_new(out, batch["input_ids"].shape[1])[0])
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="few-shot prompting from the command line",
                         description="Generate a continuation of an interleaved prompt. Put one <image> in the "
                                     "prompt per --image/--video, in order. Images may be paths or skimage:NAME.")
    gen.add_argument("--prompt", required=True, help='e.g. "<image>Output: a cat.<|endofchunk|><image>Output:"')
    gen.add_argument("--image", dest="media", action=_AppendMedia, help="an image path or skimage:NAME (repeat)")
    gen.add_argument("--video", dest="media", action=_AppendMedia,
                     help="a video file (mp4, webm, ...) or a folder of its frames (repeat)")
    gen.add_argument("--model", help="a Flamingo folder written by save_pretrained / training")
    gen.add_argument("--lm", default="embedded:smollm2-135m", help="LM source when --model is not given")
    gen.add_argument("--vision", default="embedded:efficientnet-lite0", help="vision source without --model")
    gen.add_argument("--cross-attn-every", type=int, default=4, help="without --model: fusion frequency")
    gen.add_argument("--max-frames", type=int, default=8,
                     help="at most this many frames of each --video, spread over the clip")
    gen.add_argument("--video-fps", type=float, default=1.0,
                     help="frames per second decoded from a --video file (default 1, the Flamingo paper's rate)")
    gen.add_argument("--max-new-tokens", type=int, default=20)
    gen.add_argument("--num-beams", type=int, default=None, help="beam search width (default 3; 1 with --sample)")
    gen.add_argument("--sample", action="store_true", help="sample instead of beam search (implies --num-beams 1)")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--repetition-penalty", type=float, default=1.0,
                     help="> 1 makes tokens already in the text less likely (transformers' repetition penalty)")
    gen.add_argument("--no-repeat-ngram-size", type=int, default=0, help="never repeat an n-gram of this size")
    gen.add_argument("--min-new-tokens", type=int, default=0, help="no stop before this many new tokens")
    gen.add_argument("--seed", type=int, default=0)
    add_device_arguments(gen)
    gen.set_defaults(func=run, media=[])
