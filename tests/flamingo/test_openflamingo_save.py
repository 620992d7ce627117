"""OpenFlamingo checkpoints as OpenFlamingo's training writes them load into frozenvl with OpenFlamingo's logits.

The checkpoint is made by OpenFlamingo's own code (the open-flamingo package, test oracle): its factory
``create_model_and_transforms`` builds the model around a tiny random LM saved to a folder and a tiny open_clip
model registered as a config; the trainable tensors are perturbed (a "trained" model); ``save_checkpoint`` of
its training script writes ``checkpoint_0.pt`` through its trainable-state filter, which keeps every tensor whose
name contains ``embed``, frozen ones included. Four LM families: Llama, MPT, GPT-NeoX (untied head) and OPT
(learned positions).
"""

from __future__ import annotations

import copy
import json
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from frozenvl.flamingo.openflamingo import load_openflamingo
from frozenvl.testing import images, tiny_lm, tiny_tokenizer

pytest.importorskip("open_flamingo.src.factory", reason="open-flamingo is the oracle")
open_clip = pytest.importorskip("open_clip")

VISION = "frozenvl-test-tiny-vit"  # an open_clip model config registered below
TEXT = "<image>a red cube<|endofchunk|><image>two blue"


def _tiny_family_lm(family: str) -> torch.nn.Module:
    import transformers as tf

    if family in ("llama", "opt"):
        return tiny_lm(family, seed=5)
    torch.manual_seed(5)
    if family == "mpt":  # ALiBi positions, tied embeddings (OpenFlamingo-3B / -9B)
        return tf.MptForCausalLM(tf.MptConfig(vocab_size=258, d_model=32, n_heads=4, n_layers=4,
                                              expansion_ratio=2, max_seq_len=512)).eval()
    if family == "gpt_neox":  # rotary, untied head `embed_out` in transformers 4 (OpenFlamingo-4B's RedPajama)
        return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(
            vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
            max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)).eval()
    raise ValueError(family)


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8,
                             "mlp_ratio": 2.0},
              "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    path = tmp_path_factory.mktemp("open_clip") / f"{VISION}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return VISION


@pytest.fixture
def train_utils(monkeypatch):
    # OpenFlamingo's training utilities import wandb at module level; saving never calls it (report_to_wandb off)
    monkeypatch.setitem(sys.modules, "wandb", sys.modules.get("wandb") or types.ModuleType("wandb"))
    from open_flamingo.train import train_utils

    return train_utils


def _openflamingo_checkpoint(tmp_path, family: str, every: int, train_utils, vision: str):
    """(OpenFlamingo model, its tokenizer, LM folder, path of the checkpoint its training script wrote)."""
    from open_flamingo.src.factory import create_model_and_transforms

    lm_dir = tmp_path / "lm"
    _tiny_family_lm(family).save_pretrained(lm_dir)
    tiny_tokenizer().save_pretrained(lm_dir)
    torch.manual_seed(3)
    model, _, tokenizer = create_model_and_transforms(vision, None, str(lm_dir), str(lm_dir),
                                                      cross_attn_every_n_layers=every, use_local_files=True)
    torch.manual_seed(4)
    with torch.no_grad():  # "trained": open gates, every trainable tensor moved (the whole input embedding too)
        for name, p in model.named_parameters():
            if name.endswith(("attn_gate", "ff_gate")):
                p.fill_(0.5)
            elif p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    args = SimpleNamespace(fsdp=False, rank=0, run_name=str(tmp_path / "run"), report_to_wandb=False,
                           save_checkpoints_to_wandb=False, delete_previous_checkpoint=False)
    train_utils.save_checkpoint(model, optimizer, scheduler, 0, args)
    return model.eval(), tokenizer, lm_dir, tmp_path / "run" / "checkpoint_0.pt"


def _load_ours(path, lm_dir, of_model, every, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, processor = load_openflamingo(path, lm=AutoModelForCausalLM.from_pretrained(lm_dir),
                                         vision=copy.deepcopy(of_model.vision_encoder),
                                         tokenizer=AutoTokenizer.from_pretrained(lm_dir), cross_attn_every=every,
                                         **kwargs)
    return model.eval(), processor


def _logit_gap(model, processor, of_model, of_tokenizer, vocab: int | None = None) -> float:
    """Largest |difference| of the two models' logits (over the first ``vocab`` columns when given)."""
    batch = processor([TEXT], [images(2, seed=1)])
    assert batch["input_ids"].tolist() == of_tokenizer([TEXT], return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = of_model(vision_x=batch["pixel_values"], lang_x=batch["input_ids"],
                          attention_mask=batch["attention_mask"]).logits
        assert ours.shape == theirs.shape
        # the images matter (the comparison is not of two text-only LMs)
        other = processor([TEXT], [images(2, seed=7)])
        assert (model(**other).logits - ours).abs().max() > 1e-3
    return (ours - theirs)[..., :vocab].abs().max().item()


@pytest.mark.parametrize("family, every", [("llama", 2), ("mpt", 1), ("gpt_neox", 2), ("opt", 4)])
def test_a_checkpoint_saved_by_openflamingo_gives_its_logits(tmp_path, family, every, train_utils, tiny_open_clip):
    of_model, of_tokenizer, lm_dir, path = _openflamingo_checkpoint(tmp_path, family, every, train_utils,
                                                                    tiny_open_clip)
    saved = torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]
    frozen_embeds = {k for k, v in of_model.named_parameters()
                     if "embed" in k and not v.requires_grad and k.startswith("lang_encoder.")}
    assert frozen_embeds <= saved.keys()  # the filter keeps frozen tensors named *embed*
    if family == "opt":
        assert "lang_encoder.model.decoder.embed_positions.weight" in saved
    model, processor = _load_ours(path, lm_dir, of_model, every)
    if family != "gpt_neox":
        assert _logit_gap(model, processor, of_model, of_tokenizer) < 1e-4
        return
    # The untied head is frozen and, named `lm_head` since transformers 5, no longer matches the filter's
    # "embed": the new tokens' output rows are not in the checkpoint (OpenFlamingo draws them anew at every
    # initialisation, see the next test for transformers 4's `embed_out`); the base vocabulary's logits agree.
    assert not any(k.endswith(("lm_head.weight", "embed_out.weight")) for k in saved)
    assert _logit_gap(model, processor, of_model, of_tokenizer, vocab=258) < 1e-4


def test_transformers_4_names_map_to_the_current_ones(tmp_path, train_utils, tiny_open_clip):
    # Released checkpoints were written with transformers 4, where GPT-NeoX's untied head was `embed_out`: a
    # frozen tensor whose name contains "embed", so OpenFlamingo's filter kept it (the new tokens' rows with it).
    of_model, of_tokenizer, lm_dir, path = _openflamingo_checkpoint(tmp_path, "gpt_neox", 2, train_utils,
                                                                    tiny_open_clip)
    state = torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]
    state["lang_encoder.embed_out.weight"] = of_model.lang_encoder.lm_head.weight.detach().clone()
    model, processor = _load_ours(state, lm_dir, of_model, 2)
    assert _logit_gap(model, processor, of_model, of_tokenizer) < 1e-4


def test_a_frozen_tensor_that_differs_from_the_lm_is_one_error_naming_it(tmp_path, train_utils, tiny_open_clip):
    of_model, _, lm_dir, path = _openflamingo_checkpoint(tmp_path, "opt", 4, train_utils, tiny_open_clip)
    state = torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]
    key = "lang_encoder.model.decoder.embed_positions.weight"
    state[key] = state[key] + 0.5  # trained on another LM
    differs = r"differ from the LM's own.*embed_positions\.weight \(max \|difference\| 0\.5\)"
    with pytest.raises(ValueError, match=differs):
        _load_ours(state, lm_dir, of_model, 4)
    state[key] = state[key][:-1]
    with pytest.raises(ValueError, match=r"embed_positions\.weight: shape"):
        _load_ours(state, lm_dir, of_model, 4)
    state.pop(key)
    state["lang_encoder.model.decoder.embed_scale"] = torch.ones(1)  # no such tensor in the LM
    with pytest.raises(KeyError, match=r"unexpected 1: lang_encoder\.model\.decoder\.embed_scale"):
        _load_ours(state, lm_dir, of_model, 4)


def test_a_whole_unfiltered_state_dict_loads_too(tmp_path, train_utils, tiny_open_clip):
    # Every frozen LM tensor is then in the file (and the vision tower, ignored): each equals the LM's own.
    of_model, of_tokenizer, lm_dir, _ = _openflamingo_checkpoint(tmp_path, "mpt", 2, train_utils, tiny_open_clip)
    state = {f"module.{k}": v for k, v in of_model.state_dict().items()}  # as a DDP-wrapped model saves it
    assert any(".decoder_layer." in k for k in state)
    model, processor = _load_ours(state, lm_dir, of_model, 2)
    assert _logit_gap(model, processor, of_model, of_tokenizer) < 1e-4
