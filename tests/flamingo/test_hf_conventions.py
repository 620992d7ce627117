"""transformers' conventions: the processor's call (``text=``, ``images=``, ``videos=``, ``padding``,
``truncation``) returning a ``BatchFeature``, ``decode`` / ``batch_decode``, and ``FlamingoOutput`` as a
``ModelOutput`` (key and index access, ``output_hidden_states``, ``return_dict=False``)."""

from __future__ import annotations

import copy

import pytest
import torch
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
