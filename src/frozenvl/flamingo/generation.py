"""Generation for Flamingo: greedy, sampling and beam search, with transformers' generation controls.

With ``use_cache=True`` (default) the prompt, its images, the visual tokens and the cross-attention keys/values
are computed once; each step feeds one token per row through the LM's KV cache (:class:`FlamingoCache`).
``use_cache=False`` recomputes everything from the pixels at every step: the reference the cached path must match
token for token, and the baseline of ``benchmarks/generation.py``.

Prompts are left padded. Generation stops at ``<|endofchunk|>`` (and EOS) and never emits ``<image>``.
Returns the prompt followed by the new tokens, rows that stopped early padded with the pad token.

The controls (``repetition_penalty``, ``no_repeat_ngram_size``, ``min_new_tokens``, ``bad_words_ids``, and the
sampling warpers) are transformers' own :class:`~transformers.LogitsProcessor` classes, in the order transformers'
``generate`` applies them, given what transformers' ``generate`` gives them: every row of the batch (a row that has
finished, or a prompt whose beams are done, included, as transformers keeps them) and each row's whole sequence,
left padding included. So a fresh Flamingo generates exactly what its LM's ``generate`` does with the same
arguments (tests/flamingo/test_generation_controls.py); docs/generation.md lists the arguments.
"""

from __future__ import annotations

import torch
from transformers.generation import (
    GenerateBeamDecoderOnlyOutput,
    GenerateDecoderOnlyOutput,
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from frozenvl.flamingo.cache import FlamingoCache, left_pad_concat
from frozenvl.flamingo.processor import check_extra_arguments
from frozenvl.tensors import pad_sequences


class _Decoder:
    """Feeds tokens to the model, with or without caching; rows can be reordered (beam search)."""

    def __init__(self, model, input_ids, attention_mask, pixel_values, document_ids, use_cache: bool,
                 expand: int = 1, prefix=None, frame_mask=None):
        self.model = model
        self.use_cache = use_cache
        self.expand = expand  # rows per prompt (beams)
        # Caching: the prompts, (B, ...), encoded once; the beams start from copies of that state. Recomputing:
        # the sequence of every row, (B*K, ...), re-encoded from the pixels at every step.
        if not use_cache and expand > 1:
            input_ids, attention_mask, pixel_values, document_ids, frame_mask = (
                None if t is None else t.repeat_interleave(expand, dim=0)
                for t in (input_ids, attention_mask, pixel_values, document_ids, frame_mask))
        self.ids, self.mask, self.pixels, self.docs = input_ids, attention_mask, pixel_values, document_ids
        self.frames = frame_mask  # (rows, T_img, F) real frames, or None
        self.prefix = prefix
        self.cache = None

    def first(self) -> torch.Tensor:  # -> (N, V) logits of the next token
        if not self.use_cache:
            out = self.model(self.ids, self.mask, self.pixels, document_ids=self.docs, frame_mask=self.frames,
                             logits_to_keep=1)
            return out.logits[:, -1]
        media = self.model.encode_media(self.pixels, self.frames) if self.pixels is not None else None
        if self.prefix is not None:
            cache, logits = continue_prefix(self.model, self.ids, self.mask, media, self.prefix)
        else:
            out = self.model(self.ids, self.mask, media=media, document_ids=self.docs, use_cache=True,
                             logits_to_keep=1)
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
            if self.frames is not None:
                self.frames = self.frames[index]
        self.ids = torch.cat([self.ids, tokens.unsqueeze(1)], dim=1)
        self.mask = torch.cat([self.mask, one], dim=1)
        if self.docs is not None:
            self.docs = torch.cat([self.docs, self.docs[:, -1:]], dim=1)
        out = self.model(self.ids, self.mask, self.pixels, document_ids=self.docs, frame_mask=self.frames,
                         logits_to_keep=1)
        return out.logits[:, -1]


def continue_prefix(model, ids: torch.Tensor, mask: torch.Tensor, media: torch.Tensor | None,
                    prefix: FlamingoCache) -> tuple[FlamingoCache, torch.Tensor]:
    """Left-padded prompts ``ids``/``mask`` (B, L) continuing the cache ``prefix`` of B rows -> the cache after them
    and the next token's logits (B, V).

    Left padding would sit between the prefix and the prompt, where distance-based positions see it (ALiBi counts
    it in every key distance, a sliding window holds it instead of prefix tokens). So the rows are encoded in groups
    of one padding length with their padding cut off, and the groups' caches joined with the padding moved before
    each row's prefix (:func:`~frozenvl.flamingo.cache.left_pad_concat`): every row then equals its full prompt
    alone, for any position scheme, at the cost of one call per distinct prompt length instead of one.
    """
    pads = (mask == 0).long().cumprod(dim=1).sum(dim=1)  # (B,) leading padding of each row
    lengths = pads.unique().tolist()
    if lengths == [0]:  # no padding: one call
        out = model(ids, mask, media=media, cache=prefix, use_cache=True, logits_to_keep=1)
        return out.cache, out.logits[:, -1]
    caches, logits, order = [], [], []
    for pad in lengths:
        rows = (pads == pad).nonzero().squeeze(1)  # (B_g,)
        out = model(ids[rows, pad:], mask[rows, pad:], media=None if media is None else media[rows],
                    cache=prefix.select(rows), use_cache=True, logits_to_keep=1)
        caches.append(out.cache)
        logits.append(out.logits[:, -1])
        order.append(rows)
    back = torch.cat(order).argsort()  # the original row order
    return left_pad_concat(caches).select(back), torch.cat(logits)[back]


def _logits_processors(input_ids: torch.Tensor, attention_mask: torch.Tensor, stops: list[int], *,
                       repetition_penalty: float, no_repeat_ngram_size: int, min_new_tokens: int,
                       bad_words_ids: list[list[int]] | None) -> LogitsProcessorList:
    """The controls of one call, in the order of transformers' ``generate`` (the sampling warpers come after
    them: :func:`_warpers`). ``input_ids``/``attention_mask`` (N, L): the prompts of the N rows the processors
    will see."""
    processors = LogitsProcessorList()
    if repetition_penalty != 1.0:
        # As transformers' generate: the left padding of each row is no token of its prompt.
        pad_lengths = (attention_mask != 0).int().argmax(dim=1)  # (N,)
        processors.append(RepetitionPenaltyLogitsProcessor(float(repetition_penalty),
                                                           prompt_ignore_length=pad_lengths))
    if no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    if bad_words_ids is not None:
        processors.append(NoBadWordsLogitsProcessor(bad_words_ids, eos_token_id=stops))
    if min_new_tokens > 0:
        processors.append(MinNewTokensLengthLogitsProcessor(input_ids.shape[1], min_new_tokens, stops,
                                                            device=input_ids.device))
    return processors


def _warpers(temperature: float, top_k: int, top_p: float) -> list:
    """Sampling's warpers, transformers' own, in its order."""
    warpers = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


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
    frame_mask: torch.Tensor | None = None,  # (B, T_img, F) real frames when media of different lengths mix
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    min_new_tokens: int = 0,
    bad_words_ids: list[list[int]] | None = None,
    eos_token_id: int | list[int] | None = None,
    num_return_sequences: int = 1,
    streamer=None,
    output_scores: bool = False,
    return_dict_in_generate: bool = False,
    **extra: object,
) -> torch.Tensor | GenerateDecoderOnlyOutput | GenerateBeamDecoderOnlyOutput:  # (B * num_return_sequences, L + new)
    """docs/generation.md describes every argument; they mean what they mean in transformers' ``generate``.

    ``cache``: a :class:`FlamingoCache` of B rows that the prompts continue (e.g. demonstrations encoded once).
    Continuing a cache consumes it (its LM KV cache grows): to keep one, pass a selection of it
    (``cache.select(rows)`` is a new cache and leaves ``cache`` as it was). The controls that look at the sequence
    so far (repetition, n-grams) see ``input_ids`` and the new tokens, not the cached prefix."""
    check_extra_arguments("generate", extra)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if num_beams > 1 and do_sample:
        raise ValueError("beam search with sampling is not supported: use num_beams=1 with do_sample=True")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:  # 0 would silently be greedy, 2 fails deep inside sampling
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: off), got {top_k}")
    if num_return_sequences < 1 or (num_beams > 1 and num_return_sequences > num_beams):
        raise ValueError(f"num_return_sequences must be between 1 and num_beams, got {num_return_sequences}")
    if num_return_sequences > 1 and num_beams == 1 and not do_sample:
        raise ValueError("greedy search returns one sequence per prompt: num_return_sequences needs do_sample=True "
                         "or num_beams >= num_return_sequences")
    if streamer is not None and num_beams > 1:
        raise ValueError("a streamer cannot follow beam search (as in transformers): use num_beams=1")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if cache is not None and not use_cache:
        raise ValueError("a prefix cache needs use_cache=True")
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("generate needs left padding: the last prompt token of a row is padding "
                         "(use the processor with padding_side='left')")
    if eos_token_id is not None:  # transformers' name for the stop tokens
        if stop_token_ids is not None:
            raise ValueError("give the stop tokens once: eos_token_id or stop_token_ids, not both")
        stop_token_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    stops = stop_token_ids if stop_token_ids is not None else sorted({model.end_of_chunk_token_id,
                                                                       model.eos_token_id})
    banned = [model.image_token_id]
    if model.pad_token_id not in stops and model.pad_token_id != model.eos_token_id:
        banned.append(model.pad_token_id)
    if num_return_sequences > 1 and num_beams == 1:  # several samples of each prompt: repeat its rows
        rows = torch.arange(input_ids.shape[0], device=input_ids.device).repeat_interleave(num_return_sequences)
        input_ids, attention_mask, pixel_values, document_ids, frame_mask = (
            None if t is None else t[rows.to(t.device)] for t in (input_ids, attention_mask, pixel_values,
                                                                   document_ids, frame_mask))
        if cache is not None:
            cache = cache.select(rows.to(cache.attention_mask.device))
    rows_per_prompt = num_beams  # the rows the processors see: transformers' expanded batch
    processors = _logits_processors(
        input_ids.repeat_interleave(rows_per_prompt, dim=0), attention_mask.repeat_interleave(rows_per_prompt, dim=0),
        stops, repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
        min_new_tokens=min_new_tokens, bad_words_ids=bad_words_ids)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    was_training = model.training
    model.eval()
    try:
        if num_beams == 1:
            decoder = _Decoder(model, input_ids, attention_mask, pixel_values, document_ids, use_cache, 1, cache,
                               frame_mask)
            scores = [] if output_scores else None
            new = _greedy_or_sample(model, decoder, input_ids.shape[0], max_new_tokens, do_sample, temperature, top_k,
                                    top_p, stops, banned, generator, prompts=input_ids, processors=processors,
                                    streamer=streamer, scores=scores)
        else:
            decoder = _Decoder(model, input_ids, attention_mask, pixel_values, document_ids, use_cache, num_beams,
                               cache, frame_mask)
            seq_scores, scores = [], [] if output_scores else None
            new = _beam_search(model, decoder, input_ids.shape[0], max_new_tokens, num_beams, length_penalty, stops,
                               banned, prompts=input_ids, processors=processors,
                               num_return_sequences=num_return_sequences, sequence_scores=seq_scores,
                               scores=scores)
            input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
    finally:
        model.train(was_training)
        if streamer is not None:
            streamer.end()
    sequences = torch.cat([input_ids, new.to(input_ids.device)], dim=1)
    if not return_dict_in_generate:
        return sequences
    if num_beams > 1:
        return GenerateBeamDecoderOnlyOutput(sequences=sequences,
                                             sequences_scores=torch.tensor(seq_scores, device=sequences.device),
                                             scores=None if scores is None else tuple(scores))
    return GenerateDecoderOnlyOutput(sequences=sequences, scores=None if scores is None else tuple(scores))


def _greedy_or_sample(model, decoder: _Decoder, B: int, max_new_tokens, do_sample, temperature, top_k, top_p, stops,
                      banned, generator, *, prompts: torch.Tensor | None = None,
                      processors: LogitsProcessorList | None = None, streamer=None,
                      scores: list | None = None) -> torch.Tensor:  # -> (B, new)
    """``prompts`` (B, L): what the ``processors`` see before the new tokens; the processed scores of each step,
    (B, V), are appended to ``scores`` (-inf for a row that has finished)."""
    logits = decoder.first()  # (B, V)
    device = logits.device
    V = logits.shape[-1]
    stop_ids = torch.tensor(stops, device=device)
    processors = LogitsProcessorList([SuppressTokensLogitsProcessor(banned, device=device), *(processors or []),
                                      *(_warpers(temperature, top_k, top_p) if do_sample else [])])
    # (B, L + t): every row's sequence so far, finished rows padded, for the processors
    seqs = prompts.to(device) if prompts is not None else torch.empty(B, 0, dtype=torch.long, device=device)
    L = seqs.shape[1]
    active = torch.arange(B, device=device)  # the rows the decoder still holds: a finished row leaves the batch
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        # Every row goes through the processors and the sampler, as in transformers' generate (a finished row
        # with zero logits, its token discarded): a seed draws the same samples, whichever rows are still going.
        full = torch.zeros(B, V, device=device)
        full[active] = logits.float()
        processed = processors(seqs, full)  # (B, V)
        if scores is not None:
            scores.append(processed.masked_fill(finished.unsqueeze(1), float("-inf")))
        if do_sample:
            nxt_all = torch.multinomial(processed.softmax(-1), 1, generator=generator).squeeze(1)
        else:
            nxt_all = processed.argmax(-1)  # (B,)
        nxt_all = nxt_all.masked_fill(finished, model.pad_token_id)
        seqs = torch.cat([seqs, nxt_all.unsqueeze(1)], dim=1)
        if streamer is not None:
            streamer.put(nxt_all.cpu())
        nxt = nxt_all[active]  # (A,)
        stopped = torch.isin(nxt, stop_ids)
        finished[active[stopped]] = True
        going = (~stopped).nonzero().squeeze(1)  # positions in the decoder's rows
        if len(going) == 0 or step == max_new_tokens - 1:
            break
        leaving = len(going) < len(active)
        active = active[going]
        logits = decoder.next(nxt[going], going if leaving else None)
    return seqs[:, L:]


def _best_continuations(logits: torch.Tensor, beam_scores: torch.Tensor, banned: torch.Tensor,
                        process=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2K best (beam, token) continuations of each prompt's K beams, by beam score + log-probability.

    logits (B*K, V), beam_scores (B, K), banned token ids -> scores (B, 2K) and indices ``beam * V + token``
    (B, 2K), best first. The 2K best of a prompt's K*V candidates are among each beam's 2K most likely tokens,
    so only those are ranked: no (B, K*V) tensor of all candidates is built. ``process``: the logits processors,
    (B*K, V) log-probabilities -> processed ones (transformers' beam search processes the log-probabilities).
    """
    B, K = beam_scores.shape
    V = logits.shape[-1]
    width = min(2 * K, V)
    scores = logits.float().index_fill(1, banned, float("-inf"))  # (B*K, V)
    if process is None:
        best_logits, best_tokens = scores.topk(width, dim=-1)  # (B*K, width)
        logp = best_logits - scores.logsumexp(dim=-1, keepdim=True)  # the log-softmax of those tokens
    else:
        logp, best_tokens = process(scores.log_softmax(dim=-1)).topk(width, dim=-1)  # (B*K, width)
    cand = (beam_scores.view(-1, 1) + logp).view(B, K * width)
    top_scores, top_pos = cand.topk(min(2 * K, K * width), dim=1)  # (B, 2K)
    return top_scores, (top_pos // width) * V + best_tokens.view(B, K * width).gather(1, top_pos)


def _beam_search(model, decoder: _Decoder, B: int, max_new_tokens, K, length_penalty, stops, banned, *,
                 prompts: torch.Tensor | None = None, processors: LogitsProcessorList | None = None,
                 num_return_sequences: int = 1, sequence_scores: list | None = None,
                 scores: list | None = None) -> torch.Tensor:
    """-> the ``num_return_sequences`` best hypotheses of each prompt, best first (B*R, new); their scores are
    appended to ``sequence_scores``, and each step's processed log-probabilities of every beam, (B*K, V), to
    ``scores`` (-inf for a prompt that is done). ``prompts`` (B, L): what the ``processors`` see before the new
    tokens."""
    logits = decoder.first()  # (B*K, V)
    device = logits.device
    V = logits.shape[-1]
    processors = processors or LogitsProcessorList()
    prompts_ids = (prompts.to(device).repeat_interleave(K, dim=0) if prompts is not None
                   else torch.empty(B * K, 0, dtype=torch.long, device=device))  # (B*K, L)
    beam_scores = torch.full((B, K), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0  # all beams start identical: expand only the first
    seqs = torch.empty(B * K, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(B)]
    done = [False] * B
    stop_set = set(stops)
    banned_ids = torch.tensor(banned, dtype=torch.long, device=device)
    # The prompts the decoder still holds rows for (K each, in this order): a prompt that is done leaves the batch.
    active = list(range(B))

    def process(logp: torch.Tensor) -> torch.Tensor:  # (A*K, V) -> (A*K, V)
        # The processors see every beam of every prompt (as transformers keeps them), each its whole sequence.
        rows = (torch.tensor(active, device=device).unsqueeze(1) * K + torch.arange(K, device=device)).view(-1)
        full = torch.zeros(B * K, V, device=device)
        full[rows] = logp
        full = processors(torch.cat([prompts_ids, seqs], dim=1), full)
        if scores is not None:
            running = torch.zeros(B * K, dtype=torch.bool, device=device)
            running[rows] = True
            scores.append(full.masked_fill(~running.unsqueeze(1), float("-inf")))
        return full[rows]

    for step in range(max_new_tokens):
        top_scores, top_idx = _best_continuations(logits, beam_scores[active], banned_ids,
                                                  process if len(processors) or scores is not None
                                                  else None)  # (A, 2K) each
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
        # sorted is stable: among equal scores the first found stays first
        for score, hyp in sorted(hyps, key=lambda h: -h[0])[:num_return_sequences]:
            outputs.append(hyp)
            if sequence_scores is not None:
                sequence_scores.append(score)
    return pad_sequences(outputs, model.pad_token_id, "right", device=device)[0]
