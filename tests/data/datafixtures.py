"""Helpers shared by the data tests: small images, a fake Flamingo processor, shard builders."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from frozenvl.constants import IMAGE_TOKEN
from frozenvl.data import ShardWriter, interleaved_sample, pair_sample


def solid(rgb: tuple[int, int, int], size: int = 16) -> Image.Image:
    return Image.new("RGB", (size, size), rgb)


def noisy(seed: int, size: int = 16) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def fake_processor(texts, images, padding_side="right"):
    """Follows the Flamingo processor's signature: bytes as token ids, images as (B, T_img, [F,] 3, 8, 8)."""
    assert padding_side in ("left", "right")
    ids = []
    for text, imgs in zip(texts, images):
        assert text.count(IMAGE_TOKEN) == len(imgs), (text, len(imgs))
        ids.append(list(text.encode("utf-8")))
    length = max(len(x) for x in ids)
    input_ids = torch.zeros(len(ids), length, dtype=torch.long)
    attention = torch.zeros(len(ids), length, dtype=torch.long)
    for i, x in enumerate(ids):
        sl = slice(0, len(x)) if padding_side == "right" else slice(length - len(x), length)
        input_ids[i, sl], attention[i, sl] = torch.tensor(x), 1
    t_img = max(len(x) for x in images)
    video = any(isinstance(x[0], list) for x in images)
    frames = max(len(v) for x in images for v in x) if video else 1

    def tensor(img):
        return torch.from_numpy(np.asarray(img.resize((8, 8)), dtype=np.float32).transpose(2, 0, 1) / 255)

    pixels = torch.zeros(len(ids), t_img, frames, 3, 8, 8)  # (B, T_img, F, 3, 8, 8)
    for i, imgs in enumerate(images):
        for j, img in enumerate(imgs):
            for f, frame in enumerate(img if isinstance(img, list) else [img]):
                pixels[i, j, f] = tensor(frame)
    return {"input_ids": input_ids, "attention_mask": attention,
            "pixel_values": pixels if video else pixels[:, :, 0]}


def write_pairs(out_dir, n: int, per_shard: int, prefix: str = "pairs") -> list[str]:
    with ShardWriter(out_dir, prefix, max_samples=per_shard) as w:
        for i in range(n):
            w.write(pair_sample(f"p{i:05d}", solid((i % 256, 0, 0), 8), f"caption number {i}"))
    return [str(p) for p in w.shards]


def write_pages(out_dir, n: int, per_shard: int, n_images: int = 3) -> list[str]:
    with ShardWriter(out_dir, "pages", max_samples=per_shard) as w:
        for i in range(n):
            texts, imgs = ["intro text"], [None]
            for j in range(n_images):
                texts += [None, f"text {j} of page {i}"]
                imgs += [solid((j * 40, i % 256, 0), 8), None]
            w.write(interleaved_sample(f"page{i:05d}", texts, imgs))
    return [str(p) for p in w.shards]


def interrupted_run(make_loader, batches: int):
    """Take ``batches`` batches from a fresh loader, save its state there, and continue a second fresh loader from
    that state: (the keys read before the stop, the keys read after, the resumed loader, the saved state)."""
    loader = make_loader()
    head = []
    for i, batch in enumerate(loader):
        head += [s["key"] for s in batch]
        if i == batches - 1:
            state = loader.state_dict()
            break
    resumed = make_loader()
    resumed.load_state_dict(state)
    return head, [s["key"] for batch in resumed for s in batch], resumed, state
