import os

import pytest
import torch

from frozenvl.flame.text_encoder import FacetTextEncoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.mark.slow
def test_fda_equals_naive_on_embedded_smollm2():
    encoder = FacetTextEncoder.from_source("embedded:smollm2-135m", "long")
    assert encoder.num_layers == 30 and encoder.hidden_size == 576 and encoder.layer == 29
    captions = [
        'A golden retriever "Max" leaps to catch a red frisbee above a sunny park lawn, while two children '
        "laugh near a wooden bench and a kite drifts in the blue sky",
        "a cup of coffee?",
    ]
    fda = encoder.encode(captions, mode="fda")
    naive = encoder.encode(captions, mode="naive")
    assert fda.shape == (2, 7, 576)
    rel = ((fda - naive).norm(dim=-1) / naive.norm(dim=-1)).max().item()
    assert rel <= 1e-5
    # The seven facets of a caption are distinct embeddings.
    cos = torch.nn.functional.cosine_similarity(fda[0, :, None], fda[0, None, :], dim=-1)
    assert cos[~torch.eye(7, dtype=torch.bool)].max() < 0.999
