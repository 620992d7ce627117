"""Packed (padding-free) training batches: the oracle is the padded batch of the same samples."""

import pytest
import torch

from frozenvl.flamingo.loss import IGNORE_INDEX, flamingo_labels
from frozenvl.flamingo.packing import lm_packs_sequences, pack_batch
from frozenvl.testing import images, tiny_flamingo, tiny_lm

# Short pairs and a longer page, with text before the page's first image and after an end of chunk: every loss rule
# in play, rows of very different lengths.
TEXTS = ["<image>a red b<|endofchunk|>",
         "x y <image>c d e f<|endofchunk|>g h<image>i j<|endofchunk|>",
         "<image>k<|endofchunk|>"]
MEDIA = [1, 2, 1]


def _batch(processor, side="right"):
    media = images(sum(MEDIA), seed=3)
    per_sample = [media[:1], media[1:3], media[3:]]
    return processor(TEXTS, per_sample, padding_side=side)


def _loss_and_grads(model, batch):
    model.zero_grad()
    out = model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads


# Rotary positions with full attention (llama), rotary with a sliding-window config (qwen2), learned absolute
# positions (gpt2): each must give the padded batch's loss and gradients from the packed row.
@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_a_packed_row_has_the_padded_batchs_loss_and_gradients(family, side):
    model, processor = tiny_flamingo(family, open_gates=True)
    padded = _batch(processor, side)
    packed = pack_batch(padded, processor.image_token_id)
    assert packed["input_ids"].shape == (1, int(padded["attention_mask"].sum()))
    assert "attention_mask" not in packed
    loss_padded, grads_padded = _loss_and_grads(model, padded)
    loss_packed, grads_packed = _loss_and_grads(model, packed)
    assert torch.allclose(loss_packed, loss_padded, atol=1e-5), (loss_packed, loss_padded)
    assert grads_padded.keys() == grads_packed.keys() and grads_padded
    for name, g in grads_padded.items():
        assert torch.allclose(grads_packed[name], g, atol=1e-5, rtol=1e-4), name


def test_a_sample_packed_after_another_gives_its_own_logits():
    model, processor = tiny_flamingo(open_gates=True)
    padded = _batch(processor)
    packed = pack_batch(padded, processor.image_token_id)
    logits = model(**packed).logits[0]  # (N, V)
    start = 0
    for i, n in enumerate(padded["attention_mask"].sum(1).tolist()):
        alone = processor([TEXTS[i]], [images(sum(MEDIA), seed=3)[sum(MEDIA[:i]):sum(MEDIA[:i + 1])]])
        assert torch.allclose(logits[start:start + n], model(**alone).logits[0], atol=1e-5), f"sample {i}"
        start += n


def test_the_packed_row_keeps_each_samples_media_in_order():
    model, processor = tiny_flamingo()
    padded = _batch(processor)
    assert padded["pixel_values"].shape[1] == 2  # padded to the page's two images
    packed = pack_batch(padded, processor.image_token_id)
    media = images(sum(MEDIA), seed=3)
    assert packed["pixel_values"].shape[:2] == (1, 4)
    for j, image in enumerate(media):
        assert torch.equal(packed["pixel_values"][0, j, 0], image)
    assert packed["document_ids"][0].tolist() == sum(([i] * n for i, n in
                                                      enumerate(padded["attention_mask"].sum(1).tolist())), [])
    assert packed["position_ids"][0, :3].tolist() == [0, 1, 2]


def test_loss_rules_apply_per_document():
    IMG, EOC = 90, 91
    # doc 0: <image> a b (cut before its end of chunk) | doc 1: text "7 8" before its image, <image> c <eoc>
    ids = torch.tensor([[IMG, 5, 6, 7, 8, IMG, 9, EOC]])
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    I = IGNORE_INDEX  # noqa: E741
    # Per document, doc 1's "7 8" come before its first image: no targets.
    assert flamingo_labels(ids.clone(), ids, None, IMG, EOC, docs)[0].tolist() == [I, 5, 6, I, I, I, 9, EOC]
    # Read as one document, doc 0's image would make them targets.
    assert flamingo_labels(ids.clone(), ids, None, IMG, EOC)[0].tolist() == [I, 5, 6, 7, 8, I, 9, EOC]


def test_lms_that_keep_packed_sequences_apart_are_told_from_those_that_do_not():
    assert lm_packs_sequences(tiny_lm("llama"))
    assert lm_packs_sequences(tiny_lm("gpt2"))

    class NoPositions(torch.nn.Module):  # a model without a position_ids argument
        def __init__(self):
            super().__init__()
            self.lm = tiny_lm("llama")

        def forward(self, input_ids, use_cache=False):
            return self.lm(input_ids=input_ids, use_cache=use_cache)

    assert not lm_packs_sequences(NoPositions())


def test_a_packed_batch_without_pixels_for_its_images_is_an_error():
    model, processor = tiny_flamingo()
    padded = dict(_batch(processor))
    del padded["pixel_values"]
    with pytest.raises(ValueError, match="no pixel_values"):
        pack_batch(padded, processor.image_token_id)
