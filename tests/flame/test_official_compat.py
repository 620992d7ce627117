"""official_compat against a faithful reimplementation of the official FLAME embedding code, in padded batches.

The oracle below follows the official ``MultiPromptEOLEmbeddingsLLM.forward`` (MIV-XJTU/FLAME,
src/open_clip/multiprompteol_embeddings.py) step by step, on the same token ids: rows left-padded with id 0, a
(B, L, L) mask ``tril * real[query]`` (padding query rows blank, padding keys visible), segment boundaries found
in row 0 (the last K occurrences of the final quote token, and the last occurrence of the separator token that
ends the prefix), earlier segments blanked for each segment's rows, the mask expanded over heads and turned into
0 / finfo.min, positions left to the model (0..L-1), the hidden state of block ``layer`` read at each quote.
transformers 4.43 (the official pin) then unmasks fully masked rows on CUDA with SDPA
(``AttentionMaskConverter._unmask_unattended``): reimplemented as ``_unmask_unattended`` for the "sdpa" backend.
"""

import pytest
import torch

from frozenvl.flame.facet_mask import PAD_SEGMENT, facet_attention_mask, pack_facets
from frozenvl.flame.text_encoder import FacetTextEncoder
from frozenvl.testing import tiny_lm, tiny_tokenizer

CAPTIONS = ["a red cube.", "two small blue spheres, left of a large green cylinder under a grey sky", "x"]
PAD_ID = 0  # the official tokenizer.pad_token_id


def _official_mask(input_ids, real, quote_id, sep_id, template_num, num_heads, dtype):
    batch_size, seq_length = input_ids.shape
    mask = real.to(dtype).clone()  # (B, L)
    tril = torch.tril(torch.ones((batch_size, seq_length, seq_length), dtype=dtype))
    mask = mask.unsqueeze(-1) * tril  # (B, L, L): padding *query* rows blank, padding keys kept
    quote_indices = torch.where(input_ids[0] == quote_id)[0]
    sep_indices = torch.where(input_ids[0] == sep_id)[0]
    last_n_quotes = quote_indices[-template_num:]
    first_sep_index = sep_indices[-1]
    assert len(last_n_quotes) == template_num
    for i in range(template_num):
        if i == 0:
            mask[:, first_sep_index + 1:last_n_quotes[i] + 1, last_n_quotes[i] + 1:] = 0
        else:
            mask[:, last_n_quotes[i - 1] + 1:last_n_quotes[i] + 1, last_n_quotes[i] + 1:] = 0
            mask[:, last_n_quotes[i - 1] + 1:last_n_quotes[i] + 1, first_sep_index + 1:last_n_quotes[i - 1] + 1] = 0
    mask = mask.unsqueeze(1).expand(batch_size, num_heads, seq_length, seq_length)
    mask = mask.masked_fill(mask == 0, torch.finfo(dtype).min)
    mask = mask.masked_fill(mask == 1, 0)
    return mask, last_n_quotes


def _unmask_unattended(mask, min_dtype):
    return mask.mul(~torch.all(mask == min_dtype, dim=-1, keepdim=True))


def _official_embeddings(encoder, captions, backend):
    """(B, K, D): the official recipe on frozenvl's token ids for the same captions."""
    tok = encoder.tokenizer
    rows = []
    for caption in captions:
        tokens = encoder.tokenize(caption)
        rows.append(tokens.prefix + [t for s in tokens.segments for t in s])
    length = max(map(len, rows))
    input_ids = torch.tensor([[PAD_ID] * (length - len(r)) + r for r in rows])  # left padding
    real = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    sep_id = tok.convert_tokens_to_ids(",")  # the official probe's 10th-last token under Mistral's tokenizer
    dtype = encoder.dtype
    mask, quotes = _official_mask(input_ids, real, input_ids[0, -1], sep_id, encoder.num_facets,
                                  encoder.model.config.num_attention_heads, dtype)
    if backend == "sdpa":
        mask = _unmask_unattended(mask, torch.finfo(dtype).min)
    with torch.no_grad():
        hidden = encoder.base(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
    return hidden.hidden_states[encoder.layer][:, quotes]  # (B, K, D)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama"), tiny_tokenizer()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_official_compat_equals_the_official_recipe_in_a_padded_batch(lm, backend, attn):
    model, tok = lm
    model.set_attn_implementation(attn)
    encoder = FacetTextEncoder(model, tok, "long", official_compat=backend)
    assert encoder.padding_side == "left" and encoder.pad_id == PAD_ID
    official = _official_embeddings(encoder, CAPTIONS, backend)
    assert official.shape == (3, 7, 32)
    got = encoder.encode(CAPTIONS)
    assert _rel(got, official) <= 1e-6
    # The batch has padding that matters: the same caption alone gives other official embeddings.
    alone = _official_embeddings(encoder, CAPTIONS[2:], backend)
    assert _rel(official[2], alone[0]) > 1e-3
    assert _rel(encoder.encode(CAPTIONS[2:]), alone) <= 1e-6
    # The two backends differ (what a blank padding row computes), and so does frozenvl's exact default.
    other = _official_embeddings(encoder, CAPTIONS, "eager" if backend == "sdpa" else "sdpa")
    assert _rel(other[2], official[2]) > 1e-4
    exact = FacetTextEncoder(model, tok, "long", padding_side="left").encode(CAPTIONS)
    assert _rel(exact[2], official[2]) > 1e-3


def test_padding_rows_where_the_old_compat_let_them_see_themselves(lm):
    """The old compat mask (a padding query sees only itself) is not the official one in a padded batch."""
    model, tok = lm
    model.set_attn_implementation("eager")
    encoder = FacetTextEncoder(model, tok, "long", official_compat="eager")
    official = _official_embeddings(encoder, CAPTIONS, "eager")
    prefixes = [encoder.tokenize(c).prefix for c in CAPTIONS]
    packed = pack_facets(prefixes, encoder._segments, PAD_ID, torch.float32, "left", official="eager")
    lengths = torch.tensor([len(p) + sum(map(len, encoder._segments)) for p in prefixes])
    length = packed.input_ids.shape[1]
    pad_rows = torch.arange(length)[None] < (length - lengths)[:, None]  # (B, L): left padding
    old = packed.attention_mask.clone()
    eye = torch.eye(old.shape[-1], dtype=torch.bool)
    old[:, 0].masked_fill_(eye & pad_rows[:, :, None], 0)  # the old rule: a padding row sees its own column
    with torch.no_grad():
        hidden = encoder.base(input_ids=packed.input_ids, attention_mask=old, position_ids=packed.position_ids,
                              output_hidden_states=True).hidden_states[encoder.layer]
    old_emb = hidden[torch.arange(3)[:, None], packed.last_index]
    assert _rel(old_emb[2], official[2]) > 1e-3


def test_official_mask_rows_by_hand():
    seg = torch.tensor([[PAD_SEGMENT, 0, 1, 2]])  # one pad, one prefix token, two segments of one token
    eager = (facet_attention_mask(seg, torch.float32, "eager")[0, 0] == 0).int().tolist()
    assert eager == [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]]  # the pad row blank
    sdpa = (facet_attention_mask(seg, torch.float32, "sdpa")[0, 0] == 0).int().tolist()
    assert sdpa == [[1, 1, 1, 1], *eager[1:]]  # unmasked: every key of the row
    with pytest.raises(ValueError, match="official"):
        facet_attention_mask(seg, torch.float32, "flash")


def test_official_compat_options(lm):
    model, tok = lm
    assert FacetTextEncoder(model, tok, "raw", official_compat=True).official_compat == "sdpa"
    assert FacetTextEncoder(model, tok, "raw").describe()["official_compat"] is False
    with pytest.raises(ValueError, match="left"):
        FacetTextEncoder(model, tok, "raw", official_compat=True, padding_side="right")
    with pytest.raises(ValueError, match="official_compat"):
        FacetTextEncoder(model, tok, "raw", official_compat="flash")
