"""``frozenvl demo``: the main job on the embedded default (SmolLM2-135M + EfficientNet-Lite0), offline, on CPU.

Today it builds a Flamingo on the embedded backbones and prompts it few-shot with scikit-image's sample photos,
with cached and uncached decoding timed side by side. A freshly built Flamingo's tanh gates are 0, so it
reproduces its frozen LM exactly: the continuation is SmolLM2's, and images start to matter only after training.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

DEMO_PROMPT = ("<image>Output: An astronaut in a white space suit.<|endofchunk|>"
               "<image>Output: A cat lying on a blanket.<|endofchunk|>"
               "<image>Output:")
DEMO_IMAGES = ["astronaut", "chelsea", "coffee"]


def run_demo(out: Path, quick: bool = False) -> dict:
    import skimage.data
    from PIL import Image

    import frozenvl.flamingo as fl

    out.mkdir(parents=True, exist_ok=True)
    print("[1/2] building a Flamingo on embedded:smollm2-135m + embedded:efficientnet-lite0 ...", flush=True)
    t0 = time.perf_counter()
    model, processor = fl.build(lm="embedded:smollm2-135m", vision="embedded:efficientnet-lite0",
                                cross_attn_every=4)
    build_s = time.perf_counter() - t0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    print(f"      built in {build_s:.1f}s: {trainable / 1e6:.1f}M trainable, {frozen / 1e6:.1f}M frozen parameters")

    images = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in DEMO_IMAGES]
    batch = processor([DEMO_PROMPT], [images], padding_side="left")
    max_new = 8 if quick else 20
    print(f"[2/2] 2-shot captioning of skimage '{DEMO_IMAGES[-1]}' (beam search, 3 beams, {max_new} tokens) ...",
          flush=True)
    results = {}
    for use_cache in (True, False):
        t0 = time.perf_counter()
        ids = model.generate(**batch, max_new_tokens=max_new, num_beams=3, use_cache=use_cache)
        results["cached" if use_cache else "uncached"] = {
            "seconds": time.perf_counter() - t0,
            "text": processor.batch_decode_new(ids, batch["input_ids"].shape[1])[0],
        }
    assert results["cached"]["text"] == results["uncached"]["text"], "cached and uncached decoding disagree"
    report = {
        "prompt": DEMO_PROMPT,
        "images": [f"skimage:{n}" for n in DEMO_IMAGES],
        "continuation": results["cached"]["text"],
        "cached_seconds": round(results["cached"]["seconds"], 3),
        "uncached_seconds": round(results["uncached"]["seconds"], 3),
        "trainable_parameters": trainable,
        "frozen_parameters": frozen,
        "note": "untrained gates (tanh(0) = 0): the model equals the frozen SmolLM2 until it is trained",
        "torch_threads": torch.get_num_threads(),
    }
    (out / "generation.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"      continuation: {report['continuation']!r}")
    print(f"      cached {report['cached_seconds']}s vs uncached {report['uncached_seconds']}s; "
          f"wrote {out / 'generation.json'}")
    return report
