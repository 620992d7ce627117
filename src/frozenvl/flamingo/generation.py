"""Generation for Flamingo: greedy, sampling and beam search.

With ``use_cache=True`` (default) the prompt, its images, the visual tokens and the cross-attention keys/values
are computed once; each step feeds one token per row through the LM's KV cache (:class:`FlamingoCache`).
``use_cache=False`` recomputes everything from the pixels at every step: the reference the cached path must match
token for token, and the baseline of ``benchmarks/generation.py``.

Prompts are left padded. Generation stops at ``<|endofchunk|>`` (and EOS) and never emits ``<image>``.
Returns the prompt followed by the new tokens, rows that stopped early padded with the pad token.
"""

from __future__ import annotations

import torch

from frozenvl.flamingo.processor import check_extra_arguments
from frozenvl.tensors import pad_sequences


class _Decoder:
    """Feeds tokens to the model, with or without caching; rows can be reordered (beam search)."""

    def __init__(self, model, input_ids, attention_mask, pixel_values, document_ids, use_cache: bool,
                 expand: int = 1, prefix=None):
        self.model = model
        self.use_cache = use_cache
        self.expand = expand  # rows per prompt (beams)
        # Caching: the prompts, (B, ...), encoded once; the beams start from copies of that state. Recomputing:
        # the sequence of every row, (B*K, ...), re-encoded from the pixels at every step.
        if not use_cache and expand > 1:
            input_ids, attention_mask, pixel_values, document_ids = (
                None if t is None else t.repeat_interleave(expand, dim=0)
                for t in (input_ids, attention_mask, pixel_values, document_ids))
        self.ids, self.mask, self.pixels, self.docs = input_ids, attention_mask, pixel_values, document_ids
        self.prefix = prefix
        self.cache = None

    def first(self) -> torch.Tensor:  # -> (N, V) logits of the next token
        if not self.use_cache:
            out = self.model(self.ids, self.mask, self.pixels, document_ids=self.docs, logits_to_keep=1)
            return out.logits[:, -1]
        media = self.model.encode_media(self.pixels) if self.pixels is not None else None
        out = self.model(self.ids, self.mask, media=media, document_ids=None if self.prefix is not None else self.docs,
                         cache=self.prefix, use_cache=True, logits_to_keep=1)
        cache, logits = out.cache, out.logits[:, -1]  # (B, V)
        if self.expand > 1:
            rows = torch.arange(logits.shape[0], device=logits.device).repeat_interleave(self.expand)
            cache, logits = cache.select(rows), logits[rows]  # (B*K, V)
        self.cache = cache
        return logits

    def next(self, tokens: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:  # tokens (N,)
        one = torch.ones_like(tokens).unsqueeze(1)
        if self.use_cache:  # the cache holds everything: no ids, pixels or masks to carry along
            if index is not None:
                # Rows repeat each prompt's images `expand` times; a reorder within those groups moves no image
                # (unless rows leave: a prompt that is done).
                group = torch.arange(len(index), device=index.device) // self.expand
                same = len(index) == self.cache.media_docs.shape[0] and bool((index // self.expand == group).all())
                self.cache = self.cache.select(index, same_media=same)
            out = self.model(tokens.unsqueeze(1), one, cache=self.cache, use_cache=True, logits_to_keep=1)
            self.cache = out.cache
            return out.logits[:, -1]
        if index is not None:
            self.ids, self.mask = self.ids[index], self.mask[index]
            if self.docs is not None:
                self.docs = self.docs[index]
            if self.pixels is not None:
                self.pixels = self.pixels[index]
        self.ids = torch.cat([self.ids, tokens.unsqueeze(1)], dim=1)
        self.mask = torch.cat([self.mask, one], dim=1)
        if self.docs is not None:
            self.docs = torch.cat([self.docs, self.docs[:, -1:]], dim=1)
        out = self.model(self.ids, self.mask, self.pixels, document_ids=self.docs, logits_to_keep=1)
        return out.logits[:, -1]


def _process_logits(logits: torch.Tensor, banned: list[int], temperature: float, top_k: int,
                    top_p: float) -> torch.Tensor:
    logits = logits.float().clone()
    logits[:, banned] = float("-inf")
    if temperature != 1.0:
        logits = logits / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix with mass >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,  # (B, L) left padded
    attention_mask: torch.Tensor | None = None,  # (B, L)
    pixel_values: torch.Tensor | None = None,  # (B, T_img, [F,] C, H, W)
    *,
    max_new_tokens: int = 20,
    num_beams: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    length_penalty: float = 1.0,
    stop_token_ids: list[int] | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    document_ids: torch.Tensor | None = None,
    cache=None,
    **extra: object,
) -> torch.Tensor:  # (B, L + new)
    """``cache``: a :class:`FlamingoCache` of B rows that the prompts continue (e.g. demonstrations encoded once).
    Continuing a cache consumes it (its LM KV cache grows): to keep one, pass a selection of it
    (``cache.select(rows)`` is a new cache and leaves ``cache`` as it was)."""
    check_extra_arguments("generate", extra)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if num_beams > 1 and do_sample:
        raise ValueError("beam search with sampling is not supported: use num_beams=1 with do_sample=True")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if cache is not None and not use_cache:
        raise ValueError("a prefix cache needs use_cache=True")
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("generate needs left padding: the last prompt token of a row is padding "
                         "(use the processor with padding_side='left')")
    stops = stop_token_ids if stop_token_ids is not None else sorted({model.end_of_chunk_token_id,
                                                                       model.eos_token_id})
    banned = [model.image_token_id]
    if model.pad_token_id not in stops and model.pad_token_id != model.eos_token_id:
        banned.append(model.pad_token_id)
    was_training = model.training
    model.eval()
    try:
        if num_beams == 1:
            decoder = _Decoder(model, input_ids, attention_mask, pixel_values, document_ids, use_cache, 1, cache)
            new = _greedy_or_sample(model, decoder, input_ids.shape[0], max_new_tokens, do_sample, temperature,
                                    top_k, top_p, stops, banned, generator)
        else:
            decoder = _Decoder(model, input_ids, attention_mask, pixel_values, document_ids, use_cache, num_beams,
                               cache)
            new = _beam_search(model, decoder, input_ids.shape[0], max_new_tokens, num_beams, length_penalty, stops,
                               banned)
    finally:
        model.train(was_training)
    return torch.cat([input_ids, new.to(input_ids.device)], dim=1)


def _greedy_or_sample(model, decoder: _Decoder, B: int, max_new_tokens, do_sample, temperature, top_k, top_p, stops,
                      banned, generator) -> torch.Tensor:
    logits = decoder.first()  # (B, V)
    device = logits.device
    stop_ids = torch.tensor(stops, device=device)
    tokens = torch.full((B, max_new_tokens), model.pad_token_id, dtype=torch.long, device=device)
    active = torch.arange(B, device=device)  # the rows the decoder still holds: a finished row leaves the batch
    steps = max_new_tokens
    for step in range(max_new_tokens):
        scores = _process_logits(logits, banned, temperature if do_sample else 1.0, top_k if do_sample else 0,
                                 top_p if do_sample else 1.0)
        if do_sample:
            nxt = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
        else:
            nxt = scores.argmax(-1)  # (A,)
        tokens[active, step] = nxt
        going = (~torch.isin(nxt, stop_ids)).nonzero().squeeze(1)  # positions in the decoder's rows
        if len(going) == 0 or step == max_new_tokens - 1:
            steps = step + 1
            break
        leaving = len(going) < len(active)
        active = active[going]
        logits = decoder.next(nxt[going], going if leaving else None)
    return tokens[:, :steps]


def _best_continuations(logits: torch.Tensor, beam_scores: torch.Tensor,
                        banned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2K best (beam, token) continuations of each prompt's K beams, by beam score + log-probability.

    logits (B*K, V), beam_scores (B, K), banned token ids -> scores (B, 2K) and indices ``beam * V + token``
    (B, 2K), best first. The 2K best of a prompt's K*V candidates are among each beam's 2K most likely tokens,
    so only those are ranked: no (B, K*V) tensor of all candidates is built.
    """
    B, K = beam_scores.shape
    V = logits.shape[-1]
    width = min(2 * K, V)
    scores = logits.float().index_fill(1, banned, float("-inf"))  # (B*K, V)
    best_logits, best_tokens = scores.topk(width, dim=-1)  # (B*K, width)
    logp = best_logits - scores.logsumexp(dim=-1, keepdim=True)  # the log-softmax of those tokens
    cand = (beam_scores.view(-1, 1) + logp).view(B, K * width)
    top_scores, top_pos = cand.topk(min(2 * K, K * width), dim=1)  # (B, 2K)
    return top_scores, (top_pos // width) * V + best_tokens.view(B, K * width).gather(1, top_pos)


def _beam_search(model, decoder: _Decoder, B: int, max_new_tokens, K, length_penalty, stops, banned) -> torch.Tensor:
    logits = decoder.first()  # (B*K, V)
    device = logits.device
    V = logits.shape[-1]
    beam_scores = torch.full((B, K), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0  # all beams start identical: expand only the first
    seqs = torch.empty(B * K, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(B)]
    done = [False] * B
    stop_set = set(stops)
    banned_ids = torch.tensor(banned, dtype=torch.long, device=device)
    # The prompts the decoder still holds rows for (K each, in this order): a prompt that is done leaves the batch.
    active = list(range(B))
    for step in range(max_new_tokens):
        top_scores, top_idx = _best_continuations(logits, beam_scores[active], banned_ids)  # (A, 2K) each
        new_scores = torch.full((B, K), float("-inf"), device=device)
        new_beams = torch.arange(K, device=device).repeat(B, 1)  # (B, K); a done prompt's rows stay put
        new_tokens = torch.full((B, K), model.pad_token_id, dtype=torch.long, device=device)
        gen_len = step + 1
        for a, b in enumerate(active):
            slot = 0
            for rank in range(top_scores.shape[1]):
                score = float(top_scores[a, rank])
                if score == float("-inf"):
                    break
                beam, token = divmod(int(top_idx[a, rank]), V)
                if token in stop_set:
                    if rank < K:  # a stop among the K best candidates closes a hypothesis
                        hyp = torch.cat([seqs[b * K + beam], torch.tensor([token], device=device)])
                        finished[b].append((score / gen_len**length_penalty, hyp))
                    continue
                new_scores[b, slot], new_beams[b, slot], new_tokens[b, slot] = score, beam, token
                slot += 1
                if slot == K:
                    break
            if len(finished[b]) >= K:
                worst_kept = sorted(s for s, _ in finished[b])[-K]
                best_alive = float(new_scores[b].max()) / gen_len**length_penalty
                done[b] = best_alive <= worst_kept
        index = (torch.arange(B, device=device).unsqueeze(1) * K + new_beams).view(-1)
        seqs = torch.cat([seqs[index], new_tokens.view(-1, 1)], dim=1)
        beam_scores = new_scores
        if all(done) or step == max_new_tokens - 1:
            break
        keep = [a for a, b in enumerate(active) if not done[b]]  # positions in the decoder's rows
        active = [active[a] for a in keep]
        prompts = torch.tensor(active, device=device)
        rows = (torch.tensor(keep, device=device).unsqueeze(1) * K + new_beams[prompts]).view(-1)  # decoder rows
        logits = decoder.next(new_tokens[prompts].view(-1), rows)
    gen_len = seqs.shape[1]
    outputs = []
    for b in range(B):
        hyps = list(finished[b])
        if not done[b]:
            for k in range(K):
                if beam_scores[b, k] > float("-inf"):
                    hyps.append((float(beam_scores[b, k]) / gen_len**length_penalty, seqs[b * K + k]))
        best = max(hyps, key=lambda h: h[0])[1]
        outputs.append(best)
    return pad_sequences(outputs, model.pad_token_id, "right", device=device)[0]
