"""Generation speed: cached (visual tokens + cross-attention K/V + LM KV cache, computed once) vs recomputing.

Both paths generate the same tokens (checked): 4 images in the prompt, 32 new tokens, greedy decoding, stopping
disabled so every run emits exactly 32 tokens. Measured side by side in one process, on this machine.

    python benchmarks/generation.py            # tiny config and the embedded default (SmolLM2 + EfficientNet)
    python benchmarks/generation.py --tiny-only
"""

from __future__ import annotations

import argparse
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = ("<image>Output: a photo.<|endofchunk|><image>Output: another photo.<|endofchunk|>"
          "<image>Output: a third photo.<|endofchunk|><image>Output:")


def measure(model, batch, new_tokens: int, use_cache: bool, repeats: int) -> tuple[float, torch.Tensor]:
    best = float("inf")
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = model.generate(**batch, max_new_tokens=new_tokens, use_cache=use_cache, stop_token_ids=[])
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(name: str, model, processor, images, batch_size: int, new_tokens: int, repeats: int) -> float:
    batch = processor([PROMPT] * batch_size, [images] * batch_size, padding_side="left")
    model.generate(**batch, max_new_tokens=2, stop_token_ids=[])  # warm-up
    cached_s, cached = measure(model, batch, new_tokens, True, repeats)
    uncached_s, uncached = measure(model, batch, new_tokens, False, repeats)
    assert torch.equal(cached, uncached), "cached and uncached generation disagree"
    n = batch_size * new_tokens
    ratio = uncached_s / cached_s
    print(f"{name:<34} batch {batch_size}: cached {n / cached_s:8.1f} tok/s | uncached {n / uncached_s:8.1f} tok/s"
          f" | speed-up {ratio:5.1f}x")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-only", action="store_true")
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")

    from frozenvl.testing import images as random_images
    from frozenvl.testing import tiny_flamingo

    model, processor = tiny_flamingo(open_gates=True)
    run("tiny (Llama 4 layers, 32 hidden)", model, processor, random_images(4), 4, args.new_tokens, 3)
    if args.tiny_only:
        return
    import skimage.data

    import frozenvl

    model, processor = frozenvl.flamingo.build()  # embedded:smollm2-135m + embedded:efficientnet-lite0, defaults
    model.eval()
    photos = [getattr(skimage.data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket")]
    ratio = run("embedded default (SmolLM2+EffNet)", model, processor, photos, 1, args.new_tokens, 1)
    print(f"headline: cached vs uncached generation, embedded default, 4 images, {args.new_tokens} tokens "
          f"= {ratio:.1f}x")


if __name__ == "__main__":
    main()
