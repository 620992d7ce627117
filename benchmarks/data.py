"""Data pipeline benchmark, CPU.

1. Synthetic world generation rate (image-text pairs per second), 1 and 2 generator processes.
2. Loader throughput in samples/s: read shards + decode + filter + transform + batch, for image-text pairs
   (Flamingo batches through the real FlamingoProcessor with a byte-level tokenizer, and FLAME batches) and for
   interleaved pages (Flamingo batches), with 1 and 2 DataLoader workers.

Run: ``.venv/bin/python benchmarks/data.py``. The last line is the headline figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from frozenvl.backbones.vision import ImageTransform
from frozenvl.constants import CLIP_MEAN, CLIP_STD, END_OF_CHUNK, IMAGE_TOKEN
from frozenvl.data import LoaderConfig, ShardDataset, StreamingLoader, WorldConfig, generate_world
from frozenvl.flame.baseline import baseline_config
from frozenvl.tasks import ClipBaselineCollator, FlamingoCollator


def flamingo_processor(image_size: int):
    from frozenvl.flamingo.processor import FlamingoProcessor
    from frozenvl.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.add_tokens([IMAGE_TOKEN, END_OF_CHUNK], special_tokens=True)
    return FlamingoProcessor(tok, ImageTransform(image_size, CLIP_MEAN, CLIP_STD), max_images=8, max_length=4096)


def loader_rate(shards: str, collate, workers: int, batch_size: int, max_tokens: int = 512) -> float:
    ds = ShardDataset(shards, LoaderConfig(seed=0, shuffle_buffer=256, max_images=5, max_tokens=max_tokens))
    loader = StreamingLoader(ds, batch_size, collate_fn=collate, num_workers=workers)
    t = time.perf_counter()
    n = 0
    for batch in loader:
        n += len(batch["keys"])
    dt = time.perf_counter() - t
    assert loader.skips.total == 0, loader.skips.report()
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=4000)
    ap.add_argument("--pages", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rates = {}
        for workers in (1, 2):
            cfg = WorldConfig(seed=0, image_size=args.image_size, n_pairs=args.pairs, n_interleaved=args.pages,
                              splits=("pairs",), shard_size=args.pairs // 8, workers=workers)
            t = time.perf_counter()
            generate_world(root / f"gen{workers}", cfg, progress=False, log=None)
            rates[workers] = args.pairs / (time.perf_counter() - t)
            print(f"synth pairs, {workers} process(es): {rates[workers]:8.0f} pairs/s "
                  f"({args.pairs} pairs of {args.image_size}x{args.image_size})")
        world = root / "world"
        generate_world(world, WorldConfig(seed=0, image_size=args.image_size, n_pairs=args.pairs,
                                          n_interleaved=args.pages, splits=("pairs", "interleaved"),
                                          shard_size=max(1, args.pages // 8), workers=2), progress=False, log=None)
        processor = flamingo_processor(args.image_size)
        clip_config = baseline_config("tiny")
        clip_config.vision.image_size = args.image_size
        pairs, pages = str(world / "train/pairs-*.tar"), str(world / "train/interleaved-*.tar")
        results = {}
        for name, shards, collate in [
            ("pairs -> Flamingo batch", pairs, FlamingoCollator(processor)),
            ("pairs -> CLIP-baseline batch", pairs, ClipBaselineCollator(clip_config)),
            ("interleaved pages -> Flamingo batch", pages, FlamingoCollator(processor)),
        ]:
            for workers in (1, 2):
                results[(name, workers)] = loader_rate(shards, collate, workers, args.batch_size)
                print(f"{name:38s} {workers} worker(s): {results[(name, workers)]:8.0f} samples/s")
        for name in ("pairs -> Flamingo batch", "interleaved pages -> Flamingo batch"):
            print(f"{name}: 2 workers / 1 worker = {results[(name, 2)] / results[(name, 1)]:.2f}x")
        print(f"headline: Flamingo pair batches, 2 workers = {results[('pairs -> Flamingo batch', 2)]:.0f} samples/s")


if __name__ == "__main__":
    main()
