import pytest
import torch

from frozenvl.flame.facet_mask import facet_attention_mask, pack_facets
from frozenvl.flame.text_encoder import FacetTextEncoder
from frozenvl.testing import tiny_lm, tiny_tokenizer

CAPTIONS = [
    "a red cube.",
    "two small blue spheres to the left of a large green cylinder, under a grey sky with clouds",
    "x",
    "a yellow cone",
]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _gold(encoder, captions):
    """Each prompt alone, one caption at a time, no padding and no mask: the definition of a facet embedding."""
    out = []
    for caption in captions:
        tokens = encoder.tokenize(caption)
        rows = []
        for segment in tokens.segments:
            ids = torch.tensor([tokens.prefix + segment])
            rows.append(encoder.base(input_ids=ids, output_hidden_states=True).hidden_states[encoder.layer][0, -1])
        out.append(torch.stack(rows))
    return torch.stack(out)  # (B, K, D)


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def lm(request):
    model, tok = tiny_lm(request.param), tiny_tokenizer()
    with torch.no_grad():
        gold = _gold(FacetTextEncoder(model, tok, "long"), CAPTIONS)  # tokenisation does not depend on padding
    return model, tok, gold


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_three_modes_agree_with_single_prompt_passes(lm, side, attn):
    model, tok, gold = lm
    model.set_attn_implementation(attn)
    enc = FacetTextEncoder(model, tok, "long", padding_side=side)
    assert gold.shape == (4, 7, 32)
    for mode in ("fda", "prefix_cache", "naive"):
        got = enc.encode(CAPTIONS, mode=mode)
        assert _rel(got, gold) <= 1e-5, mode
    # The facets differ from each other (the mask does not collapse them into one).
    assert _rel(gold[:, 0], gold[:, 1]) > 1e-2


def test_embeddings_do_not_depend_on_batch_composition(lm):
    model, tok, _ = lm
    left = FacetTextEncoder(model, tok, "long", padding_side="left")
    right = FacetTextEncoder(model, tok, "long", padding_side="right")
    alone = torch.cat([right.encode([c]) for c in CAPTIONS])
    for enc in (left, right):
        for mode in ("fda", "prefix_cache"):
            mixed = enc.encode(CAPTIONS[::-1], mode=mode).flip(0)
            assert _rel(mixed, alone) <= 1e-5
            pair = enc.encode([CAPTIONS[2], CAPTIONS[1] * 3], mode=mode)[0]
            assert _rel(pair, alone[2]) <= 1e-5


def test_official_compat_leaks_padding_and_differs():
    model, tok = tiny_lm("llama"), tiny_tokenizer()
    enc = FacetTextEncoder(model, tok, "short", padding_side="left", official_compat=True)
    exact = FacetTextEncoder(model, tok, "short", padding_side="left")
    short_alone = enc.encode([CAPTIONS[0]])
    short_padded = enc.encode([CAPTIONS[0], CAPTIONS[1]])[0]
    # The official behaviour depends on the padding in the batch; ours does not.
    assert _rel(short_padded, short_alone[0]) > 1e-3
    assert _rel(exact.encode([CAPTIONS[0], CAPTIONS[1]])[0], exact.encode([CAPTIONS[0]])[0]) <= 1e-5
    with pytest.raises(ValueError, match="official_compat"):
        FacetTextEncoder(model, tok, "short", mode="naive", official_compat=True)


def test_only_the_caption_is_truncated():
    model, tok = tiny_lm("llama"), tiny_tokenizer()
    enc = FacetTextEncoder(model, tok, "short", max_length=300)
    long_caption = "word " * 400
    tokens = enc.tokenize(long_caption)
    assert len(tokens.prefix) + sum(map(len, tokens.segments)) == 300
    assert [tok.decode(s) for s in tokens.segments] == list(enc.prompt_set.prompts)
    assert tok.decode(tokens.prefix).endswith('" . After thinking step by step ,')
    with pytest.raises(ValueError, match="never truncated"):
        FacetTextEncoder(model, tok, "long", max_length=100)


def test_facet_mask_by_hand():
    # One row: prefix of 2 tokens, segments of 2 and 1 tokens, one pad on the right.
    packed = pack_facets([[5, 6]], [[7, 8], [9]], pad_id=0, dtype=torch.float32)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 2]]
    assert packed.last_index.tolist() == [[3, 4]]
    allowed = (packed.attention_mask[0, 0] == 0).int().tolist()
    assert packed.attention_mask.shape == (1, 1, 5, 5) and packed.attention_mask.dtype == torch.float32
    assert allowed == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # segment 2 sees the prefix and itself, not segment 1
    ]
    # Left padding: padding keys are never visible to real queries; a pad query sees only itself.
    seg = torch.tensor([[-1, 0, 1]])
    allowed = (facet_attention_mask(seg, torch.float32)[0, 0] == 0).int().tolist()
    assert allowed == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    leaky = (facet_attention_mask(seg, torch.float32, official="eager")[0, 0] == 0).int().tolist()
    assert leaky[2] == [1, 1, 1] and leaky[0] == [0, 0, 0]  # the official mask: padding rows blank


def test_layer_default_is_penultimate_block_output():
    model, tok = tiny_lm("llama", layers=4), tiny_tokenizer()
    enc = FacetTextEncoder(model, tok, "raw")
    assert enc.layer == 3
    captured = {}
    hook = model.model.layers[2].register_forward_hook(lambda m, i, o: captured.setdefault("h", o))
    try:
        tokens = enc.tokenize("a cat")
        with torch.no_grad():
            model(input_ids=torch.tensor([tokens.prefix + tokens.segments[0]]))
    finally:
        hook.remove()
    block_out = captured["h"][0] if isinstance(captured["h"], tuple) else captured["h"]
    assert _rel(enc.encode(["a cat"], mode="naive")[0, 0], block_out[0, -1]) <= 1e-6
    with pytest.raises(ValueError, match="layer"):
        FacetTextEncoder(model, tok, "raw", layer=5)


def test_prefix_cache_mode_passes_the_cache_under_the_name_the_lm_declares():
    """transformers 5.24 renamed the LM's ``past_key_values`` to ``cache`` (the old name goes in 5.40): the
    prefix-cache mode continues its cache under the current name."""
    model, tok = tiny_lm("llama"), tiny_tokenizer()
    enc = FacetTextEncoder(model, tok, "long")
    names = []
    enc.base.register_forward_pre_hook(lambda module, args, kwargs: names.append(sorted(kwargs)), with_kwargs=True)
    enc.encode(CAPTIONS[:2], mode="prefix_cache")
    continued = [n for n in names if "cache" in n or "past_key_values" in n]
    assert continued and all("cache" in n and "past_key_values" not in n for n in continued)


def test_encoding_reads_no_deprecated_cache_name(capfd):
    """Reading the LM's output never touches ``past_key_values`` (transformers 5.24 prints a deprecation line when a
    script does, once per process): no such line while encoding in every mode."""
    import transformers

    transformers.logging.set_verbosity_warning()
    enc = FacetTextEncoder(tiny_lm("llama"), tiny_tokenizer(), "long")
    for mode in ("fda", "prefix_cache", "naive"):
        enc.encode(CAPTIONS[:2], mode=mode)
    assert "deprecated" not in capfd.readouterr().err
