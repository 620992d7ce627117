"""Facet-decoupled attention (FDA): pack a caption prefix and K prompt segments into one sequence.

Layout of one row (right padding shown; left padding puts the pads first)::

    [ prefix (P tokens) | segment 1 (s_1) | ... | segment K (s_K) | pad ... ]
    positions: 0 .. P-1 | P .. P+s_1-1    | ... | P .. P+s_K-1    | 0 ...

Rules of the additive float mask (B, 1, L, L), 0 where a query may attend and ``finfo(dtype).min`` elsewhere:

- causal (a query never sees a later column);
- keys must be real tokens, never padding;
- a prompt token sees the prefix and its own segment only, never another segment.

Every segment restarts its positions right after the prefix, so each facet is computed exactly as if its
segment followed the prefix alone. The mask has one head dimension of size 1 (it broadcasts over heads; never
expand it). It is a float mask on purpose: boolean 4D masks are silently wrong under eager attention in
transformers 5.x.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from frozenvl.tensors import check_padding_side, pad_sequences

PAD_SEGMENT = -1
PREFIX_SEGMENT = 0
# How the official FLAME code's blank padding rows behave, by the attention backend it ran on (transformers 4.43).
OFFICIAL_BACKENDS = ("sdpa", "eager")


@dataclass
class PackedFacets:
    input_ids: torch.Tensor  # (R, L) long; R = B rows, or fewer when several captions share a row (packed)
    position_ids: torch.Tensor  # (R, L) long
    attention_mask: torch.Tensor  # (R, 1, L, L) float, additive
    last_index: torch.Tensor  # (B, K) long: column of the last token of each prompt of caption b
    row: torch.Tensor | None = None  # (B,) long: the row of caption b (None: row b)


def segment_ids(prefix_lengths: list[int], segment_lengths: list[int], length: int, left_pad: bool) -> torch.Tensor:
    """(B, L): PAD_SEGMENT for padding, PREFIX_SEGMENT for the prefix, k + 1 for prompt k."""
    lengths = torch.tensor(segment_lengths, dtype=torch.long)
    seg_labels = torch.repeat_interleave(torch.arange(1, len(segment_lengths) + 1), lengths)
    rows = [torch.cat([torch.full((p,), PREFIX_SEGMENT, dtype=torch.long), seg_labels]) for p in prefix_lengths]
    return pad_sequences(rows, PAD_SEGMENT, "left" if left_pad else "right", length)[0]


def facet_attention_mask(segments: torch.Tensor, dtype: torch.dtype, official: str | None = None,
                         documents: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) segment ids -> (B, 1, L, L) additive float mask (see the module docstring for the rules).

    ``official`` reproduces the mask of the official FLAME code (``OFFICIAL_BACKENDS``): real queries attend
    causally to padding keys too (the embeddings then depend on how much padding a batch has), and padding query
    rows are blanked entirely. What a blank row then computes depends on the attention backend the official code
    ran on (transformers 4.43): ``"sdpa"`` (its default on CUDA) unmasks a fully masked row
    (``AttentionMaskConverter._unmask_unattended``), so a padding query attends to every key of its row by score;
    ``"eager"`` (eager attention, or SDPA on CPU) keeps it, so a padding query attends evenly to every key. The
    padding rows matter because real tokens attend to them in the next layers.

    ``documents`` (B, L) long, for rows that pack several captions: a query attends only to keys of its own
    caption (its document id); padding has id -1.
    """
    if official is not None and official not in OFFICIAL_BACKENDS:
        raise ValueError(f"official must be one of {OFFICIAL_BACKENDS} or None, got {official!r}")
    length = segments.shape[1]
    q_seg = segments[:, :, None]  # (B, L, 1)
    k_seg = segments[:, None, :]  # (B, 1, L)
    q_pad = q_seg == PAD_SEGMENT  # (B, L, 1)
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()  # (L, L)
    same_or_prefix = (k_seg == PREFIX_SEGMENT) | (k_seg == q_seg)  # (B, L, L)
    if documents is not None:
        if official is not None:
            raise ValueError("packed rows (documents) have no official layout")
        same_or_prefix = same_or_prefix & (documents[:, :, None] == documents[:, None, :])
    if official is None:
        allowed = causal & same_or_prefix & (k_seg != PAD_SEGMENT) & ~q_pad
        # A padding query sees only itself, so no row is fully masked (its output is never read).
        allowed = allowed | (torch.eye(length, dtype=torch.bool, device=segments.device) & q_pad)
    else:
        allowed = causal & (same_or_prefix | (k_seg == PAD_SEGMENT)) & ~q_pad  # padding rows blank
        if official == "sdpa":
            allowed = allowed | q_pad  # the blank rows unmasked: every key of the row
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]  # (B, 1, L, L)


def pack_facets(
    prefixes: list[list[int]],
    segments: list[list[int]],
    pad_id: int,
    dtype: torch.dtype,
    padding_side: str = "right",
    official: str | None = None,
) -> PackedFacets:
    """Pack B token-id prefixes with the same K prompt segments into one FDA batch.

    ``official`` (``"sdpa"`` or ``"eager"``, see :func:`facet_attention_mask`) reproduces the official FLAME
    code's batch: left padding, its mask, and positions 0..L-1 over the padded row without restarting after the
    prefix.
    """
    left = check_padding_side(padding_side) == "left"
    if official is not None and not left:
        raise ValueError("the official FLAME layout pads on the left (its segment search relies on it)")
    seg_lengths = [len(s) for s in segments]
    tail = [t for s in segments for t in s]
    length = max(len(p) for p in prefixes) + len(tail)
    batch = len(prefixes)
    input_ids, _ = pad_sequences([p + tail for p in prefixes], pad_id, padding_side, length)
    position_ids = torch.zeros((batch, length), dtype=torch.long)
    last_index = torch.zeros((batch, len(segments)), dtype=torch.long)
    seg_pos = torch.cat([torch.arange(n) for n in seg_lengths])  # (S,) position inside each segment
    seg_ends = torch.tensor(seg_lengths).cumsum(0) - 1  # (K,) last token of each segment, from its start
    for b, prefix in enumerate(prefixes):
        n = len(prefix) + len(tail)
        start = length - n if left else 0
        position_ids[b, start:start + len(prefix)] = torch.arange(len(prefix))
        position_ids[b, start + len(prefix):start + n] = len(prefix) + seg_pos
        last_index[b] = start + len(prefix) + seg_ends
    seg = segment_ids([len(p) for p in prefixes], seg_lengths, length, left)
    if official is not None:
        position_ids = torch.arange(length).expand(batch, length).clone()
    mask = facet_attention_mask(seg, dtype, official)
    return PackedFacets(input_ids, position_ids, mask, last_index)


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: item indices grouped into rows of at most ``capacity`` tokens (an item longer than
    ``capacity`` gets a row of its own). Deterministic: ties keep the input order."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


def pack_facets_dense(
    prefixes: list[list[int]],
    segments: list[list[int]],
    pad_id: int,
    dtype: torch.dtype,
    capacity: int | None = None,
) -> PackedFacets:
    """Pack B captions, each ``[prefix | segment 1 | ... | segment K]``, several to a row, without padding between
    them: rows of at most ``capacity`` tokens (default, and at least: the longest caption's, so no row is longer
    than in a padded batch), filled first-fit by decreasing length, right-padded to the longest row. The mask
    keeps each caption to itself (a document id per caption) with the facet rules inside it, and positions
    restart for every caption as in :func:`pack_facets`, so every facet equals the one computed alone. Fewer
    padded tokens than a padded batch when lengths differ; attention runs over whole rows (a dense mask).
    """
    seg_lengths = [len(s) for s in segments]
    tail = [t for s in segments for t in s]
    lengths = [len(p) + len(tail) for p in prefixes]
    capacity = max(capacity or 0, max(lengths))
    groups = pack_rows(lengths, capacity)
    seg_labels = torch.repeat_interleave(torch.arange(1, len(segments) + 1), torch.tensor(seg_lengths))  # (S,)
    seg_pos = torch.cat([torch.arange(n) for n in seg_lengths])  # (S,)
    seg_ends = torch.tensor(seg_lengths).cumsum(0) - 1  # (K,)
    length = max(sum(lengths[i] for i in g) for g in groups)
    n_rows = len(groups)
    input_ids = torch.full((n_rows, length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, length), dtype=torch.long)
    seg = torch.full((n_rows, length), PAD_SEGMENT, dtype=torch.long)
    docs = torch.full((n_rows, length), -1, dtype=torch.long)
    last_index = torch.zeros((len(prefixes), len(segments)), dtype=torch.long)
    row = torch.zeros(len(prefixes), dtype=torch.long)
    for r, group in enumerate(groups):
        start = 0
        for i in group:
            p = len(prefixes[i])
            span = slice(start, start + lengths[i])
            input_ids[r, span] = torch.tensor(prefixes[i] + tail, dtype=torch.long)
            position_ids[r, span] = torch.cat([torch.arange(p), p + seg_pos])
            seg[r, span] = torch.cat([torch.full((p,), PREFIX_SEGMENT, dtype=torch.long), seg_labels])
            docs[r, span] = i
            last_index[i] = start + p + seg_ends
            row[i] = r
            start += lengths[i]
    mask = facet_attention_mask(seg, dtype, documents=docs)
    return PackedFacets(input_ids, position_ids, mask, last_index, row)


def prefix_cache_masks(
    prefix_lengths: list[int], segment_lengths: list[int], dtype: torch.dtype, padding_side: str = "right",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks for the shared-prefix KV-cache mode.

    Returns the prefix mask (B, 1, P, P) for the prefix pass and the segment mask (B*K, 1, S, P + S) for the
    pass over all segments against the prefix cache repeated K times (row b*K + k is prompt k of caption b).
    """
    left = padding_side == "left"
    p_max, s_max = max(prefix_lengths), max(segment_lengths)
    n_seg = len(segment_lengths)
    prefix_seg = segment_ids(prefix_lengths, [], p_max, left)  # (B, P): 0 real, -1 pad
    prefix_mask = facet_attention_mask(prefix_seg, dtype)  # (B, 1, P, P)
    # Segment rows (K, S): a real token of prompt k is PREFIX_SEGMENT-like (0), padding is PAD_SEGMENT.
    seg_rows = segment_ids(segment_lengths, [], s_max, left)
    prefix_keys = prefix_seg.repeat_interleave(n_seg, dim=0)  # (B*K, P)
    seg_keys = seg_rows.repeat(len(prefix_lengths), 1)  # (B*K, S)
    keys = torch.cat([prefix_keys, seg_keys], dim=1)  # (B*K, P+S)
    # Queries are the segment tokens; causal inside the segment, all real prefix keys visible.
    rows = keys.shape[0]
    allowed = torch.zeros(rows, s_max, p_max + s_max, dtype=torch.bool)
    allowed[:, :, :p_max] = (prefix_keys == PREFIX_SEGMENT)[:, None, :]
    causal = torch.ones(s_max, s_max, dtype=torch.bool).tril()
    allowed[:, :, p_max:] = causal & (seg_keys != PAD_SEGMENT)[:, None, :]
    q_pad = (seg_keys == PAD_SEGMENT)[:, :, None]  # (B*K, S, 1)
    allowed &= ~q_pad
    allowed[:, :, p_max:] |= torch.eye(s_max, dtype=torch.bool) & q_pad
    seg_mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return prefix_mask, seg_mask[:, None]
