"""Prefix-cached scoring agrees with the full-forward reference, and really reuses the prefix."""

from __future__ import annotations

import pytest

from frozenvl.eval.scoring import FewShotScorer
from frozenvl.testing import images, tiny_flamingo

CONTEXT = "<image>Output:a red cube.<|endofchunk|><image>Output:two blue balls.<|endofchunk|>"
CANDIDATES = ["red", "a blue cube", "green star", "x", "yellow diamond", "two small purple crosses"]



@pytest.fixture(scope="module", params=["llama", "gpt2"])
def scorer(request) -> FewShotScorer:
    model, processor = tiny_flamingo(request.param, seed=3, open_gates=True)
    return FewShotScorer(model, processor, candidate_batch_size=4)  # 6 candidates: two batches


def test_candidates_cached_equal_uncached(scorer):
    imgs = images(4, seed=1)
    prefix = scorer.encode_prefix(CONTEXT, imgs[:2])
    cached = scorer.score_candidates(prefix, "<image>Output:", [imgs[2]], CANDIDATES)
    plain = scorer.score_candidates_uncached(CONTEXT, imgs[:2], "<image>Output:", [imgs[2]], CANDIDATES)
    assert len(cached) == len(CANDIDATES)
    assert max(abs(a - b) for a, b in zip(cached, plain)) <= 1e-4
    # open gates: the query image changes the scores, so the agreement above covers the visual path
    other = scorer.score_candidates(prefix, "<image>Output:", [imgs[3]], CANDIDATES)
    assert max(abs(a - b) for a, b in zip(cached, other)) > 1e-4


def test_text_only_demonstrations_cached_equal_uncached(scorer):
    """The 0-shot prompt: demonstrations without images, then a query with one."""
    context = "Output:a red cube.<|endofchunk|>Output:two blue balls.<|endofchunk|>"
    imgs = images(3, seed=7)
    prefix = scorer.encode_prefix(context, [])
    cached = scorer.score_candidates(prefix, "<image>Output:", [imgs[0]], CANDIDATES)
    plain = scorer.score_candidates_uncached(context, [], "<image>Output:", [imgs[0]], CANDIDATES)
    assert max(abs(a - b) for a, b in zip(cached, plain)) <= 1e-4
    queries = ["<image>Output:", "<image>Question:what is it? Short answer:"]
    media = [[imgs[1]], [imgs[2]]]
    assert (scorer.generate_ids(prefix, queries, media, max_new_tokens=6, num_beams=3)
            == scorer.generate_ids_uncached(context, [], queries, media, max_new_tokens=6, num_beams=3))


def test_prefix_is_reusable(scorer):
    """Scoring continues a copy: the prefix's KV cache must not grow or be reordered by a query."""
    imgs = images(4, seed=2)
    prefix = scorer.encode_prefix(CONTEXT, imgs[:2])
    first = scorer.score_candidates(prefix, "<image>Output:", [imgs[2]], CANDIDATES)
    scorer.score_candidates(prefix, "<image>Question:what? Short answer:", [imgs[3]], CANDIDATES[:3])
    again = scorer.score_candidates(prefix, "<image>Output:", [imgs[2]], CANDIDATES)
    assert first == again


def test_scoring_and_generation_leave_the_prefix_cache_as_it_was(scorer):
    """No copy protects the prefix: selecting rows from a cache leaves it as it was, and only the selections grow."""
    import torch

    imgs = images(4, seed=2)
    prefix = scorer.encode_prefix(CONTEXT, imgs[:2])
    before = [(layer.keys, layer.values, layer.keys.clone(), layer.values.clone())
              for layer in prefix.cache.past_key_values.layers]
    scorer.score_candidates(prefix, "<image>Output:", [imgs[2]], CANDIDATES)
    scorer.generate_ids(prefix, ["<image>Output:", "<image>Question:what?"], [[imgs[2]], [imgs[3]]],
                        max_new_tokens=4, num_beams=2)
    for layer, (k, v, k0, v0) in zip(prefix.cache.past_key_values.layers, before, strict=True):
        assert layer.keys is k and layer.values is v
        assert torch.equal(k, k0) and torch.equal(v, v0)


def test_length_normalisation(scorer):
    imgs = images(3, seed=4)
    prefix = scorer.encode_prefix(CONTEXT, imgs[:2])
    mean = scorer.score_candidates(prefix, "<image>Output:", [imgs[2]], CANDIDATES)
    total = scorer.score_candidates(prefix, "<image>Output:", [imgs[2]], CANDIDATES, length_normalize=False)
    lengths = [len(scorer._candidate_ids(c)) for c in CANDIDATES]
    assert total == pytest.approx([m * n for m, n in zip(mean, lengths)], abs=1e-4)


def test_generation_cached_equals_uncached_and_encodes_demonstrations_once(scorer, monkeypatch):
    imgs = images(5, seed=5)
    # queries of different lengths: the cached path pads between the prefix and the query
    queries = ["<image>Output:", "<image>Question:what colour is it? Short answer:", "<image>Output:"]
    media = [[imgs[2]], [imgs[3]], [imgs[4]]]
    seen = []
    vision_forward = scorer.model.vision.forward
    monkeypatch.setattr(scorer.model.vision, "forward", lambda x: seen.append(x.shape[0]) or vision_forward(x))
    prefix = scorer.encode_prefix(CONTEXT, imgs[:2])
    cached = scorer.generate_ids(prefix, queries, media, max_new_tokens=6, num_beams=3)
    cached_images = sum(seen)
    seen.clear()
    plain = scorer.generate_ids_uncached(CONTEXT, imgs[:2], queries, media, max_new_tokens=6, num_beams=3)
    assert cached == plain and len(cached) == 3 and all(cached)
    # cached: 2 demonstration images once + each query's image once (not once per beam);
    # uncached: the 3 images of each of the 3 full prompts
    assert cached_images == 2 + 3
    assert sum(seen) == 9
    # the first generated token's log-probability agrees too (through the candidate scorer)
    first = scorer.tokenizer.decode(cached[1])
    a = scorer.score_candidates(prefix, queries[1], media[1], [first])
    b = scorer.score_candidates_uncached(CONTEXT, imgs[:2], queries[1], media[1], [first])
    assert abs(a[0] - b[0]) <= 1e-4


def test_empty_context_and_bad_media(scorer):
    imgs = images(2, seed=6)
    prefix = scorer.encode_prefix("")
    assert prefix.cache is None
    a = scorer.score_candidates(prefix, "<image>Output:", [imgs[0]], CANDIDATES[:2])
    b = scorer.score_candidates_uncached("", [], "<image>Output:", [imgs[0]], CANDIDATES[:2])
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-4
    with pytest.raises(ValueError, match="markers"):
        scorer.encode_prefix(CONTEXT, imgs[:1])
