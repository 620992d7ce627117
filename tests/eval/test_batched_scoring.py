"""Close-ended scoring with the queries batched on a shared demonstrations prefix.

``FewShotScorer.score_candidates_batch`` encodes several queries of different lengths in one call on the prefix and
scores every (query, candidate) pair in batches; each query's scores must equal that query scored alone, and the
full-forward reference, for rotary positions (Llama), ALiBi (MPT: padding between prefix and query would add to the
key distances) and a sliding window far shorter than the prompt (Mistral: a window over cache slots would hold
padding instead of prefix tokens). The oracle for "alone" is the full prompt + candidate run through the model in
one plain forward per candidate (``score_candidates_uncached``), which no cache or padding touches.
"""

from __future__ import annotations

import pytest
import torch

from frozenvl.eval.scoring import FewShotScorer
from frozenvl.flamingo import build
from frozenvl.testing import TINY_FLAMINGO, images, tiny_lm, tiny_tokenizer, tiny_vision

PREFIX = "<image>a cat on a mat.<|endofchunk|><image>two dogs.<|endofchunk|>"
QUERIES = ["<image>a", "<image>the big red bus and", "<image>some"]  # three lengths: left padding in the batch
CANDIDATES = ["red", "a blue cube", "green star", "x", "yellow diamond", "two small purple crosses"]


def _lm(family: str):
    import transformers as tf

    torch.manual_seed(0)
    if family == "llama":
        return tiny_lm("llama")
    if family == "mpt":  # ALiBi, no position embeddings
        return tf.MptForCausalLM(tf.MptConfig(d_model=32, n_heads=4, n_layers=4, expansion_ratio=2, max_seq_len=256,
                                              vocab_size=258, bos_token_id=0, eos_token_id=1)).eval()
    return tf.MistralForCausalLM(tf.MistralConfig(  # the window (6) is far shorter than the prompts (> 30)
        vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=512, sliding_window=6, bos_token_id=0,
        eos_token_id=1)).eval()


@pytest.fixture(scope="module", params=["llama", "mpt", "mistral"])
def scorer(request) -> FewShotScorer:
    model, proc = build(lm=_lm(request.param), tokenizer=tiny_tokenizer(), vision=tiny_vision(), **TINY_FLAMINGO)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate.alpha"):
                p.fill_(0.7)  # open gates: the images matter
    return FewShotScorer(model.eval(), proc, candidate_batch_size=5)  # 3 x 6 pairs: four forwards


def _media():
    return images(2, seed=5), [[image] for image in images(len(QUERIES), seed=11)]


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    """The largest difference, relative to the score where it is over 1 (a sum of many log-probabilities)."""
    return max(abs(x - y) / max(1.0, abs(y)) for row_a, row_b in zip(a, b, strict=True)
               for x, y in zip(row_a, row_b, strict=True))


@pytest.mark.parametrize("length_normalize", [True, False])
def test_batched_queries_equal_each_query_alone(scorer, length_normalize):
    prefix_media, query_media = _media()
    prefix = scorer.encode_prefix(PREFIX, prefix_media)
    ids = [scorer.tokenizer(q, add_special_tokens=False)["input_ids"] for q in QUERIES]
    assert len({len(i) for i in ids}) == len(QUERIES)  # the batch is padded
    candidates = [CANDIDATES, CANDIDATES[::-1], CANDIDATES[1:4]]  # a list per query, of different sizes
    batched = scorer.score_candidates_batch(prefix, QUERIES, query_media, candidates, length_normalize)
    alone = [scorer.score_candidates(prefix, q, m, c, length_normalize)
             for q, m, c in zip(QUERIES, query_media, candidates)]
    reference = [scorer.score_candidates_uncached(PREFIX, prefix_media, q, m, c, length_normalize)
                 for q, m, c in zip(QUERIES, query_media, candidates)]
    assert [len(row) for row in batched] == [len(c) for c in candidates]
    assert _max_diff(batched, alone) <= 1e-5
    assert _max_diff(batched, reference) <= 1e-5
    # The query's image matters, so the agreement covers the visual path of each row.
    swapped = scorer.score_candidates_batch(prefix, QUERIES, query_media[::-1], candidates, length_normalize)
    assert _max_diff(batched, swapped) > 1e-3


def test_batched_queries_without_demonstrations(scorer):
    """An empty context: the queries' padding is at the start of each whole prompt."""
    _, query_media = _media()
    prefix = scorer.encode_prefix("")
    batched = scorer.score_candidates_batch(prefix, QUERIES, query_media, [CANDIDATES] * len(QUERIES))
    reference = [scorer.score_candidates_uncached("", [], q, m, CANDIDATES) for q, m in zip(QUERIES, query_media)]
    assert _max_diff(batched, reference) <= 1e-5


def test_the_prefix_is_left_as_it_was_and_bad_batches_are_refused(scorer):
    prefix_media, query_media = _media()
    prefix = scorer.encode_prefix(PREFIX, prefix_media)
    first = scorer.score_candidates_batch(prefix, QUERIES, query_media, [CANDIDATES] * 3)
    again = scorer.score_candidates_batch(prefix, QUERIES, query_media, [CANDIDATES] * 3)
    assert first == again
    assert scorer.score_candidates_batch(prefix, [], [], []) == []
    with pytest.raises(ValueError, match="one of each per query"):
        scorer.score_candidates_batch(prefix, QUERIES, query_media, [CANDIDATES])
