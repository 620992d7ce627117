"""transformers' conventions: the processor's call (``text=``, ``images=``, ``videos=``, ``padding``,
``truncation``) returning a ``BatchFeature``, ``decode`` / ``batch_decode``, and ``FlamingoOutput`` as a
``ModelOutput`` (key and index access, ``output_hidden_states``, ``return_dict=False``)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import BatchFeature
from transformers.utils import ModelOutput

from frozenvl.testing import TINY_FLAMINGO as TINY
from frozenvl.testing import images, tiny_flamingo, tiny_lm, tiny_tokenizer, tiny_vision

TEXT = "a dog<image>a cat sat<|endofchunk|> then<image>on the mat<|endofchunk|>"


@pytest.fixture(scope="module")
def tiny():
    return tiny_flamingo(max_images=3)


# ------------------------------------------------------------------------------------------------------ outputs
def test_output_is_a_model_output(tiny):
    model, processor = tiny
    batch = processor([TEXT], [images(2)])
    out = model(**batch, labels=batch["input_ids"], use_cache=True)
    assert isinstance(out, ModelOutput)
    assert out["logits"] is out.logits and out["loss"] is out.loss and out["cache"] is out.cache
    # As in transformers: the fields that are set, loss first.
    assert out[0] is out.loss and out[1] is out.logits and out[2] is out.cache
    assert list(out.keys()) == ["loss", "logits", "cache"]
    plain = model(**batch)
    assert plain[0] is plain.logits and plain.to_tuple() == (plain.logits,)
    assert plain.loss is None and plain.cache is None and plain.hidden_states is None


def test_return_dict_false_gives_the_tuple(tiny):
    model, processor = tiny
    batch = processor([TEXT], [images(2)])
    out = model(**batch, labels=batch["input_ids"])
    loss, logits = model(**batch, labels=batch["input_ids"], return_dict=False)
    assert type(model(**batch, return_dict=False)) is tuple
    assert torch.equal(loss, out.loss) and torch.equal(logits, out.logits)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hidden_states_of_a_fresh_flamingo_are_its_lms(family):
    from frozenvl.flamingo import build

    lm = tiny_lm(family, seed=1)
    reference = copy.deepcopy(lm)  # the frozen LM before any wrapping
    model, processor = build(lm=lm, tokenizer=tiny_tokenizer(), vision=tiny_vision(), **TINY)
    batch = processor([TEXT, "a cat<image>on a mat"], [images(2), images(1)], padding_side="left")
    out = model(**batch, output_hidden_states=True)
    embeds = model.lm.get_input_embeddings()(batch["input_ids"])  # new tokens have no row in the reference
    ref = reference(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                    position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0),
                    output_hidden_states=True).hidden_states
    assert isinstance(out.hidden_states, tuple) and len(out.hidden_states) == reference.config.num_hidden_layers + 1
    real = batch["attention_mask"].bool()
    for ours, theirs in zip(out.hidden_states, ref):
        assert ours.shape == theirs.shape
        assert (ours[real] - theirs[real]).abs().max().item() <= 1e-5
    # With the gates open the images move them: they are the states of the conditioned LM.
    opened = tiny_flamingo(family, open_gates=True)[0]
    seen = opened(**batch, output_hidden_states=True).hidden_states[-1]
    blank = opened(**{**batch, "pixel_values": batch["pixel_values"] * 0}, output_hidden_states=True)
    assert (seen[real] - blank.hidden_states[-1][real]).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------------- processor
def test_keyword_call_returns_a_batch_feature_equal_to_the_positional_call(tiny):
    model, processor = tiny
    texts, media = ["<image>a cat<|endofchunk|>", "<image>b<image>c"], [images(1), images(2, seed=1)]
    old = processor(texts, media, padding_side="left")
    new = processor(text=texts, images=media, return_tensors="pt", padding=True, padding_side="left")
    assert isinstance(new, BatchFeature) and list(new.keys()) == ["input_ids", "attention_mask", "pixel_values"]
    assert all(torch.equal(old[k], new[k]) for k in new)
    assert all(torch.equal(old[k], v) for k, v in processor(texts=texts, images=media, padding_side="left").items())
    # .to(dtype) casts the pixels only, .to(device) moves everything; model(**batch) takes it as it is.
    half = new.to(torch.float64)
    assert half["pixel_values"].dtype == torch.float64 and half["input_ids"].dtype == torch.long
    assert new.to("cpu")["input_ids"].device.type == "cpu"
    assert torch.equal(model(**new).logits, model(**dict(old)).logits)
    with pytest.raises(TypeError, match="text= or texts="):
        processor(text=texts, texts=texts)
    with pytest.raises(ValueError, match="PyTorch tensors"):
        processor(text=texts, images=media, return_tensors="np")


def test_a_single_text_takes_one_image_or_a_flat_list(tiny):
    _, processor = tiny
    a, b = images(2)
    nested = processor(["<image>x<image>y"], [[a, b]])["pixel_values"]
    assert torch.equal(processor(text="<image>x<image>y", images=[a, b])["pixel_values"], nested)
    assert torch.equal(processor(text="<image>x<image>y", images=[[a, b]])["pixel_values"], nested)  # as before
    assert torch.equal(processor(text="<image>x", images=a)["pixel_values"], nested[:, :1])
    # A batch of texts with one image each may list the images directly.
    one_each = processor(text=["<image>x", "<image>y"], images=[a, b])["pixel_values"]
    assert torch.equal(one_each, processor(["<image>x", "<image>y"], [[a], [b]])["pixel_values"])
    with pytest.raises(ValueError, match="2 texts but images for 3 samples"):
        processor(text=["<image>x", "<image>y"], images=[a, b, a])


def test_videos_as_frame_lists_or_arrays(tiny):
    _, processor = tiny
    frames = [np.full((32, 32, 3), 40 * k, dtype=np.uint8) for k in range(3)]
    expected = processor(["<image>moving"], [[frames]])["pixel_values"]  # a video inside images=, as before
    assert expected.shape == (1, 1, 3, 3, 32, 32)  # (B, T_img, F, C, H, W)
    for videos in (frames, np.stack(frames), [frames], [[frames]]):
        got = processor(text="<image>moving", videos=videos)["pixel_values"]
        assert torch.equal(got, expected)
    batch = processor(text=["<image>a<image>b", "<image>c"], videos=[[frames, frames], np.stack(frames)])
    assert batch["pixel_values"].shape == (2, 2, 3, 3, 32, 32)
    assert torch.equal(batch["pixel_values"][1, 0], expected[0, 0])
    assert not batch["pixel_values"][1, 1].any()  # the second row's missing medium is padding
    with pytest.raises(ValueError, match="sample 0: images= and videos= both"):
        processor(text="<image>a<image>b", images=[images(1)[0]], videos=[frames])
    with pytest.raises(ValueError, match="sample 0 video 0: a video is"):
        processor(text=["<image>a"], videos=[[[]]])  # an empty video


def test_padding_strategies(tiny):
    _, processor = tiny
    texts = ["<image>a", "<image>abcdef"]
    media = [images(1), images(1)]
    longest = processor(text=texts, images=media, padding="longest")
    assert torch.equal(longest["input_ids"], processor(texts, media)["input_ids"])
    full = processor(text=texts, images=media, padding="max_length", max_length=20)
    assert full["input_ids"].shape == (2, 20) and full["attention_mask"].sum(1).tolist() == [2, 7]
    assert torch.equal(full["input_ids"][:, :7], longest["input_ids"])
    assert processor(text=texts, images=media, pad_to_multiple_of=4)["input_ids"].shape == (2, 8)
    left = processor(text=texts, images=media, padding="max_length", max_length=9, padding_side="left")
    assert left["attention_mask"][0].tolist() == [0] * 7 + [1] * 2
    same = processor(text=["<image>ab", "<image>cd"], images=media, padding=False)
    assert same["attention_mask"].all()
    with pytest.raises(ValueError, match="without padding"):
        processor(text=texts, images=media, padding=False)
    with pytest.raises(ValueError, match="padding must be"):
        processor(text=texts, images=media, padding="shortest")


def test_truncation_drops_the_media_of_cut_markers(tiny):
    model, processor = tiny
    first, second = images(2, seed=3)
    text = "<image>a cat<|endofchunk|><image>a dog<|endofchunk|>"  # 7 + 7 tokens
    with pytest.raises(ValueError, match="more than max_length=7 .truncation=True"):
        processor(text=text, images=[first, second], max_length=7)
    cut = processor(text=text, images=[first, second], max_length=7, truncation=True)
    assert cut["input_ids"].shape == (1, 7) and cut["pixel_values"].shape[1] == 1
    assert torch.equal(cut["pixel_values"][0, 0, 0], first)
    assert processor.decode(cut["input_ids"][0]) == "<image>a cat<|endofchunk|>"
    model(**cut)  # markers and images agree
    tokenizer = processor.tokenizer
    tokenizer.truncation_side = "left"
    try:
        kept = processor(text=text, images=[first, second], max_length=7, truncation=True)
    finally:
        tokenizer.truncation_side = "right"
    assert processor.decode(kept["input_ids"][0]) == "<image>a dog<|endofchunk|>"
    assert kept["pixel_values"].shape[1] == 1 and torch.equal(kept["pixel_values"][0, 0, 0], second)


def test_decode_and_batch_decode_delegate_to_the_tokenizer(tiny):
    _, processor = tiny
    texts = ["<image>a cat<|endofchunk|>", "<image>b"]
    ids = processor(text=texts, images=[images(1), images(1)])["input_ids"]
    assert processor.batch_decode(ids)[0] == texts[0]
    assert processor.batch_decode(ids)[1].startswith(texts[1]) and "<PAD>" in processor.batch_decode(ids)[1]
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["a cat", "b"]
    assert processor.decode(ids[0]) == texts[0] and processor.decode(ids[0].tolist()) == texts[0]
    assert processor.decode(ids[1], skip_special_tokens=True) == "b"
