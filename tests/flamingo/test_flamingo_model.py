import copy

import pytest
import torch

from frozenvl.backbones.language import find_decoder_layers
from frozenvl.constants import WEIGHTS_NAME
from frozenvl.flamingo import Flamingo
from frozenvl.testing import TINY_FLAMINGO as TINY
from frozenvl.testing import (
    TINY_LM_FAMILIES,
    gap_to_frozen_lm,
    images,
    tiny_flamingo,
    tiny_lm,
    tiny_tokenizer,
    tiny_vision,
)

TEXT = "a dog<image>a cat sat<|endofchunk|> then<image>on the mat<|endofchunk|>"


@pytest.mark.parametrize("family", TINY_LM_FAMILIES)
def test_init_reproduces_frozen_lm(family):
    from frozenvl.flamingo import build

    lm = tiny_lm(family, seed=1)
    reference = copy.deepcopy(lm)  # the frozen LM before any wrapping
    model, proc = build(lm=lm, tokenizer=tiny_tokenizer(), vision=tiny_vision(), **TINY)
    # Every logit of the LM's own vocabulary (Qwen2's padded rows that became new tokens aside) is unchanged,
    # with images and on plain text (no new tokens at all).
    with_images, plain_text = gap_to_frozen_lm(model, proc, reference, TEXT, images(2))
    assert with_images <= 1e-5 and plain_text <= 1e-5


@pytest.mark.parametrize("family", TINY_LM_FAMILIES)
def test_decoder_layers_found_generically(family):
    lm = tiny_lm(family)
    path, layers = find_decoder_layers(lm)
    assert len(layers) == lm.config.num_hidden_layers
    assert lm.get_submodule(path) is layers  # the path finds the list again (Flamingo.decoder_layers)


def _positions(ids, token_id):
    return (ids[0] == token_id).nonzero().flatten().tolist()


def test_changing_image_k_changes_nothing_before_it():
    model, proc = tiny_flamingo(open_gates=True)
    imgs = images(2)
    batch = proc([TEXT], [imgs])
    first, second = _positions(batch["input_ids"], model.image_token_id)
    base = model(**batch).logits
    # Change image 2: nothing before the second <image> moves, something after it does.
    other = proc([TEXT], [[imgs[0], images(1, seed=9)[0]]])
    changed = model(**other).logits
    assert torch.equal(base[0, :second], changed[0, :second])
    assert (base[0, second:] - changed[0, second:]).abs().max() > 1e-4
    # Change both: tokens before the first image are untouched.
    both = model(**proc([TEXT], [images(2, seed=5)])).logits
    assert torch.equal(base[0, :first], both[0, :first])
    assert (base[0, first:] - both[0, first:]).abs().max() > 1e-4


def test_text_before_an_image_does_not_depend_on_the_image_being_there():
    """Not its content (above), nor its presence: the text alone gives the same outputs as the text followed by
    an image (the dense FFW acts on every token, with or without images in the call)."""
    model, proc = tiny_flamingo(open_gates=True)
    text = "a dog sat on the mat<|endofchunk|>"
    with_image = proc([text + "<image>a cat"], [images(1)])
    alone = proc([text], [[]])
    n = alone["input_ids"].shape[1]
    assert torch.equal(with_image["input_ids"][:, :n], alone["input_ids"])
    full = model(**with_image).logits
    assert torch.allclose(model(**alone).logits[0], full[0, :n], atol=1e-5)
    # and the open gates do act on text that sees no image: it is not the frozen LM's output
    lm = model.lm(input_ids=alone["input_ids"]).logits
    assert (lm[0] - full[0, :n]).abs().max() > 1e-4


def test_only_immediate_vs_all_previous():
    text = "<image>one two<|endofchunk|><image>three four five"
    imgs, swapped = images(2), None
    for only_immediate in (True, False):
        model, proc = tiny_flamingo(open_gates=True, only_attend_immediate=only_immediate, cross_attn_every=1)
        batch = proc([text], [imgs])
        second = _positions(batch["input_ids"], model.image_token_id)[1]
        swapped = proc([text], [[images(1, seed=3)[0], imgs[1]]])
        # Self-attention carries image 1 into later tokens through the LM, so compare the cross-attention input:
        # the attention weights on image 1's tokens of every query after image 2.
        out_a, out_b = model(**batch), model(**swapped)
        assert out_a.logits.shape == out_b.logits.shape
        from frozenvl.flamingo.media_mask import build_media_mask, text_time

        tt = text_time(batch["input_ids"], model.image_token_id)
        mask = build_media_mask(tt, torch.zeros_like(tt), torch.zeros(1, 2, dtype=torch.long), 4, only_immediate,
                                torch.float32)
        sees_first = mask.attn_bias[0, 0, second:, :4] == 0  # keys of image 1 for tokens after image 2
        assert bool(sees_first.any()) is (not only_immediate)


def test_tokens_before_first_image_get_exactly_zero_cross_attention():
    from frozenvl.flamingo.cross_attention import MaskedCrossAttention
    from frozenvl.flamingo.media_mask import build_media_mask, text_time

    attn = MaskedCrossAttention(dim=16, dim_visual=8, dim_head=4, heads=2)
    ids = torch.tensor([[5, 6, 7, 99, 8, 9]])  # 99 = <image> at position 3
    tt = text_time(ids, 99)
    media = torch.randn(1, 1, 3, 8)
    x = torch.randn(1, 6, 16)
    for only_immediate in (True, False):
        mask = build_media_mask(tt, torch.zeros_like(tt), torch.zeros(1, 1, dtype=torch.long), 3, only_immediate,
                                torch.float32)
        out = attn(x, attn.project_media(media), mask)
        assert torch.equal(out[0, :3], torch.zeros(3, 16))  # exactly zero, not uniform attention
        assert out[0, 3:].abs().min() > 0


def test_packed_documents_do_not_see_each_others_images():
    from frozenvl.flamingo.media_mask import build_media_mask, image_documents, text_time

    ids = torch.tensor([[99, 1, 2, 3, 4, 99, 5, 6]])  # doc 0: [99 1 2], doc 1: [3 4 99 5 6]
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    tt = text_time(ids, 99)
    media_docs = image_documents(ids, 99, docs, 2)
    assert media_docs.tolist() == [[0, 1]]
    for only_immediate in (True, False):
        mask = build_media_mask(tt, docs, media_docs, 1, only_immediate, torch.float32)
        allowed = (mask.attn_bias[0, 0] == 0).int().tolist()
        assert allowed[3] == [0, 0] and allowed[4] == [0, 0]  # doc 1 before its image: sees nothing
        assert mask.has_media[0, 3:5].sum() == 0
        assert allowed[6] == [0, 1]  # doc 1 after its image: only its own image
        assert allowed[1] == [1, 0]


def test_packed_documents_in_the_model():
    model, proc = tiny_flamingo(open_gates=True)
    text = "<image>a b c<|endofchunk|>d e f<image>g h"
    batch = proc([text], [images(2)])
    ids = batch["input_ids"]
    second = _positions(ids, model.image_token_id)[1]
    docs = torch.zeros_like(ids)
    docs[0, second - 3:] = 1
    # With the documents separated, doc 1's tokens before its image see no image: the cross-attention of each
    # fused layer gives them zero output. Check through a forward hook on the cross-attention modules.
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
             for n, m in model.named_modules() if n.endswith("xattn.attn")]
    model(**batch, document_ids=docs)
    for h in hooks:
        h.remove()
    assert seen and all(torch.equal(o[0, second - 3:second], torch.zeros_like(o[0, second - 3:second])) for o in seen)


def test_video_temporal_embeddings_matter():
    model, _ = tiny_flamingo()
    frames = torch.randn(1, 1, 3, 3, 32, 32)  # (B, T_img, F, C, H, W)
    reversed_frames = frames.flip(2)
    a, b = model.encode_media(frames), model.encode_media(reversed_frames)
    assert (a - b).abs().max() > 1e-4
    no_time, _ = tiny_flamingo(max_frames=None)
    assert torch.allclose(no_time.encode_media(frames), no_time.encode_media(reversed_frames), atol=1e-5)


def test_one_step_trains_only_new_rows_and_fusion():
    model, proc = tiny_flamingo()
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    batch = proc([TEXT], [images(2)])
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert not (changed & frozen), sorted(changed & frozen)[:5]
    assert any("new_weight" in n for n in changed)
    assert any("xattn" in n for n in changed) and any("resampler" in n for n in changed)
    emb = model.lm.get_input_embeddings()
    assert torch.equal(emb.base.weight, before[[n for n in before if n.endswith("embed_tokens.base.weight")][0]])
    assert model.vision.module.training is False


def test_batch_equals_rows_forward_right_padding():
    model, proc = tiny_flamingo(open_gates=True)
    texts = ["<image>a cat sat on the mat<|endofchunk|>", "x<image>dog<|endofchunk|><image>bird"]
    media = [images(1), images(2, seed=1)]
    batch = model(**proc(texts, media)).logits
    for i, (t, m) in enumerate(zip(texts, media)):
        alone = model(**proc([t], [m])).logits
        L = alone.shape[1]
        assert torch.allclose(batch[i, :L], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_batch_equals_rows_and_cache_equals_recompute(num_beams):
    model, proc = tiny_flamingo(open_gates=True, family="qwen2")
    texts = ["<image>a cat<|endofchunk|><image>a", "<image>the big brown dog is"]
    media = [images(2), images(1, seed=2)]
    batch = proc(texts, media, padding_side="left")
    out = model.generate(**batch, max_new_tokens=6, num_beams=num_beams)
    uncached = model.generate(**batch, max_new_tokens=6, num_beams=num_beams, use_cache=False)
    assert torch.equal(out, uncached)
    L = batch["input_ids"].shape[1]
    for i, (t, m) in enumerate(zip(texts, media)):
        single = proc([t], [m], padding_side="left")
        alone = model.generate(**single, max_new_tokens=6, num_beams=num_beams)
        new_alone = alone[0, single["input_ids"].shape[1]:]
        new_batch = out[i, L:L + len(new_alone)]
        assert torch.equal(new_batch, new_alone)


def test_generate_never_emits_image_and_stops_at_end_of_chunk():
    model, proc = tiny_flamingo()
    head = model.lm.get_output_embeddings()
    slot = head.new_token_ids.index(model.image_token_id)
    with torch.no_grad():
        head.new_bias[slot] = 1e4  # the model "wants" <image> above all
    batch = proc(["<image>a"], [images(1)], padding_side="left")
    out = model.generate(**batch, max_new_tokens=5)
    assert model.image_token_id not in out[0, batch["input_ids"].shape[1]:].tolist()
    with torch.no_grad():
        head.new_bias[slot] = 0.0
        head.new_bias[head.new_token_ids.index(model.end_of_chunk_token_id)] = 1e4
    for beams in (1, 3):
        out = model.generate(**batch, max_new_tokens=5, num_beams=beams)
        assert out[0, batch["input_ids"].shape[1]:].tolist() == [model.end_of_chunk_token_id]


def test_sampling_is_seeded():
    model, proc = tiny_flamingo(open_gates=True)
    batch = proc(["<image>a"], [images(1)], padding_side="left")
    runs = [model.generate(**batch, max_new_tokens=8, do_sample=True, top_k=20, top_p=0.9,
                           generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape[1] > batch["input_ids"].shape[1]


def test_save_load_round_trip(tmp_path):
    model, proc = tiny_flamingo(open_gates=True)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    batch = proc([TEXT], [images(2)])
    expected = model(**batch).logits
    model.save_pretrained(tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert WEIGHTS_NAME in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "ckpt" / WEIGHTS_NAME))
    assert not any(".base." in k or "vision." in k for k in stored)  # frozen backbones are referenced
    fresh_lm = tiny_lm("llama", seed=0)
    loaded = Flamingo.from_pretrained(tmp_path / "ckpt", lm=fresh_lm, tokenizer=tiny_tokenizer(),
                                      vision=tiny_vision(seed=0)).eval()
    assert torch.equal(loaded(**batch).logits, expected)


def test_from_pretrained_rejects_mismatched_checkpoint(tmp_path):
    model, _ = tiny_flamingo()
    model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises((KeyError, ValueError), match="missing|shape"):
        Flamingo.from_pretrained(tmp_path / "ckpt", lm=tiny_lm("llama"), tokenizer=tiny_tokenizer(),
                                 vision=tiny_vision(), num_latents=8)


@pytest.mark.parametrize("resampler", ["perceiver", "mlp", "transformer"])
def test_resamplers_give_fixed_token_count(resampler):
    model, _ = tiny_flamingo(resampler=resampler)
    out = model.encode_media(torch.randn(2, 3, 32, 32).view(1, 2, 3, 32, 32))
    assert out.shape == (1, 2, 4, 16)


def test_ablation_switches_and_placement():
    from frozenvl.flamingo.fusion import fused_layer_indices

    assert fused_layer_indices(8, 4, "first") == [0, 4]
    assert fused_layer_indices(8, 4, "openflamingo") == [3, 7]
    assert fused_layer_indices(3, 1, "first") == [0, 1, 2]
    vanilla, _ = tiny_flamingo(xattn_kind="vanilla")
    assert not any(".xattn.ff." in n for n, _ in vanilla.named_parameters())
    ungated, proc = tiny_flamingo(gating="none")
    batch = proc([TEXT], [images(2)])
    gated, _ = tiny_flamingo()
    # Without tanh gates the images act from the start.
    assert (ungated(**batch).logits - gated(**batch).logits).abs().max() > 1e-4


def test_upper_placement_fuses_the_upper_half_and_the_backward_pass_stops_there(tmp_path):
    from frozenvl.flamingo.fusion import fused_layer_indices

    assert fused_layer_indices(30, 4, "upper") == [15, 19, 23, 27]  # the demo's SmolLM2-135M
    assert fused_layer_indices(8, 2, "upper") == [4, 6]
    model, proc = tiny_flamingo(placement="upper", cross_attn_every=1, open_gates=True)  # 4 layers: blocks at 2, 3
    assert model.fused_indices == [2, 3]
    _, layers = find_decoder_layers(model.lm)
    needs_grad = {}
    hooks = [layer.register_forward_hook(lambda m, a, out, i=i: needs_grad.__setitem__(
        i, (out[0] if isinstance(out, tuple) else out).requires_grad)) for i, layer in enumerate(layers)]
    model.train()
    batch = proc([TEXT], [images(2)])
    model(**batch, labels=batch["input_ids"]).loss.backward()
    for h in hooks:
        h.remove()
    assert needs_grad == {0: False, 1: False, 2: True, 3: True}  # no graph (no backward) below the lowest block
    blocks = [n for n, p in model.named_parameters() if ".xattn." in n and p.requires_grad]
    assert blocks and all(model.get_parameter(n).grad is not None for n in blocks)
    assert not model.lm.get_input_embeddings().new_weight.requires_grad  # else the backward reaches layer 0
    saved = tmp_path / "upper"
    model.eval().save_pretrained(saved)
    again = Flamingo.from_pretrained(saved, lm=tiny_lm(), tokenizer=tiny_tokenizer(), vision=tiny_vision())
    assert again.fused_indices == [2, 3]
    assert torch.equal(again(**batch).logits, model(**batch).logits)


def test_unfrozen_vision_encoder_gets_gradients():
    model, proc = tiny_flamingo()
    for p in model.vision.parameters():
        p.requires_grad_(True)
    batch = proc([TEXT], [images(2)])
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(p.grad is not None for p in model.vision.parameters())
    frozen, proc = tiny_flamingo()
    frozen(**batch, labels=batch["input_ids"]).loss.backward()
    assert all(p.grad is None for p in frozen.vision.parameters())


def test_cache_select_with_same_media_keeps_the_visual_state_a_gather_would_give():
    model, proc = tiny_flamingo(open_gates=True)
    batch = proc(["<image>a cat", "<image>the dog"], [images(1), images(1, seed=1)], padding_side="left")
    beams = {k: v.repeat_interleave(2, dim=0) for k, v in batch.items() if torch.is_tensor(v)}  # 2 prompts x 2
    with torch.no_grad():
        cache = model(**beams, use_cache=True).cache
    assert cache.xattn_kv  # the keys and values the shortcut keeps
    within = torch.tensor([1, 1, 3, 2])  # beam reordering never leaves a prompt's rows
    gathered = cache.select(within)  # select leaves its input as it was: no copy needed to select again
    kept = cache.select(within, same_media=True)
    assert torch.equal(kept.media, gathered.media) and torch.equal(kept.media_docs, gathered.media_docs)
    for layer, (k, v) in gathered.xattn_kv.items():
        assert torch.equal(kept.xattn_kv[layer][0], k) and torch.equal(kept.xattn_kv[layer][1], v)
    assert torch.equal(kept.attention_mask, gathered.attention_mask)
    across = cache.select(torch.tensor([2, 2, 0, 0]))  # rows of the other prompt: media move
    assert not torch.equal(across.media, cache.media)
