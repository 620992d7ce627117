"""Cache lifecycle: selecting rows returns a new cache and leaves its input as it was; a call returns the
cross-attention keys/values it computed instead of leaving them anywhere."""

import copy

import pytest
import torch

from frozenvl.flamingo import FlamingoCache, build
from frozenvl.flamingo.cache import select_lm_cache
from frozenvl.flamingo.fusion import FusedDecoderLayer
from frozenvl.testing import TINY_FLAMINGO, images, open_all_gates, tiny_flamingo, tiny_tokenizer, tiny_vision

PROMPTS = ["<image>a cat sat on the mat", "<image>the dog"]


def _flamingo(family: str):
    """A tiny Flamingo; ``mistral`` has a sliding window on every layer, ``gemma2`` alternates sliding and full
    attention, so their transformers caches hold DynamicSlidingWindowLayer objects."""
    import transformers as tf

    if family not in ("mistral", "gemma2"):
        return tiny_flamingo(family, open_gates=True)
    torch.manual_seed(0)
    common = dict(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=512, sliding_window=5,
                  bos_token_id=0, eos_token_id=1)
    lm = (tf.MistralForCausalLM(tf.MistralConfig(**common)) if family == "mistral"
          else tf.Gemma2ForCausalLM(tf.Gemma2Config(pad_token_id=None, **common))).eval()
    model, proc = build(lm=lm, tokenizer=tiny_tokenizer(), vision=tiny_vision(), **TINY_FLAMINGO)
    open_all_gates(model, 0.5)  # the images matter
    return model, proc


def _lm_tensors(cache):
    return [(layer.keys, layer.values) for layer in cache.past_key_values.layers]


@pytest.mark.parametrize("family", ["llama", "gpt2", "mistral", "gemma2"])
def test_select_returns_a_new_cache_and_leaves_its_input_as_it_was(family):
    model, proc = _flamingo(family)
    batch = proc(PROMPTS, [images(1), images(1, seed=1)], padding_side="left")
    with torch.no_grad():
        cache = model(**batch, use_cache=True).cache
    untouched = copy.deepcopy(cache)  # what select and the continuations must leave as it is
    tensors = _lm_tensors(cache)
    step = torch.tensor([[5], [6], [7]])

    def continued(c):
        with torch.no_grad():
            return model(step[: c.attention_mask.shape[0]], cache=c, use_cache=True).logits

    index = torch.tensor([1, 0, 1])
    selected = cache.select(index)
    lm_cache = copy.deepcopy(cache.past_key_values)  # the old way: copy, then reorder the copy in place
    lm_cache.reorder_cache(index)
    reference = FlamingoCache(lm_cache, cache.media[index], cache.media_docs[index], cache.attention_mask[index],
                              cache.last_time[index], cache.last_doc[index],
                              {i: (k[index], v[index]) for i, (k, v) in cache.xattn_kv.items()})
    assert torch.equal(continued(selected), continued(reference))
    again = cache.select(torch.tensor([0, 0]), same_media=False)
    assert torch.equal(continued(again), continued(untouched.select(torch.tensor([0, 0]))))
    # Neither selecting nor continuing the selections touched the cache selected from.
    assert all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(_lm_tensors(cache), tensors))
    for (k, v), (k0, v0) in zip(_lm_tensors(cache), _lm_tensors(untouched)):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    assert torch.equal(continued(cache), continued(untouched))


def test_select_of_a_cache_that_writes_into_its_tensors_copies_it_first():
    """A static cache updates its tensors in place: selecting from it deep-copies it, so the input stays."""
    import transformers as tf

    config = tf.LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    static = tf.StaticCache(config=config, max_cache_len=6)
    for i in range(2):
        static.update(torch.randn(2, 1, 3, 8), torch.randn(2, 1, 3, 8), i,
                      {"cache_position": torch.arange(3)})
    before = [(layer.keys.clone(), layer.values.clone()) for layer in static.layers]
    selected = select_lm_cache(static, torch.tensor([1, 1]))
    for i, layer in enumerate(selected.layers):
        assert torch.equal(layer.keys, before[i][0][[1, 1]]) and torch.equal(layer.values, before[i][1][[1, 1]])
        selected.update(torch.ones(2, 1, 1, 8), torch.ones(2, 1, 1, 8), i, {"cache_position": torch.tensor([3])})
    for layer, (k, v) in zip(static.layers, before):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)


def test_a_call_returns_its_cross_attention_keys_values_and_leaves_nothing_behind():
    from frozenvl.flamingo import fusion

    model, proc = tiny_flamingo(open_gates=True)
    batch = proc(["<image>a cat<|endofchunk|><image>a"], [images(2)])
    ids, pixels = batch["input_ids"], batch["pixel_values"]
    cut = int((ids[0] == model.image_token_id).nonzero()[1])  # the prefix holds the first image
    layers = model.decoder_layers
    assert sorted(i for i, layer in enumerate(layers) if isinstance(layer, FusedDecoderLayer)) == model.fused_indices
    state = [set(vars(layer)) for layer in layers]
    with torch.no_grad():
        prefix = model(ids[:, :cut], pixel_values=pixels[:, :1], use_cache=True).cache
        kept = dict(prefix.xattn_kv)
        full = model(ids[:, cut:], pixel_values=pixels[:, 1:], cache=prefix, use_cache=True).cache
        assert sorted(prefix.xattn_kv) == sorted(full.xattn_kv) == model.fused_indices
        for i in model.fused_indices:
            attn = layers[i].xattn.attn
            assert torch.equal(prefix.xattn_kv[i][0], attn.project_media(prefix.media)[0])
            k, v = attn.project_media(full.media)  # both images, projected at once
            assert torch.allclose(full.xattn_kv[i][0], k, atol=1e-6) and torch.allclose(full.xattn_kv[i][1], v,
                                                                                       atol=1e-6)
    # The prefix's keys/values were appended to, not changed; nothing stays on the layers or in the context.
    assert prefix.xattn_kv.keys() == kept.keys() and all(prefix.xattn_kv[i] is kept[i] for i in kept)
    assert fusion._ACTIVE.get() is None
    assert [set(vars(layer)) for layer in layers] == state
