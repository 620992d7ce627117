"""Our OpenFlamingo loader against OpenFlamingo's own implementation (the open-flamingo package, test oracle)."""

import copy

import pytest
import torch

from frozenvl.flamingo.openflamingo import load_openflamingo
from frozenvl.testing import images, tiny_lm, tiny_tokenizer

of_flamingo = pytest.importorskip("open_flamingo.src.flamingo", reason="open-flamingo is the oracle")


def _tiny_open_clip_visual():
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(3)
    return VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0,
                             output_dim=16).eval()


class _Wrapper(torch.nn.Module):  # OpenFlamingo takes an open_clip model and uses its .visual
    def __init__(self, visual):
        super().__init__()
        self.visual = visual


def _openflamingo_model(lm, tokenizer, visual, every):
    from open_flamingo.src.flamingo_lm import FlamingoLMMixin
    from open_flamingo.src.utils import extend_instance

    tokenizer.add_special_tokens({"additional_special_tokens": ["<|endofchunk|>", "<image>"]})
    tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    extend_instance(lm, FlamingoLMMixin)
    lm.set_decoder_layers_attr_name("model.layers")
    lm.resize_token_embeddings(len(tokenizer))
    visual.output_tokens = True
    model = of_flamingo.Flamingo(_Wrapper(visual), lm, tokenizer.encode("<|endofchunk|>")[-1],
                                 tokenizer.encode("<image>")[-1], vis_dim=32, cross_attn_every_n_layers=every)
    torch.manual_seed(4)
    with torch.no_grad():  # a "trained" checkpoint: open gates, random everything trainable
        for name, p in model.named_parameters():
            if name.endswith(("attn_gate", "ff_gate")):
                p.fill_(0.5)
            elif "perceiver" in name or "gated_cross_attn" in name:
                p.add_(torch.randn_like(p) * 0.05)
        emb = model.lang_encoder.get_input_embeddings().weight
        emb.add_(torch.randn_like(emb) * 0.05)
    return model.eval()


def _trainable_checkpoint(model):
    # What OpenFlamingo's training saves: perceiver, fused layers (under the decoder path), the embedding.
    state = model.state_dict()
    return {k: v.clone() for k, v in state.items()
            if k.startswith("perceiver.") or ".gated_cross_attn_layer." in k or k.endswith("embed_tokens.weight")}


@pytest.mark.parametrize("every", [1, 2])
def test_same_outputs_as_openflamingo(tmp_path, every):
    lm = tiny_lm("llama", seed=5)
    visual = _tiny_open_clip_visual()
    ours_lm, ours_visual = copy.deepcopy(lm), copy.deepcopy(visual)
    of_tok = tiny_tokenizer()
    of_model = _openflamingo_model(lm, of_tok, visual, every)
    path = tmp_path / "checkpoint.pt"
    torch.save(_trainable_checkpoint(of_model), path)

    model, processor = load_openflamingo(path, lm=ours_lm, vision=ours_visual, tokenizer=tiny_tokenizer(),
                                         cross_attn_every=every)
    model.eval()
    text = "<image>a red cube<|endofchunk|><image>two blue"
    batch = processor([text], [images(2, seed=1)])
    assert batch["input_ids"].tolist() == of_tok([text], return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = of_model(vision_x=batch["pixel_values"], lang_x=batch["input_ids"],
                          attention_mask=batch["attention_mask"]).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-4
    # The images matter in both (the comparison is not of two text-only LMs).
    other = processor([text], [images(2, seed=7)])
    with torch.no_grad():
        assert (model(**other).logits - ours).abs().max() > 1e-3


def test_mismatched_checkpoint_lists_keys(tmp_path):
    lm, visual = tiny_lm("llama", seed=5), _tiny_open_clip_visual()
    of_model = _openflamingo_model(copy.deepcopy(lm), tiny_tokenizer(), copy.deepcopy(visual), 2)
    state = _trainable_checkpoint(of_model)
    state.pop("perceiver.latents")
    state["perceiver.something_else"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"missing 1: resampler.latents.*unexpected 1: perceiver.something_else"):
        load_openflamingo(state, lm=lm, vision=visual, tokenizer=tiny_tokenizer(), cross_attn_every=2)


def test_a_converted_model_survives_save_pretrained(tmp_path):
    # OpenFlamingo trained the LM's whole embedding matrix: the saved folder carries its base rows too, so the
    # model reloaded around a fresh LM from the source gives the converted model's logits.
    from frozenvl.flamingo import Flamingo

    lm, visual = tiny_lm("llama", seed=5), _tiny_open_clip_visual()
    of_model = _openflamingo_model(copy.deepcopy(lm), tiny_tokenizer(), copy.deepcopy(visual), 2)
    model, processor = load_openflamingo(_trainable_checkpoint(of_model), lm=lm, vision=visual,
                                         tokenizer=tiny_tokenizer(), cross_attn_every=2)
    assert model.config.save_lm_embeddings
    model.eval().save_pretrained(tmp_path / "saved")
    loaded = Flamingo.from_pretrained(tmp_path / "saved", lm=tiny_lm("llama", seed=5), tokenizer=tiny_tokenizer(),
                                      vision=_tiny_open_clip_visual()).eval()
    batch = processor(["<image>a red cube<|endofchunk|><image>two blue"], [images(2, seed=1)])
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
