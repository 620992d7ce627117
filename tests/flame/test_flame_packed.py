"""The packed FDA mode: several captions per row, no padding between them, the same facets as alone."""

import pytest
import torch

from frozenvl.flame.facet_mask import pack_facets_dense, pack_rows
from frozenvl.flame.text_encoder import FacetTextEncoder
from frozenvl.testing import tiny_lm, tiny_tokenizer

CAPTIONS = ["a red cube.", "two small blue spheres to the left of a large green cylinder, under a grey sky", "x",
            "a yellow cone on a table", "an orange circle"]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_pack_rows_first_fit_decreasing():
    assert pack_rows([5, 3, 4, 2], 7) == [[0, 3], [2, 1]]
    assert pack_rows([9, 1], 4) == [[0], [1]]  # an item longer than a row gets its own


def test_packed_layout_by_hand():
    packed = pack_facets_dense([[5, 6], [7]], [[8], [9]], pad_id=0, dtype=torch.float32, capacity=7)
    assert packed.input_ids.tolist() == [[5, 6, 8, 9, 7, 8, 9]]  # both captions in one row, longest first
    assert packed.position_ids.tolist() == [[0, 1, 2, 2, 0, 1, 1]]
    assert packed.row.tolist() == [0, 0] and packed.last_index.tolist() == [[2, 3], [5, 6]]
    allowed = (packed.attention_mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 1, 0, 0, 0],  # segment 2 of caption 0: its prefix and itself
        [0, 0, 0, 0, 1, 0, 0],  # caption 1 never sees caption 0
        [0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 1, 0, 1],
    ]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_each_caption_alone(family, attn):
    model, tok = tiny_lm(family), tiny_tokenizer()
    model.set_attn_implementation(attn)
    encoder = FacetTextEncoder(model, tok, "short", pack_tokens=700)
    alone = torch.cat([encoder.encode([c], mode="naive") for c in CAPTIONS])  # (B, K, D), no padding at all
    packed = pack_facets_dense([encoder.tokenize(c).prefix for c in CAPTIONS], encoder._segments, encoder.pad_id,
                               torch.float32, capacity=700)
    assert packed.input_ids.shape[0] < len(CAPTIONS)  # captions share rows
    default = FacetTextEncoder(model, tok, "short")  # rows no longer than the longest caption's
    assert _rel(default.encode(CAPTIONS, mode="packed"), alone) <= 1e-5
    got = encoder.encode(CAPTIONS, mode="packed")
    assert _rel(got, alone) <= 1e-5
    # All captions in one row: still each caption alone (the document mask keeps them apart).
    one_row = FacetTextEncoder(model, tok, "short", pack_tokens=10_000)
    assert _rel(one_row.encode(CAPTIONS, mode="packed"), alone) <= 1e-5
    assert _rel(encoder.encode(CAPTIONS[::-1], mode="packed").flip(0), alone) <= 1e-5
