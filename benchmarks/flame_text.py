"""FLAME text-side benchmark on the embedded SmolLM2-135M, CPU.

1. Facet embeddings per second (best of several alternating rounds) and peak extra memory (RSS above the
   idle level, sampled every 2 ms) for captions of 32 / 128 / 256 tokens and K = 7 / 11 prompts: FDA single
   pass and shared-prefix KV cache vs K separate passes (one batched pass per prompt).
2. Store read throughput: the memory-mapped sharded store vs one .npy file per sample.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/flame_text.py``. The last line is the headline figure.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from frozenvl.flame.prompts import PromptSet, load_prompt_set
from frozenvl.flame.store import EmbeddingStore, EmbeddingStoreWriter
from frozenvl.flame.text_encoder import FacetTextEncoder

EXTRA_PROMPTS = (  # 4 more facets on top of the 7 official long ones, for K = 11
    ' the main colour in this image means in just one word:"',
    ' the setting or place of this image means in just one word:"',
    ' the number of objects in this image means in just one word:"',
    ' the spatial layout of this image means in just one word:"',
)
WORDS = ("a small red cube rests beside two large blue spheres on a wooden table while a green cylinder "
         "leans against the wall under warm evening light and a cat watches from the window").split()


class PeakRSS:
    """Peak resident memory above the level at entry, sampled from /proc in a background thread."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _watch(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def caption_of_length(tokenizer, n_tokens: int, seed: int) -> str:
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(n_tokens * 2)]
    ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][:n_tokens]
    return tokenizer.decode(ids)


def time_encode(encoder: FacetTextEncoder, captions: list[str], mode: str) -> tuple[float, float]:
    """Seconds for one encode call, and the peak extra memory (MiB) during it."""
    with PeakRSS() as mem:
        start = time.perf_counter()
        encoder.encode(captions, mode=mode)
        elapsed = time.perf_counter() - start
    return elapsed, mem.extra_mib


def bench_store(num: int, facets: int, dim: int, folder: Path) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    data = rng.standard_normal((num, facets, dim)).astype(np.float16)
    keys = [f"{i:07d}" for i in range(num)]
    writer = EmbeddingStoreWriter(folder / "store", {"format": "bench", "num_facets": facets, "dim": dim})
    for start in range(0, num, 1024):
        writer.write_shard(keys[start:start + 1024], data[start:start + 1024])
    (folder / "files").mkdir()
    for k, row in zip(keys, data):
        np.save(folder / "files" / f"{k}.npy", row)
    order = random.Random(0).sample(keys, num)
    store = EmbeddingStore(folder / "store")
    batch = 256
    start = time.perf_counter()
    for i in range(0, num, batch):
        store.get_batch(order[i:i + batch])
    store_rate = num / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(0, num, batch):
        np.stack([np.load(folder / "files" / f"{k}.npy").astype(np.float32) for k in order[i:i + batch]])
    files_rate = num / (time.perf_counter() - start)
    return store_rate, files_rate


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # A fixed threshold stops glibc from raising it dynamically: large tensors are then always mmapped and
        # returned to the OS when freed, so the resident size follows live memory and peaks are comparable.
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(256 * 1024)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2, help="captions per call")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per mode; the best one counts")
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 256])
    parser.add_argument("--store-samples", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine multi-threaded kernels stall on "
                             "each other and the ratios turn to noise)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    long = load_prompt_set("long")
    sets = {7: long, 11: PromptSet("long+4", long.prefix, long.prompts + EXTRA_PROMPTS)}
    base = FacetTextEncoder.from_source("embedded:smollm2-135m", long)
    print(f"LM embedded:smollm2-135m ({base.num_layers} layers, hidden {base.hidden_size}), layer {base.layer}, "
          f"fp32, CPU threads {torch.get_num_threads()}, batch {args.batch} captions, best of {args.rounds} rounds")
    print(f"{'tokens':>6} {'K':>3} {'mode':>13} {'emb/s':>9} {'peak MiB':>9} {'speedup':>8}")
    headline = None
    for n_tokens in args.lengths:
        captions = [caption_of_length(base.tokenizer, n_tokens, seed) for seed in range(args.batch)]
        for k, prompt_set in sets.items():
            enc = FacetTextEncoder(base.model, base.tokenizer, prompt_set)
            modes = ("naive", "fda", "prefix_cache")
            best = {m: float("inf") for m in modes}
            peak = {m: 0.0 for m in modes}
            for m in modes:
                enc.encode(captions[:1], mode=m)  # warm-up
            # Modes alternate within each round and the best round counts: the machine is shared.
            for _ in range(args.rounds):
                for m in modes:
                    seconds, mib = time_encode(enc, captions, m)
                    best[m], peak[m] = min(best[m], seconds), max(peak[m], mib)
            rates = {m: len(captions) * k / best[m] for m in modes}
            for m in modes:
                print(f"{n_tokens:>6} {k:>3} {m:>13} {rates[m]:>9.1f} {peak[m]:>9.1f} "
                      f"{rates[m] / rates['naive']:>7.2f}x", flush=True)
            if n_tokens == 128 and k == 7:
                headline = rates["fda"] / rates["naive"]
    with tempfile.TemporaryDirectory() as tmp:
        store_rate, files_rate = bench_store(args.store_samples, 11, base.hidden_size, Path(tmp))
    print(f"store read (K=11, D={base.hidden_size}, fp16, random order, batches of 256): "
          f"sharded memmap {store_rate:.0f} samples/s vs one file per sample {files_rate:.0f} samples/s "
          f"({store_rate / files_rate:.1f}x)")
    if headline is not None:
        print(f"headline: FDA vs separate passes (K=7, 128 tokens) = {headline:.2f}x")


if __name__ == "__main__":
    main()
