"""Close-ended candidates packed as a tree: each query's candidates in one row, a prefix they share read once.

For an LM that takes ``position_ids`` and full attention (Llama: rotary positions; GPT-2: learned absolute ones),
``FewShotScorer.score_candidates_batch`` merges a query's candidates into a trie and reads it in one row with a 4D
mask (a node sees the query's cache and its ancestors). Each score must equal the plain reference, one full forward
of demonstrations + query + candidate per candidate (``score_candidates_uncached``), which no cache, padding or tree
touches. ALiBi (MPT) and sliding windows (Mistral) keep one row per candidate (tests/eval/test_batched_scoring.py).
"""

from __future__ import annotations

import pytest
import torch

from frozenvl.eval.scoring import FewShotScorer
from frozenvl.testing import images, tiny_flamingo

PREFIX = "<image>a cat on a mat.<|endofchunk|><image>two dogs.<|endofchunk|>"
QUERIES = ["<image>a", "<image>the big red bus and", "<image>some"]  # three lengths: left padding in the batch
# Shared prefixes (a trie with branches at several depths), a one-token candidate, a duplicate, different lengths.
CANDIDATES = ["a blue cube", "a blue star", "a red", "a blue cube", "x", "two small purple crosses", "two small"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def scorer(request) -> FewShotScorer:
    model, processor = tiny_flamingo(request.param, seed=3, open_gates=True)
    return FewShotScorer(model, processor, candidate_batch_size=4)  # 7 candidates: groups of 4 and 3 per query


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    """The largest difference, relative to the score where it is over 1 (a sum of many log-probabilities)."""
    return max(abs(x - y) / max(1.0, abs(y)) for row_a, row_b in zip(a, b, strict=True)
               for x, y in zip(row_a, row_b, strict=True))


@pytest.mark.parametrize("length_normalize", [True, False])
def test_candidates_as_trees_equal_one_full_forward_per_candidate(scorer, monkeypatch, length_normalize):
    prefix_media, query_images = images(2, seed=5), images(len(QUERIES), seed=11)
    query_media = [[image] for image in query_images]
    prefix = scorer.encode_prefix(PREFIX, prefix_media)
    candidates = [CANDIDATES, CANDIDATES[::-1], CANDIDATES[2:3]]  # 4 + 3, 4 + 3 and 1 candidates: 5 groups
    forward, calls = scorer.model.forward, []

    def spy(input_ids, attention_mask=None, *args, **kwargs):
        calls.append((tuple(input_ids.shape), attention_mask is not None and attention_mask.dim() == 4))
        return forward(input_ids, attention_mask, *args, **kwargs)

    monkeypatch.setattr(scorer.model, "forward", spy)
    batched = scorer.score_candidates_batch(prefix, QUERIES, query_media, candidates, length_normalize)
    monkeypatch.undo()
    trees = [shape for shape, tree in calls if tree]
    # The trees ran, one row per group, at most 4 candidates per forward: 4 | 3 | 4 | 3 + 1.
    assert [rows for rows, _ in trees] == [1, 1, 1, 2]
    # A shared prefix is read once: "a blue cube" / "a blue star" / "a red" share their first tokens.
    ids = [scorer._candidate_ids(c) for c in CANDIDATES[:4]]
    assert trees[0][1] < sum(len(i) - 1 for i in ids)
    reference = [scorer.score_candidates_uncached(PREFIX, prefix_media, q, m, c, length_normalize)
                 for q, m, c in zip(QUERIES, query_media, candidates)]
    assert [len(row) for row in batched] == [len(c) for c in candidates]
    assert _max_diff(batched, reference) <= 1e-5
    assert batched[0][0] == batched[0][3]  # the duplicate
    # The query's image matters, so the agreement covers the visual path of each row.
    swapped = scorer.score_candidates_batch(prefix, QUERIES, query_media[::-1], candidates, length_normalize)
    assert _max_diff(batched, swapped) > 1e-3


def test_trees_without_demonstrations_and_one_token_candidates(scorer):
    """An empty context (the queries' cache is the whole prompt), and candidates that are their stop token alone
    after one token (no node to read: the query's own logits score them)."""
    query_media = [[image] for image in images(len(QUERIES), seed=11)]
    prefix = scorer.encode_prefix("")
    candidates = [["x", "y"], CANDIDATES, ["a"]]
    batched = scorer.score_candidates_batch(prefix, QUERIES, query_media, candidates)
    reference = [scorer.score_candidates_uncached("", [], q, m, c)
                 for q, m, c in zip(QUERIES, query_media, candidates)]
    assert _max_diff(batched, reference) <= 1e-5


def test_alibi_and_sliding_windows_keep_one_row_per_candidate():
    import transformers as tf

    from frozenvl.flamingo import build
    from frozenvl.testing import TINY_FLAMINGO, tiny_tokenizer, tiny_vision

    torch.manual_seed(0)
    mpt = tf.MptForCausalLM(tf.MptConfig(d_model=32, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=64,
                                         vocab_size=258, bos_token_id=0, eos_token_id=1)).eval()
    mistral = tf.MistralForCausalLM(tf.MistralConfig(
        vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=6, bos_token_id=0,
        eos_token_id=1)).eval()
    for lm in (mpt, mistral):
        model, processor = build(lm=lm, tokenizer=tiny_tokenizer(), vision=tiny_vision(), **TINY_FLAMINGO)
        cache = model(torch.tensor([[5, 6]]), use_cache=True).cache
        assert not FewShotScorer(model, processor)._packs_trees(cache)
