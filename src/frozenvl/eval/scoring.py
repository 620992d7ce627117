"""Few-shot scoring for Flamingo with the demonstrations encoded once.

A few-shot prompt is ``context`` (the demonstrations) + ``query`` (+ a candidate answer). Every query that shares
its demonstrations shares ``context``: :meth:`FewShotScorer.encode_prefix` runs it through the model once and
keeps the :class:`~frozenvl.flamingo.FlamingoCache` (LM keys/values, visual tokens of the demonstration images,
cross-attention keys/values). Then

- close-ended: a batch of queries is appended to selections of the prefix cache (one forward for all of them,
  exact for any position scheme), then each query's candidates are read as a tree in one row on its cache (a
  prefix they share read once; LMs with position ids and full attention), or else (query, candidate) pairs are
  scored in batches by selecting each pair's query row of that cache; over the candidate tokens only;
- open-ended: a batch of queries is appended to selections of the prefix cache and decoded (beam search with the
  model's own :func:`~frozenvl.flamingo.generation.generate`), so neither the demonstration text nor its images
  are encoded again.

The ``*_uncached`` methods are the plain reference: one full forward over demonstrations + query + candidate per
candidate, and generation from the full prompt per query. Both paths score the same token ids: the context is
tokenised with the tokenizer's special tokens (as the processor does), the query and each candidate separately
without, and the uncached sequence is their concatenation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN
from frozenvl.flamingo.generation import continue_prefix, generate
from frozenvl.tensors import pad_sequences, stack_media


def media_tensor(processor: Any, medium: Any, max_frames: int | None = None) -> torch.Tensor:
    """An image -> (1, C, H, W); a video -> (F, C, H, W), at most ``max_frames`` frames
    (:meth:`~frozenvl.flamingo.processor.FlamingoProcessor.media_tensor`)."""
    return processor.media_tensor(medium, max_frames=max_frames)


@dataclass
class Prefix:
    """Demonstrations encoded once: their token ids, their media and the model's cache after them (one row).
    ``cache`` is None when the context is empty (no tokens)."""

    ids: list[int]
    media: list[torch.Tensor]  # (F, C, H, W) each, in <image> order
    cache: Any = None  # FlamingoCache

    def expanded(self, rows: int) -> Any:
        """A new cache, the stored one repeated ``rows`` times, to be continued; the stored cache stays as it
        was (``select`` never changes its input, and only the new cache's LM KV cache grows when continued)."""
        if self.cache is None:
            return None
        index = torch.zeros(rows, dtype=torch.long, device=self.cache.media_docs.device)
        return self.cache.select(index)


@dataclass
class _Piece:
    ids: list[int]
    media: list[torch.Tensor] = field(default_factory=list)


class FewShotScorer:
    """Scores candidates and generates answers for few-shot prompts, with or without prefix reuse.

    ``candidate_batch_size``: candidates per forward in :meth:`score_candidates`.
    """

    def __init__(self, model: Any, processor: Any, candidate_batch_size: int = 64):
        if candidate_batch_size < 1:
            raise ValueError(f"candidate_batch_size must be >= 1, got {candidate_batch_size}")
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.candidate_batch_size = candidate_batch_size
        self.device = next(model.parameters()).device
        self.max_frames = getattr(getattr(model, "config", None), "max_frames", None)

    # ------------------------------------------------------------------------------------------ tokenising
    def _piece(self, text: str, media: Sequence[Any], first: bool) -> _Piece:
        ids = self.tokenizer(text, add_special_tokens=first)["input_ids"]
        markers = sum(1 for t in ids if t == self.model.image_token_id)
        if markers != len(media) or text.count(IMAGE_TOKEN) != len(media):
            raise ValueError(f"{text[:60]!r}...: {text.count(IMAGE_TOKEN)} {IMAGE_TOKEN} markers "
                             f"({markers} tokens) for {len(media)} media")
        return _Piece(list(ids), [media_tensor(self.processor, m, self.max_frames) for m in media])

    def _candidate_ids(self, candidate: str) -> list[int]:
        ids = self.tokenizer(candidate + END_OF_CHUNK, add_special_tokens=False)["input_ids"]
        if self.model.image_token_id in ids:
            raise ValueError(f"candidate {candidate!r} contains {IMAGE_TOKEN}")
        return list(ids)

    def _pixels(self, rows: Sequence[Sequence[torch.Tensor]]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-row media -> pixels (B, T_img, F, C, H, W) on the model's device, zero media as padding, and the
        frame mask (B, T_img, F) when media of different frame counts mix (videos of different lengths at 1 FPS,
        images beside videos): the model encodes only the real frames."""
        pixels, frame_mask = stack_media(rows)
        if pixels is None:
            return None, None
        return pixels.to(self.device), None if frame_mask is None else frame_mask.to(self.device)

    # --------------------------------------------------------------------------------------------- prefix
    @torch.no_grad()
    def encode_prefix(self, context: str, media: Sequence[Any] = ()) -> Prefix:
        """Run the demonstrations once; the returned :class:`Prefix` serves every query that shares them."""
        piece = self._piece(context, media, first=True)
        if not piece.ids:
            return Prefix(ids=[], media=[])
        ids = torch.tensor([piece.ids], device=self.device)
        pixels, frame_mask = self._pixels([piece.media])
        out = self.model(ids, torch.ones_like(ids), pixels, use_cache=True, logits_to_keep=1, frame_mask=frame_mask)
        return Prefix(ids=piece.ids, media=piece.media, cache=out.cache)

    # ---------------------------------------------------------------------------------------- close-ended
    @staticmethod
    def _reduce(token_logp: torch.Tensor, mask: torch.Tensor, length_normalize: bool) -> torch.Tensor:
        total = (token_logp * mask).sum(-1)
        return total / mask.sum(-1) if length_normalize else total

    @torch.no_grad()
    def score_candidates(self, prefix: Prefix, query: str, query_media: Sequence[Any], candidates: Sequence[str],
                         length_normalize: bool = True) -> list[float]:
        """Log-likelihood of each ``candidate + <|endofchunk|>`` after prefix + query, per token if
        ``length_normalize``: :meth:`score_candidates_batch` for one query."""
        return self.score_candidates_batch(prefix, [query], [query_media], [candidates], length_normalize)[0]

    @torch.no_grad()
    def score_candidates_batch(self, prefix: Prefix, queries: Sequence[str], queries_media: Sequence[Sequence[Any]],
                               candidates: Sequence[Sequence[str]],
                               length_normalize: bool = True) -> list[list[float]]:
        """Scores of ``candidates[i]`` after prefix + ``queries[i]``, for a batch of queries that share ``prefix``.

        The queries are encoded in one batch on top of the prefix (their images too), left padded with the padding
        moved before each row's prefix (:func:`~frozenvl.flamingo.generation.continue_prefix`), so each row is its
        prompt alone for any position scheme (ALiBi, sliding windows). Then, for an LM with position ids and full
        attention, each query's candidates are read as trees (:meth:`_score_trees`). Otherwise every (query,
        candidate) pair is a row: the rows, sorted by candidate length, go ``candidate_batch_size`` per forward,
        each continuing a selection of its query's row, right padded (the padding comes after every real token).
        A candidate's last token is only a target: the forward reads the candidate without it (the logits after it
        are never used)."""
        if not len(queries) == len(queries_media) == len(candidates):
            raise ValueError(f"{len(queries)} queries, {len(queries_media)} media lists and {len(candidates)} "
                             "candidate lists: one of each per query")
        if not queries:
            return []
        pieces = [self._piece(q, m, first=False) for q, m in zip(queries, queries_media)]
        ids, mask = pad_sequences([p.ids for p in pieces], self.model.pad_token_id, "left", device=self.device)
        pixels, frame_mask = self._pixels([p.media for p in pieces])
        if prefix.cache is None:  # no demonstrations: the padding is already before each whole prompt
            out = self.model(ids, mask, pixels, use_cache=True, logits_to_keep=1, frame_mask=frame_mask)
            query_cache, next_logits = out.cache, out.logits[:, -1]  # (Q, V)
        else:
            media = None if pixels is None else self.model.encode_media(pixels, frame_mask)
            query_cache, next_logits = continue_prefix(self.model, ids, mask, media, prefix.expanded(len(pieces)))
        query_cache = self._query_image_only(query_cache)
        all_ids = [[self._candidate_ids(c) for c in row] for row in candidates]
        if self._packs_trees(query_cache):
            return self._score_trees(query_cache, next_logits, all_ids, length_normalize)
        pairs = [(q, c) for q, row in enumerate(all_ids) for c in range(len(row))]
        pairs.sort(key=lambda pair: len(all_ids[pair[0]][pair[1]]))  # similar lengths: little padding
        scores = [[0.0] * len(row) for row in all_ids]
        for start in range(0, len(pairs), self.candidate_batch_size):
            rows = pairs[start:start + self.candidate_batch_size]
            target, target_mask = pad_sequences([all_ids[q][c] for q, c in rows], self.model.pad_token_id, "right",
                                                device=self.device)  # (n, L)
            which = torch.tensor([q for q, _ in rows], device=self.device)  # (n,) each row's query
            logits = next_logits[which].unsqueeze(1)  # (n, 1, V): predicts target[:, 0]
            if target.shape[1] > 1:
                cache = query_cache.select(which)  # a new cache: query_cache is kept for the next batch
                fed = self.model(target[:, :-1], target_mask[:, :-1], cache=cache).logits  # (n, L-1, V)
                logits = torch.cat([logits, fed], dim=1)  # (n, L, V): logits[:, t] predicts target[:, t]
            token_logp = logits.float().log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (n, L)
            for (q, c), value in zip(rows, self._reduce(token_logp, target_mask.float(), length_normalize).tolist()):
                scores[q][c] = value
        return scores

    def _packs_trees(self, cache: Any) -> bool:
        """Whether the candidates can go as trees (:meth:`_score_trees`): the LM takes its positions as
        ``position_ids`` and a custom additive mask, and every token may see every earlier one (full attention
        layers only, no ALiBi: distances that count key slots would count the packed siblings)."""
        from transformers.cache_utils import DynamicLayer

        config = self.model.lm.config
        return (self.model._lm_takes_position_ids and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
                and getattr(config, "sliding_window", None) is None and not getattr(config, "alibi", False)
                and all(type(layer) is DynamicLayer for layer in getattr(cache.past_key_values, "layers", [None])))

    def _score_trees(self, query_cache: Any, next_logits: torch.Tensor, all_ids: list[list[list[int]]],
                     length_normalize: bool) -> list[list[float]]:
        """The scores of :meth:`score_candidates_batch`, each query's candidates packed as a tree in one row.

        A query's candidates (sorted, in groups of ``candidate_batch_size``) are merged into a trie of the tokens
        the forward reads (each candidate without its last token): a prefix shared by several candidates is one
        node, read once. The row continues the query's cache with the trie's nodes; a node sees the cache and its
        ancestors (a 4D mask) at position (query length + depth), so it gets the keys, values and logits it would
        get as a row of its own candidate, and no cache is copied per candidate. Rows of groups go
        ``candidate_batch_size`` candidates per forward, right padded (a padding node sees only itself)."""
        groups = []  # (query, [candidate index], [node per fed token of each candidate], node tokens, node parents)
        for q, row in enumerate(all_ids):
            order = sorted(range(len(row)), key=lambda c: row[c])
            for start in range(0, len(order), self.candidate_batch_size):
                members = order[start:start + self.candidate_batch_size]
                nodes: dict[tuple[int, ...], int] = {}
                tokens, parents, paths = [], [], []
                for c in members:
                    path, parent = [], -1
                    for k in range(len(row[c]) - 1):
                        key = tuple(row[c][:k + 1])
                        if key not in nodes:
                            nodes[key] = len(tokens)
                            tokens.append(row[c][k])
                            parents.append(parent)
                        parent = nodes[key]
                        path.append(parent)
                    paths.append(path)
                groups.append((q, members, paths, tokens, parents))
        scores = [[0.0] * len(row) for row in all_ids]
        lengths = query_cache.attention_mask.sum(1)  # (Q,) real tokens of each query row
        min_value = torch.finfo(self.model.lm.dtype).min
        start = 0
        while start < len(groups):  # forwards of up to candidate_batch_size candidates
            stop, count = start + 1, len(groups[start][1])
            while stop < len(groups) and count + len(groups[stop][1]) <= self.candidate_batch_size:
                count += len(groups[stop][1])
                stop += 1
            batch, start = groups[start:stop], stop
            which = torch.tensor([g[0] for g in batch], device=self.device)  # (R,) each row's query
            N = max(1, max(len(g[3]) for g in batch))
            node_logp = None
            if any(g[3] for g in batch):
                ids = torch.full((len(batch), N), self.model.pad_token_id, dtype=torch.long, device=self.device)
                depth = torch.zeros((len(batch), N), dtype=torch.long)
                sees = torch.eye(N, dtype=torch.bool).repeat(len(batch), 1, 1)  # (R, N, N) ancestors or itself
                for r, (_, _, _, tokens, parents) in enumerate(batch):
                    ids[r, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                    for i, parent in enumerate(parents):
                        if parent >= 0:
                            sees[r, i] |= sees[r, parent]
                            depth[r, i] = depth[r, parent] + 1
                real = torch.tensor([len(g[3]) for g in batch]).unsqueeze(1) > torch.arange(N)  # (R, N)
                cache = query_cache.select(which)  # a new cache, continued by the rows
                past = cache.attention_mask.bool().unsqueeze(1) & real.to(self.device).unsqueeze(2)  # (R, N, S)
                allowed = torch.cat([past, sees.to(self.device)], dim=2)  # (R, N, S + N)
                mask = torch.zeros(allowed.shape, dtype=self.model.lm.dtype, device=self.device)
                mask.masked_fill_(~allowed, min_value)
                positions = lengths[which].unsqueeze(1) + depth.to(self.device)  # (R, N)
                logits = self.model(ids, mask.unsqueeze(1), cache=cache, position_ids=positions).logits
                node_logp = logits.float().log_softmax(-1)  # (R, N, V)
            first_logp = next_logits[which].float().log_softmax(-1)  # (R, V): predicts each first token
            for r, (q, members, paths, _, _) in enumerate(batch):
                for c, path in zip(members, paths):
                    target = torch.tensor(all_ids[q][c], device=self.device)  # (m,)
                    token_logp = first_logp[r, target[:1]]
                    if path:
                        token_logp = torch.cat([token_logp, node_logp[r, path, target[1:]]])
                    value = token_logp.mean() if length_normalize else token_logp.sum()
                    scores[q][c] = float(value)
        return scores

    def _query_image_only(self, cache: Any) -> Any:
        """With ``only_attend_immediate``, a token that brings no image sees only the last image of its row: a view
        of ``cache`` that holds only that image (its visual tokens, document and cross-attention keys/values,
        numbered image 1), so each (query, candidate) row copies one image's keys/values instead of all of them.
        The LM cache is shared with ``cache``: the result is only selected from, never continued."""
        media = cache.media
        if (not getattr(self.model.config, "only_attend_immediate", False) or media is None or media.shape[1] <= 1
                or not bool((cache.last_time >= 1).all())):
            return cache
        B, n = media.shape[0], media.shape[2]
        last = cache.last_time - 1  # (B,) each row's last image
        tokens = last.unsqueeze(1) * n + torch.arange(n, device=last.device)  # (B, n) its visual tokens

        def keep(t: torch.Tensor) -> torch.Tensor:  # (B, H, T_img*n, d) -> (B, H, n, d)
            return t.gather(2, tokens[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3]))

        return dataclasses.replace(
            cache, media=media[torch.arange(B, device=last.device), last].unsqueeze(1),  # (B, 1, n, Dv)
            media_docs=cache.media_docs.gather(1, last.unsqueeze(1)), last_time=torch.ones_like(cache.last_time),
            xattn_kv={i: (keep(k), keep(v)) for i, (k, v) in cache.xattn_kv.items()})

    @torch.no_grad()
    def score_candidates_uncached(self, context: str, context_media: Sequence[Any], query: str,
                                  query_media: Sequence[Any], candidates: Sequence[str],
                                  length_normalize: bool = True) -> list[float]:
        """Reference: one full forward (text and images) per candidate."""
        ctx = self._piece(context, context_media, first=True)
        qry = self._piece(query, query_media, first=False)
        pixels, frame_mask = self._pixels([ctx.media + qry.media])
        scores = []
        for candidate in candidates:
            cand = self._candidate_ids(candidate)
            ids = torch.tensor([ctx.ids + qry.ids + cand], device=self.device)
            logits = self.model(ids, torch.ones_like(ids), pixels, logits_to_keep=len(cand) + 1,
                                frame_mask=frame_mask).logits[:, :-1]
            target = torch.tensor([cand], device=self.device)
            token_logp = F.log_softmax(logits.float(), dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
            scores += self._reduce(token_logp, torch.ones_like(token_logp), length_normalize).tolist()
        return scores

    # ----------------------------------------------------------------------------------------- generation
    def _decode(self, sequences: torch.Tensor, prompt_length: int) -> list[list[int]]:
        stops = {self.model.end_of_chunk_token_id, self.model.eos_token_id}
        out = []
        for row in sequences[:, prompt_length:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            out.append([t for t in row[:cut] if t != self.model.pad_token_id])
        return out

    @torch.no_grad()
    def generate_ids(self, prefix: Prefix, queries: Sequence[str], queries_media: Sequence[Sequence[Any]],
                     max_new_tokens: int, num_beams: int = 3) -> list[list[int]]:
        """New token ids (up to the stop token) for a batch of queries that share ``prefix``."""
        pieces = [self._piece(q, m, first=False) for q, m in zip(queries, queries_media)]
        # Left padding; generate moves each row's padding before the prefix (exact for ALiBi and sliding windows).
        ids, mask = pad_sequences([p.ids for p in pieces], self.model.pad_token_id, "left", device=self.device)
        pixels, frame_mask = self._pixels([p.media for p in pieces])
        seqs = generate(self.model, ids, mask, pixels, max_new_tokens=max_new_tokens, num_beams=num_beams,
                        use_cache=True, cache=prefix.expanded(len(pieces)), frame_mask=frame_mask)
        return self._decode(seqs, ids.shape[1])

    @torch.no_grad()
    def generate_ids_uncached(self, context: str, context_media: Sequence[Any], queries: Sequence[str],
                              queries_media: Sequence[Sequence[Any]], max_new_tokens: int,
                              num_beams: int = 3) -> list[list[int]]:
        """Reference: generation from the full prompt (demonstrations encoded again for every query)."""
        ctx = self._piece(context, context_media, first=True)
        pieces = [self._piece(q, m, first=False) for q, m in zip(queries, queries_media)]
        ids, mask = pad_sequences([ctx.ids + p.ids for p in pieces], self.model.pad_token_id, "left",
                                  device=self.device)
        pixels, frame_mask = self._pixels([ctx.media + p.media for p in pieces])
        seqs = generate(self.model, ids, mask, pixels, max_new_tokens=max_new_tokens, num_beams=num_beams,
                        use_cache=True, frame_mask=frame_mask)
        return self._decode(seqs, ids.shape[1])

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        return [self.tokenizer.decode(list(row), skip_special_tokens=True).strip() for row in ids]
