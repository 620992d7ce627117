"""Choosing demonstrations: random (seeded, several trials) or RICES (most similar by image features).

Both return indices into the demonstration pool, never the query itself (matched by key), and are
deterministic: the same arguments give the same demonstrations on every machine.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np


def _stable_hash(key: str) -> int:
    return zlib.crc32(str(key).encode("utf-8"))


class RandomDemos:
    """Random demonstrations from a pool of ``len(pool_keys)`` records.

    ``shared`` mode (default) draws one order of the pool per (seed, trial); every query takes the first
    ``num`` entries that are not itself, so nearly all queries share one demonstration set, whose encoding a
    harness can reuse. ``per_query=True`` draws an independent set for each query.
    """

    def __init__(self, pool_keys: Sequence[str], seed: int = 0):
        self.pool_keys = [str(k) for k in pool_keys]
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}

    def order(self, trial: int) -> np.ndarray:
        if trial not in self._orders:
            rng = np.random.default_rng([self.seed, trial])
            self._orders[trial] = rng.permutation(len(self.pool_keys))
        return self._orders[trial]

    def sample(self, num: int, trial: int = 0, query_key: str | None = None,
               per_query: bool = False) -> list[int]:
        """Indices of ``num`` demonstrations for the query ``query_key`` in trial ``trial``."""
        available = len(self.pool_keys) - (query_key is not None and str(query_key) in self.pool_keys)
        if num > available:
            raise ValueError(f"asked for {num} demonstrations from a pool of {available}")
        if per_query:
            key_hash = _stable_hash(query_key) if query_key is not None else 0
            order = np.random.default_rng([self.seed, trial, key_hash]).permutation(len(self.pool_keys))
        else:
            order = self.order(trial)
        picked = []
        for index in order:
            if len(picked) == num:
                break
            if query_key is None or self.pool_keys[index] != str(query_key):
                picked.append(int(index))
        return picked


def _to_numpy(features: Any) -> np.ndarray:
    if hasattr(features, "detach"):  # a torch tensor
        features = features.detach().float().cpu().numpy()
    return np.asarray(features, dtype=np.float32)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class Rices:
    """Retrieval-based In-Context Example Selection over cached image features.

    ``pool_features``: (N, D) features of the pool's images (any encoder; cosine similarity is used).
    ``select`` returns, per query, the ``num`` most similar pool items ordered from least to most similar, so
    the most similar demonstration sits last, right before the query. Equal similarities are broken by pool
    index (the lower index counts as more similar).
    """

    def __init__(self, pool_features: Any, pool_keys: Sequence[str] | None = None):
        features = _to_numpy(pool_features)
        if features.ndim != 2:
            raise ValueError(f"pool features must be (N, D), got shape {features.shape}")
        if pool_keys is not None and len(pool_keys) != len(features):
            raise ValueError(f"{len(pool_keys)} pool keys for {len(features)} feature rows")
        self.features = _l2_normalize(features)
        self.pool_keys = None if pool_keys is None else [str(k) for k in pool_keys]
        self._row = None if pool_keys is None else {k: i for i, k in enumerate(self.pool_keys)}

    def select(self, query_features: Any, num: int, query_keys: Sequence[str] | None = None,
               batch_size: int = 1024) -> list[list[int]]:
        """Pool indices of the ``num`` nearest demonstrations for each query row, most similar last."""
        queries = _to_numpy(query_features)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.shape[1] != self.features.shape[1]:
            raise ValueError(f"query features have dim {queries.shape[1]}, pool {self.features.shape[1]}")
        if query_keys is not None and (len(query_keys) != len(queries) or self._row is None):
            raise ValueError("query_keys needs pool_keys and one key per query row")
        if num < 1 or num > len(self.features) - (query_keys is not None):
            raise ValueError(f"cannot select {num} demonstrations from a pool of {len(self.features)}")
        queries = _l2_normalize(queries)
        picked: list[list[int]] = []
        for start in range(0, len(queries), batch_size):
            sims = queries[start:start + batch_size] @ self.features.T  # (B, N)
            for row, sim in enumerate(sims):
                if query_keys is not None:
                    own = self._row.get(str(query_keys[start + row]))
                    if own is not None:
                        sim[own] = -np.inf
                # all items at or above the num-th best similarity, then an exact (similarity, index) sort
                threshold = -np.partition(-sim, num - 1)[num - 1]
                candidates = np.nonzero(sim >= threshold)[0]
                best_first = candidates[np.lexsort((candidates, -sim[candidates]))][:num]
                picked.append([int(i) for i in best_first[::-1]])
        return picked
