"""FLAME text-side benchmark on the embedded SmolLM2-135M, CPU.

1. Facet embeddings per second (best of several alternating rounds) and peak extra memory (RSS above the
   idle level, sampled every 2 ms) for captions of 32 / 128 / 256 tokens and K = 7 / 11 prompts: FDA single
   pass and shared-prefix KV cache vs K separate passes (one batched pass per prompt).
2. Store read throughput: the memory-mapped sharded store vs one .npy file per sample.
3. ``--vs-official``: captions/s against a faithful reimplementation of the official FLAME recipe
   (``MultiPromptEOLEmbeddingsLLM.forward`` of MIV-XJTU/FLAME: the whole filled-in template tokenised as one
   string, left padding with id 0, a (B, L, L) mask built as its code does and expanded over the heads, the
   segments found in row 0, the default positions), on a batch of captions of mixed lengths (K = 7, the long
   set): frozenvl's FDA (one padded row per caption) and packed FDA (several captions per row, no padding
   between them). Only this section runs then; its headline is packed FDA over the official recipe.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/flame_text.py [--vs-official]``. The last line is the
headline figure.
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

from frozenvl.flame.facet_mask import pack_facets_dense
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


OFFICIAL_LONG_TEMPLATE = (  # the official embedding script's long template ('_' is a space, *sent_0* the caption)
    'Detailed_Image_description_:_"*sent_0*"_._After_thinking_step_by_step_,_<s>_this_image_description_means_in_'
    'just_one_word:"_the_category_of_the_main_object_in_this_image_means_in_just_one_word:"_the_prominent_'
    'characteristic_or_pattern_of_the_main_object_in_this_image_means_in_just_one_word:"_the_category_of_the_'
    'minor_object_in_this_image_means_in_just_one_word:"_the_prominent_characteristic_or_pattern_of_the_minor_'
    'object_in_this_image_means_in_just_one_word:"_the_primary_action_or_event_taking_place_in_this_image_means_'
    'in_just_one_word:"_the_overall_atmosphere_or_emotion_of_this_image_means_in_just_one_word:"')
OFFICIAL_SEP_PROBE = 'After thinking step by step , this image description means in just one word:"'


@torch.no_grad()
def official_recipe(model, tokenizer, captions: list[str], layer: int, template_num: int = 7) -> torch.Tensor:
    """(B, K, D): the official FLAME embedding code, step by step, on a transformers base model."""
    template = OFFICIAL_LONG_TEMPLATE.replace("_", " ")
    texts = []
    for s in captions:  # its caption cleanup
        if len(s) > 0 and s[-1] not in ".?\"'":
            s += "."
        s = s.replace('"', "'")
        if len(s) > 0 and s[-1] == "?":
            s = s[:-1] + "."
        texts.append(template.replace("*sent 0*", s).strip())
    tokenizer.pad_token_id, tokenizer.padding_side = 0, "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, max_length=1536, truncation=True)
    input_ids = batch.input_ids
    dtype = model.get_input_embeddings().weight.dtype
    batch_size, seq_length = input_ids.shape
    mask = batch.attention_mask.clone().to(dtype).unsqueeze(-1) * torch.tril(
        torch.ones((batch_size, seq_length, seq_length), dtype=dtype))
    quote_indices = torch.where(input_ids[0] == input_ids[0, -1])[0]
    sep_token_id = tokenizer(OFFICIAL_SEP_PROBE).input_ids[-10]
    sep_indices = torch.where(input_ids[0] == sep_token_id)[0]
    last_n_quotes = quote_indices[-template_num:]
    first_sep_index = sep_indices[-1]
    for i in range(template_num):
        if i == 0:
            mask[:, first_sep_index + 1:last_n_quotes[i] + 1, last_n_quotes[i] + 1:] = 0
        else:
            mask[:, last_n_quotes[i - 1] + 1:last_n_quotes[i] + 1, last_n_quotes[i] + 1:] = 0
            mask[:, last_n_quotes[i - 1] + 1:last_n_quotes[i] + 1, first_sep_index + 1:last_n_quotes[i - 1] + 1] = 0
    heads = model.config.num_attention_heads
    mask = mask.unsqueeze(1).expand(batch_size, heads, seq_length, seq_length)
    mask = mask.masked_fill(mask == 0, torch.finfo(dtype).min)
    mask = mask.masked_fill(mask == 1, 0)
    hidden = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
    return hidden[:, last_n_quotes]  # (B, K, D)


def bench_official(base: FacetTextEncoder, batch: int, rounds: int, lengths: tuple[int, int],
                   pack_tokens: int | None = None) -> float:
    """Captions/s of the official recipe, FDA and packed FDA on one batch of mixed lengths; returns the headline
    ratio (packed over official)."""
    rng = random.Random(0)
    captions = [caption_of_length(base.tokenizer, rng.randint(*lengths), seed) for seed in range(batch)]
    fda = FacetTextEncoder(base.model, base.tokenizer, "long", pack_tokens=pack_tokens)
    runs = {
        "official": lambda: official_recipe(base.base, base.tokenizer, captions, fda.layer),
        "fda": lambda: fda.encode(captions, mode="fda"),
        "packed": lambda: fda.encode(captions, mode="packed"),
    }
    n_tokens = [len(fda.tokenize(c).prefix) + sum(map(len, fda._segments)) for c in captions]
    packed = pack_facets_dense([fda.tokenize(c).prefix for c in captions], fda._segments, 0, torch.float32,
                               pack_tokens)
    print(f"batch {batch} captions of {lengths[0]}..{lengths[1]} tokens (K=7 rows of {min(n_tokens)}.."
          f"{max(n_tokens)} tokens): padded batch {batch * max(n_tokens)} token slots, packed "
          f"{packed.input_ids.numel()} in {packed.input_ids.shape[0]} rows, real {sum(n_tokens)}")
    warm = captions[:2]
    official_recipe(base.base, base.tokenizer, warm, fda.layer), fda.encode(warm, mode="fda")  # warm-up
    fda.encode(warm, mode="packed")
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):  # the methods alternate within each round; the best round counts
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    rates = {name: batch / seconds for name, seconds in best.items()}
    for name, rate in rates.items():
        print(f"{name:>9}: {rate:7.2f} captions/s ({rate / rates['official']:.2f}x the official recipe)", flush=True)
    return rates["packed"] / rates["official"]


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
    parser.add_argument("--vs-official", action="store_true",
                        help="only the comparison with the official recipe (batch --official-batch, mixed lengths)")
    parser.add_argument("--official-batch", type=int, default=16)
    parser.add_argument("--pack-tokens", type=int, default=None,
                        help="packed FDA: tokens per row (default: the longest caption's row)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the LM's dtype, the same for every method")
    parser.add_argument("--official-lengths", type=int, nargs=2, default=[16, 256],
                        help="caption lengths in tokens are drawn uniformly in this range")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine multi-threaded kernels stall on "
                             "each other and the ratios turn to noise)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    long = load_prompt_set("long")
    sets = {7: long, 11: PromptSet("long+4", long.prefix, long.prompts + EXTRA_PROMPTS)}
    base = FacetTextEncoder.from_source("embedded:smollm2-135m", long, dtype=getattr(torch, args.dtype))
    print(f"LM embedded:smollm2-135m ({base.num_layers} layers, hidden {base.hidden_size}), layer {base.layer}, "
          f"{args.dtype}, CPU threads {torch.get_num_threads()}, batch {args.batch} captions, "
          f"best of {args.rounds} rounds")
    if args.vs_official:
        ratio = bench_official(base, args.official_batch, args.rounds, tuple(args.official_lengths),
                               args.pack_tokens)
        print(f"headline: packed FDA = {ratio:.2f}x the captions/s of the official FLAME recipe (K=7, batch "
              f"{args.official_batch}, {args.official_lengths[0]}..{args.official_lengths[1]}-token captions, "
              f"{args.dtype}, both in the same dtype)")
        return
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
