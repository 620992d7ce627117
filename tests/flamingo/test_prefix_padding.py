"""A demonstrations' prefix cache continued by a batch of left-padded queries of different lengths.

Each row must give what its full prompt (prefix + query) gives alone, for every position scheme: rotary (Llama, the
control), ALiBi (MPT: the bias grows with the key's index, so padding between prefix and query would add to the
distance) and sliding windows shorter than the prompt (Mistral on every layer, Gemma 2 on every other layer: a
window over cache slots would hold padding instead of prefix tokens). Greedy tokens, the first step's logits
(generate's ``output_scores``) and the few-shot scorer's batched generation are compared with the full prompts run
one at a time. Jamba's Mamba layers carry recurrent states, which have no token axis to pad.
"""

import pytest
import torch

from frozenvl.eval.scoring import FewShotScorer
from frozenvl.flamingo import build
from frozenvl.flamingo.generation import generate
from frozenvl.testing import TINY_FLAMINGO, images, open_all_gates, tiny_lm, tiny_tokenizer, tiny_vision

FAMILIES = ["llama", "mpt", "mistral", "gemma2", "jamba"]
PREFIX = "<image>a cat on a mat.<|endofchunk|><image>two dogs.<|endofchunk|>"
QUERIES = ["<image>a", "<image>the big red bus and", "<image>some"]  # 1, 19 and 4 text tokens


def _lm(family: str):
    import transformers as tf

    torch.manual_seed(0)
    if family == "llama":
        return tiny_lm("llama")
    if family == "mpt":  # ALiBi, no position embeddings (as OpenFlamingo-3B/9B's MPT)
        return tf.MptForCausalLM(tf.MptConfig(d_model=32, n_heads=4, n_layers=4, expansion_ratio=2, max_seq_len=256,
                                              vocab_size=258, bos_token_id=0, eos_token_id=1)).eval()
    common = dict(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=512, sliding_window=6,
                  bos_token_id=0, eos_token_id=1)  # the window (6) is far shorter than the prompts (> 30)
    if family == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**common)).eval()
    if family == "jamba":  # Mamba and attention layers: the cache mixes recurrent states and keys/values
        return tf.JambaForCausalLM(tf.JambaConfig(**{**common, "sliding_window": None}, attn_layer_period=2,
                                                  attn_layer_offset=1, num_experts=1)).eval()
    return tf.Gemma2ForCausalLM(tf.Gemma2Config(pad_token_id=None, **common)).eval()


def _flamingo(family: str):
    model, proc = build(lm=_lm(family), tokenizer=tiny_tokenizer(), vision=tiny_vision(), **TINY_FLAMINGO)
    open_all_gates(model)  # the images matter
    return model.eval(), proc


def _media():
    return images(2, seed=5), [images(1, seed=10 + i) for i in range(len(QUERIES))]


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_cached_batch_of_padded_queries_equals_each_full_prompt_alone(family):
    model, proc = _flamingo(family)
    prefix_media, query_media = _media()
    prefix = proc([PREFIX], [prefix_media])
    queries = proc(QUERIES, query_media, padding_side="left")
    assert len({int(n) for n in queries["attention_mask"].sum(1)}) == len(QUERIES)  # three lengths: padding
    with torch.no_grad():
        cache = model(**prefix, use_cache=True).cache
    rows = torch.zeros(len(QUERIES), dtype=torch.long)
    out = generate(model, queries["input_ids"], queries["attention_mask"], queries["pixel_values"],
                   cache=cache.select(rows), max_new_tokens=4, output_scores=True, return_dict_in_generate=True)
    L = queries["input_ids"].shape[1]
    for i, query in enumerate(QUERIES):
        full = proc([PREFIX + query], [prefix_media + query_media[i]])
        alone = generate(model, full["input_ids"], full["attention_mask"], full["pixel_values"], max_new_tokens=4,
                         output_scores=True, return_dict_in_generate=True)
        assert out.sequences[i, L:].tolist() == alone.sequences[0, full["input_ids"].shape[1]:].tolist(), query
        first, first_alone = out.scores[0][i], alone.scores[0][0]  # (V,) the first step, -inf where banned
        assert torch.equal(first.isinf(), first_alone.isinf())
        finite = first.isfinite()
        assert (first[finite] - first_alone[finite]).abs().max().item() <= 1e-5, query


@pytest.mark.parametrize("family", FAMILIES[1:])
def test_few_shot_scorer_generation_with_a_prefix_equals_the_full_prompts(family):
    """The evaluation's path (FewShotScorer.generate_ids, beam search): queries batched on a shared prefix."""
    model, proc = _flamingo(family)
    prefix_media, query_media = _media()
    scorer = FewShotScorer(model, proc)
    prefix = scorer.encode_prefix(PREFIX, prefix_media)
    cached = scorer.generate_ids(prefix, QUERIES, query_media, max_new_tokens=3, num_beams=2)
    reference = [scorer.generate_ids_uncached(PREFIX, prefix_media, [q], [m], max_new_tokens=3, num_beams=2)[0]
                 for q, m in zip(QUERIES, query_media)]
    assert cached == reference
