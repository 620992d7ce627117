"""image_reliance: zero gain when the images cannot matter (closed gates), a gain when the model relies on them."""

from __future__ import annotations

import pytest
import torch

from frozenvl.eval.reliance import image_reliance
from frozenvl.testing import images, tiny_flamingo


def _batch(processor, n=4):
    texts = [f"<image>item {i} is here<|endofchunk|>" for i in range(n)]
    return processor(texts, [[im] for im in images(n)])


def test_closed_gates_ignore_images_exactly():
    model, processor = tiny_flamingo()  # gates at 0: the frozen LM
    r = image_reliance(model, _batch(processor))
    assert r.right == r.shuffled == r.zero and r.gain == 0.0 and r.samples == 4


def test_a_model_trained_to_read_its_images_gains():
    torch.manual_seed(0)
    model, processor = tiny_flamingo(open_gates=True)
    batch = _batch(processor)
    before = image_reliance(model, batch)
    assert before.shuffled != before.right  # open gates: images change the loss...
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(200):  # ...and fitting text that depends on the image makes the right image worth something
        opt.zero_grad()
        model(batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"],
              labels=batch["input_ids"]).loss.backward()
        opt.step()
    after = image_reliance(model, batch)
    assert model.training  # the mode is restored
    # The random tiny LM's head can barely move its near-uniform logits, so the gain is small in nats, but it is
    # there: 0.016 measured, vs 0.0002 (of the other sign) before training.
    assert after.right < before.right and after.gain > 0.005 > abs(before.gain), (before, after)


def test_precomputed_visual_tokens_give_the_same_losses():
    model, processor = tiny_flamingo(open_gates=True)
    batch = _batch(processor)
    from_pixels = image_reliance(model, batch)
    with torch.no_grad():
        media = model.encode_media(batch["pixel_values"])  # (B, T_img, n, Dv)
    tokens = {k: v for k, v in batch.items() if k != "pixel_values"}
    from_media = image_reliance(model, {**tokens, "media": media})
    assert abs(from_media.right - from_pixels.right) < 1e-5 and abs(from_media.shuffled - from_pixels.shuffled) < 1e-5
    assert from_media.gain != 0.0


def test_needs_two_samples_with_images():
    model, processor = tiny_flamingo()
    with pytest.raises(ValueError, match="at least 2"):
        image_reliance(model, _batch(processor, 1))
