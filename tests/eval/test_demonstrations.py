"""Demonstration selection: seeded random sampling and RICES."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frozenvl.eval.demonstrations import RandomDemos, Rices

KEYS = [f"k{i}" for i in range(20)]


def test_random_is_deterministic_and_trials_differ():
    a, b = RandomDemos(KEYS, seed=3), RandomDemos(KEYS, seed=3)
    assert a.sample(8, trial=0) == b.sample(8, trial=0)
    assert a.sample(8, trial=1) == b.sample(8, trial=1)
    assert a.sample(8, trial=0) != a.sample(8, trial=1)
    assert RandomDemos(KEYS, seed=4).sample(8) != a.sample(8)
    assert len(set(a.sample(8))) == 8


def test_random_shared_set_never_contains_the_query():
    sampler = RandomDemos(KEYS, seed=0)
    base = sampler.sample(4, trial=0)
    inside = KEYS[base[1]]
    replaced = sampler.sample(4, trial=0, query_key=inside)
    assert base[1] not in replaced
    assert replaced == [i for i in base if i != base[1]] + [int(sampler.order(0)[4])]
    outside = next(k for i, k in enumerate(KEYS) if i not in base)
    assert sampler.sample(4, trial=0, query_key=outside) == base  # shared by every other query
    for key in KEYS:
        assert KEYS.index(key) not in sampler.sample(19, trial=2, query_key=key)


def test_random_per_query_is_deterministic_and_excludes_query():
    sampler = RandomDemos(KEYS, seed=0)
    first = {k: sampler.sample(5, trial=0, query_key=k, per_query=True) for k in KEYS}
    again = {k: RandomDemos(KEYS, seed=0).sample(5, trial=0, query_key=k, per_query=True) for k in KEYS}
    assert first == again
    assert all(KEYS.index(k) not in picked for k, picked in first.items())
    assert len({tuple(v) for v in first.values()}) > 1
    with pytest.raises(ValueError, match="pool of 19"):
        sampler.sample(20, query_key="k0")


def test_rices_orders_most_similar_last():
    pool = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]])
    rices = Rices(pool * np.array([[3.0], [1.0], [2.0], [5.0], [1.0]]))  # scale must not matter (cosine)
    (picked,) = rices.select(np.array([1.0, 0.1]), num=3)
    # cosines with (1, .1): item0 .995, item2 .857, item3 .676, item1 .0995, item4 -.995
    assert picked == [3, 2, 0]


def test_rices_excludes_the_query_and_is_deterministic_under_ties():
    pool = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    keys = ["a", "b", "c", "d"]
    rices = Rices(pool, pool_keys=keys)
    picked = rices.select(pool[:2], num=2, query_keys=["a", "b"])
    assert picked == [[2, 1], [2, 0]]  # equal similarity: lower index counts as more similar (last)
    assert rices.select(pool[:2], num=2, query_keys=["a", "b"]) == picked
    assert rices.select(pool[3], num=3, query_keys=["d"]) == [[2, 1, 0]]
    with pytest.raises(ValueError, match="cannot select"):
        rices.select(pool[0], num=4, query_keys=["a"])


def test_rices_batches_match_single_queries():
    rng = np.random.default_rng(0)
    pool, queries = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    rices = Rices(pool)
    batched = rices.select(queries, num=5, batch_size=3)
    assert batched == [rices.select(q, num=5)[0] for q in queries]
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        pool / np.linalg.norm(pool, axis=1, keepdims=True)).T
    for row, picked in zip(sims, batched):
        assert picked == list(np.argsort(-row)[:5][::-1])
