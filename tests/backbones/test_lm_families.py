"""Every causal LM family transformers offers offline, as a tiny random config: a fresh Flamingo (gates at 0) is its
LM. Its logits equal the bare LM's (with an image and on plain text), and its cached greedy generation of a left-padded
batch equals the LM's own ``generate``. docs/architecture.md's table 'LM families tested' lists exactly these families.

Also: the LM gets its cache under the argument its ``forward`` declares (``cache`` since transformers 5.24, where
``past_key_values`` is deprecated, removed in 5.40), and an LM that returns no cache (RecurrentGemma keeps its
recurrent state inside its modules) is refused with one message when a cache is asked for.
"""

import copy
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from frozenvl.backbones.language import cache_argument, find_decoder_layers
from frozenvl.flamingo import build
from frozenvl.testing import TINY_FLAMINGO, gap_to_frozen_lm, images, tiny_tokenizer, tiny_vision

COMMON = dict(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0, eos_token_id=1)
# family (transformers' model_type) -> what its tiny config needs beyond COMMON, and the position scheme
FAMILIES = {
    "llama": ({}, "rotary"),
    "mistral": ({"sliding_window": 4}, "rotary, sliding window"),
    "mixtral": ({"num_local_experts": 2, "num_experts_per_tok": 1}, "rotary, mixture of experts"),
    "gemma": ({}, "rotary"),
    "gemma2": ({"sliding_window": 4}, "rotary, sliding window on every other layer"),
    "gemma3_text": ({"sliding_window": 4}, "rotary, sliding window on 5 of 6 layers"),
    "qwen2": ({}, "rotary"),
    "qwen3": ({}, "rotary"),
    "phi": ({}, "partial rotary"),
    "phi3": ({"pad_token_id": None}, "rotary"),
    "smollm3": ({"pad_token_id": None}, "rotary (NoPE on some layers)"),
    "stablelm": ({}, "partial rotary"),
    "persimmon": ({}, "partial rotary"),
    "gptj": ({"rotary_dim": 4}, "partial rotary"),
    "codegen": ({"rotary_dim": 4}, "partial rotary"),
    "gpt_neox": ({}, "partial rotary"),
    "olmo": ({}, "rotary"),
    "olmo2": ({}, "rotary"),
    "cohere": ({}, "rotary"),
    "granite": ({}, "rotary"),
    "starcoder2": ({}, "rotary"),
    "gpt2": ({}, "absolute (learned)"),
    "gpt_bigcode": ({}, "absolute (learned), multi-query"),
    "opt": ({"word_embed_proj_dim": 32, "ffn_dim": 64}, "absolute (learned, offset)"),
    "mpt": ({"max_seq_len": 256, "expansion_ratio": 2}, "ALiBi"),
    "bloom": ({}, "ALiBi"),
    "falcon": ({}, "rotary"),
    "mamba": ({}, "none (state-space)"),
    "jamba": ({"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1,
               "num_experts": 2}, "none (Mamba and attention layers: two classes in one stack)"),
}
TEXTS = ["the cat sat on", "a dog"]  # left padded: the second row


def _tiny_lm(family: str, **overrides) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(family, **{**COMMON, **overrides})
    lm = AutoModelForCausalLM.from_config(config).eval()
    assert sum(p.numel() for p in lm.parameters()) < 300_000  # the tiny config took effect
    return lm


def _fresh(lm: nn.Module):
    reference = copy.deepcopy(lm)
    model, proc = build(lm=lm, tokenizer=tiny_tokenizer(), vision=tiny_vision(), **TINY_FLAMINGO)
    return model.eval(), proc, reference


def _reference_generate(model, reference, batch, max_new_tokens: int) -> torch.Tensor:
    """The LM's own generate with frozenvl's stop rules, in the Flamingo's vocabulary (new rows shared)."""
    reference.set_input_embeddings(model.lm.get_input_embeddings())
    reference.set_output_embeddings(model.lm.get_output_embeddings())
    stops = sorted({model.end_of_chunk_token_id, model.eos_token_id})
    banned = [[model.image_token_id]] + ([[model.pad_token_id]] if model.pad_token_id not in stops else [])
    return reference.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                              pad_token_id=model.pad_token_id, bad_words_ids=banned)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_fresh_flamingo_is_its_lm(family):
    model, proc, reference = _fresh(_tiny_lm(family, **FAMILIES[family][0]))
    with torch.no_grad():
        with_image, plain = gap_to_frozen_lm(model, proc, reference, "<image>a cat sat<|endofchunk|>", images(1))
        assert with_image <= 1e-5 and plain <= 1e-5
        batch = proc(TEXTS, padding_side="left")
        ids = {k: batch[k] for k in ("input_ids", "attention_mask")}
        assert torch.equal(model.generate(**ids, max_new_tokens=5), _reference_generate(model, reference, ids, 5))


def test_a_hybrid_stack_of_two_layer_classes_is_found():
    lm = _tiny_lm("jamba", **FAMILIES["jamba"][0])
    path, layers = find_decoder_layers(lm)
    assert path == "model.layers" and len(layers) == 2
    assert {type(layer).__name__ for layer in layers} == {"JambaMambaDecoderLayer", "JambaAttentionDecoderLayer"}


def test_an_lm_without_a_returned_cache_is_refused_for_caching_and_generates_without():
    """RecurrentGemma keeps its recurrent state in its modules: use_cache=True is one clear error, and
    use_cache=False (recomputing) generates exactly what the LM's own generate does."""
    lm = _tiny_lm("recurrent_gemma", num_hidden_layers=2, block_types=["recurrent", "attention"], lru_width=32,
                  attention_window_size=8, head_dim=8)
    model, proc, reference = _fresh(lm)
    batch = proc(TEXTS[:1])
    ids = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with pytest.raises(ValueError, match="returns no cache.*use_cache=False"):
        model.generate(**ids, max_new_tokens=3)
    assert torch.equal(model.generate(**ids, max_new_tokens=5, use_cache=False),
                       _reference_generate(model, reference, ids, 5))


def test_the_lm_gets_its_cache_under_the_name_its_forward_declares():
    model, proc, _ = _fresh(_tiny_lm("llama"))
    names = []
    model.lm.register_forward_pre_hook(lambda module, args, kwargs: names.append(sorted(kwargs)), with_kwargs=True)
    model.generate(**proc(TEXTS, padding_side="left"), max_new_tokens=3)
    continued = [n for n in names if "cache" in n or "past_key_values" in n]
    assert continued and all("cache" in n and "past_key_values" not in n for n in continued)

    class OldStyle(nn.Module):  # remote code written for transformers < 5.24
        def forward(self, input_ids, past_key_values=None, use_cache=None):
            return input_ids

    assert cache_argument(model.lm) == "cache" and cache_argument(OldStyle()) == "past_key_values"


def test_docs_table_lists_the_families_tested():
    doc = (Path(__file__).parents[2] / "docs" / "architecture.md").read_text()
    section = doc.split("## LM families tested", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| ([^|]+) \|", section, flags=re.M)
    assert [family for family, _ in rows] == list(FAMILIES)
    assert [scheme.strip() for _, scheme in rows] == [scheme for _, scheme in FAMILIES.values()]
