"""`frozenvl data ...`: generate the synthetic world, convert datasets to shards, inspect shards.

    frozenvl data synth OUT [--seed 0 --image-size 64 --pairs 10000 ...]
    frozenvl data convert folder IMAGES CAPTIONS.csv|.jsonl OUT
    frozenvl data convert coco CAPTIONS.json IMAGES OUT [--records pairs|caption|retrieval]
    frozenvl data convert vqav2 QUESTIONS.json IMAGES OUT [--annotations ANNOTATIONS.json]
    frozenvl data convert mmc4 DOCS.jsonl IMAGES OUT
    frozenvl data convert video VIDEOS CAPTIONS.csv|.jsonl OUT [--fps 1 --max-frames 8]
    frozenvl data inspect SHARDS   # count samples by kind and skipped ones by reason
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from frozenvl.cli.errors import run_command
from frozenvl.data import convert as conv
from frozenvl.data.synth import EVAL_SPLITS, PAGE_THEMES, SPLIT_IDS, TRAIN_SPLITS, WorldConfig, generate_world


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="frozenvl data", description="Shards: synthetic world, converters, inspection.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write the synthetic world (train + eval shards, world.json)",
                       description="Deterministic synthetic world: shapes scenes as pairs, interleaved pages, "
                                   "videos and evaluation splits (" + ", ".join(EVAL_SPLITS) + ").")
    s.add_argument("out", help="output folder (train/, eval/, world.json)")
    s.add_argument("--seed", type=int, default=0, help="world seed; same seed, same bytes (default 0)")
    s.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    s.add_argument("--image-format", choices=("png", "jpg", "webp"), default="png")
    s.add_argument("--pairs", type=int, default=10_000, help="training image-text pairs (default 10000)")
    s.add_argument("--interleaved", type=int, default=2_000, help="training interleaved pages (default 2000)")
    s.add_argument("--video", type=int, default=1_000, help="training video-text pairs (default 1000)")
    s.add_argument("--eval", type=int, default=500, help="records per evaluation split (default 500)")
    s.add_argument("--episodes", type=int, default=100, help="icl_words episodes (default 100)")
    s.add_argument("--n-way", type=int, default=3, help="icl_words classes per episode (default 3)")
    s.add_argument("--k-shot", type=int, default=4, help="icl_words support examples per class (default 4)")
    s.add_argument("--page-themes", nargs="+", metavar="THEME=WEIGHT", default=None,
                   help=f"relative frequency of interleaved page themes {', '.join(PAGE_THEMES)} "
                        "(default 1 each; e.g. words=3 for more in-context naming pages)")
    s.add_argument("--frames", type=int, default=8, help="frames per video (default 8)")
    s.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    s.add_argument("--workers", type=int, default=1, help="generator processes (default 1)")
    s.add_argument("--splits", nargs="+", choices=list(SPLIT_IDS), default=list(TRAIN_SPLITS + EVAL_SPLITS),
                   help="splits to write (default: all)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")

    c = sub.add_parser("convert", help="convert a dataset to frozenvl shards",
                       description="Convert a dataset to frozenvl shards; prints what was skipped and why.")
    csub = c.add_subparsers(dest="source", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
        q.add_argument("--max-size", type=int, default=None, help="downscale images whose longest side is larger")
        q.add_argument("--quiet", action="store_true", help="no progress bar")
        q.add_argument("--overwrite", action="store_true",
                       help="replace the shards of an earlier conversion with the same prefix in OUT (refused without)")

    f = csub.add_parser("folder", help="folder of images + CSV/JSONL captions -> image-text pairs",
                        description="Rows name an image (column image/file/filename/path) and a caption "
                                    "(caption/text/title); optional long_caption, key, language.")
    f.add_argument("images", help="image folder")
    f.add_argument("captions", help="CSV with a header, or JSONL")
    f.add_argument("out", help="output folder")
    f.add_argument("--prefix", default="pairs", help="shard name prefix (default pairs)")
    f.add_argument("--image-column", default=None, help="column holding the image file name")
    f.add_argument("--caption-column", default=None, help="column holding the caption")
    common(f)

    o = csub.add_parser("coco", help="COCO captions JSON + image folder -> pairs or eval records")
    o.add_argument("captions_json", help="e.g. annotations/captions_train2017.json")
    o.add_argument("images", help="image folder, e.g. train2017/")
    o.add_argument("out", help="output folder")
    o.add_argument("--records", choices=("pairs", "caption", "retrieval"), default="pairs",
                   help="pairs: one pair per caption (training); caption/retrieval: one record per image")
    common(o)

    v = csub.add_parser("vqav2", help="VQAv2 questions (+ annotations) JSON + image folder -> VQA records")
    v.add_argument("questions_json", help="e.g. v2_OpenEnded_mscoco_val2014_questions.json")
    v.add_argument("images", help="image folder; the last number in a file name is its image id")
    v.add_argument("out", help="output folder")
    v.add_argument("--annotations", default=None, help="e.g. v2_mscoco_val2014_annotations.json (answers)")
    common(v)

    m = csub.add_parser("mmc4", help="MMC4-style JSONL + local images -> interleaved pages")
    m.add_argument("jsonl", help="one document per line: text_list, image_info[image_name, matched_text_index]")
    m.add_argument("images", help="folder holding the documents' image_name files")
    m.add_argument("out", help="output folder")
    common(m)

    d = csub.add_parser("video", help="folder of video files + CSV/JSONL captions -> video-text pairs",
                        description="Rows name a video file (column video/video_id/file/filename/path; the "
                                    "extension may be left out) and a caption (caption/text/title); each video is "
                                    "decoded at --fps frames per second (the Flamingo paper: 1), at most "
                                    "--max-frames frames spread over the clip. Videos that cannot be decoded are "
                                    "skipped and counted.")
    d.add_argument("videos", help="video folder (mp4, webm, avi, mkv, mov, ...)")
    d.add_argument("captions", help="CSV with a header, or JSONL")
    d.add_argument("out", help="output folder")
    d.add_argument("--fps", type=float, default=1.0, help="frames decoded per second of video (default 1)")
    d.add_argument("--max-frames", type=int, default=None,
                   help="at most this many frames per video, spread evenly over the clip (default: all)")
    d.add_argument("--prefix", default="videos", help="shard name prefix (default videos)")
    d.add_argument("--video-column", default=None, help="column holding the video file name")
    d.add_argument("--caption-column", default=None, help="column holding the caption")
    d.add_argument("--image-format", choices=("jpg", "png", "webp"), default="jpg",
                   help="how frames are stored (default jpg)")
    common(d)

    i = sub.add_parser("inspect", help="count the samples of shards by kind and the skipped ones by reason")
    i.add_argument("shards", nargs="+", help="shard files, folders or globs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A bad argument or input, a full disk (ValueError, OSError): the one line "frozenvl data: error: ...", as for
    # every command (also when this main is called directly).
    return run_command("data", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.command == "synth":
        cfg = WorldConfig(seed=args.seed, image_size=args.image_size, image_format=args.image_format,
                          shard_size=args.shard_size, n_pairs=args.pairs, n_interleaved=args.interleaved,
                          n_video=args.video, n_eval=args.eval, n_episodes=args.episodes, n_way=args.n_way,
                          k_shot=args.k_shot, frames=args.frames, workers=args.workers,
                          splits=tuple(args.splits), page_themes=_page_themes(args.page_themes))
        meta = generate_world(args.out, cfg, progress=not args.quiet)
        print(f"wrote the synthetic world to {args.out} in {meta['seconds']:.1f} s")
        return 0
    if args.command == "inspect":
        return _inspect(args.shards)
    for flag, value in (("--shard-size", args.shard_size), ("--max-size", args.max_size)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1; got {value}")
    kw = {"shard_size": args.shard_size, "max_size": args.max_size, "progress": not args.quiet,
          "overwrite": args.overwrite}
    if args.source == "folder":
        report = conv.convert_folder(args.images, args.captions, args.out, prefix=args.prefix,
                                     image_column=args.image_column, caption_column=args.caption_column, **kw)
    elif args.source == "coco":
        report = conv.convert_coco(args.captions_json, args.images, args.out, records=args.records, **kw)
    elif args.source == "vqav2":
        report = conv.convert_vqav2(args.questions_json, args.images, args.out,
                                    annotations_json=args.annotations, **kw)
    elif args.source == "video":
        report = conv.convert_videos(args.videos, args.captions, args.out, fps=args.fps,
                                     max_frames=args.max_frames, prefix=args.prefix,
                                     video_column=args.video_column, caption_column=args.caption_column,
                                     image_format=args.image_format, **kw)
    else:
        report = conv.convert_mmc4(args.jsonl, args.images, args.out, **kw)
    print(report.summary())
    return 0


def _page_themes(pairs: list[str] | None) -> dict[str, float]:
    """``["words=3"]`` -> ``{"words": 3.0}``; WorldConfig checks the names and weights, the rest keep 1."""
    themes = {}
    for pair in pairs or []:
        name, _, weight = pair.partition("=")
        try:
            themes[name] = float(weight)  # "words" (no "=") fails here too: float("")
        except ValueError:
            raise ValueError(f"--page-themes: {pair!r} is not THEME=WEIGHT, e.g. words=3") from None
    return themes


def _inspect(specs: list[str]) -> int:
    from frozenvl.data.formats import decode_sample
    from frozenvl.data.shards import expand_shards, read_shard
    from frozenvl.data.skips import BadSample, SkipCounter

    skips, kinds = SkipCounter(), Counter()
    shards = expand_shards(specs)
    for path in shards:
        for raw in read_shard(path, skips):
            try:
                kinds[decode_sample(raw)["kind"]] += 1
            except BadSample as e:
                skips.add(e.reason, e.detail)
    print(json.dumps({"shards": len(shards), "samples": dict(kinds), "skipped": skips.as_dict()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
