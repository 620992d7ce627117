"""The CLIP baseline: the same image tower as FLAME, a trainable text tower, FLAME's evaluation API."""

import pytest
import torch

from frozenvl.flame.baseline import ClipBaseline, ClipBaselineConfig, baseline_config
from frozenvl.flame.evaluate import score_retrieval, score_zero_shot
from frozenvl.flame.model import FlameModel, flame_config
from frozenvl.flame.simple_tokenizer import BOS, EOS, PAD, SimpleTokenizer, TokenizerConfig


def _small(**tok) -> ClipBaselineConfig:
    return baseline_config("tiny", embed_dim=16, text={"width": 32, "layers": 2, "heads": 2},
                           tokenizer={"vocab_size": 512, "max_length": 16, **tok})


def test_word_tokenizer_is_stable_lowercased_and_bounded():
    tok = SimpleTokenizer(TokenizerConfig(vocab_size=512, max_length=6))
    ids = tok.encode("A red square.")
    assert ids[0] == BOS and ids[-1] == EOS and len(ids) == 6  # [BOS] a red square . [EOS]
    assert ids == tok.encode("a RED   square .")  # case and spacing do not matter, punctuation is a token
    # A stable hash (not Python's salted hash): the same ids in every process, pinned here.
    assert ids[1:-1] == [tok._word_id(w) for w in ("a", "red", "square", ".")] == [35, 326, 283, 244]
    long = tok.encode("one two three four five six seven")
    assert len(long) == 6 and long[-1] == EOS  # cut to max_length, EOS kept
    batch = tok(["a red square", "a"])
    assert batch["input_ids"].shape == (2, 5) and batch["input_ids"][1, 3:].tolist() == [PAD, PAD]
    assert batch["attention_mask"].sum(1).tolist() == [5, 3]


def test_byte_tokenizer():
    tok = SimpleTokenizer(TokenizerConfig(kind="byte", max_length=8))
    assert tok.vocab_size == 259
    assert tok.encode("ab") == [BOS, 3 + ord("a"), 3 + ord("b"), EOS]
    with pytest.raises(ValueError, match="kind"):
        TokenizerConfig(kind="bpe")


def test_same_image_tower_as_flame_and_same_initial_weights():
    flame_cfg = flame_config("tiny", text_dim=16)
    torch.manual_seed(3)
    flame = FlameModel(flame_cfg)
    torch.manual_seed(3)
    clip = ClipBaseline(_small())
    assert clip.config.vision == flame_cfg.vision and clip.config.head_hidden == flame_cfg.head_hidden
    image_side = {k: v for k, v in clip.state_dict().items() if k.startswith(("visual.", "head."))}
    flame_side = {k: v for k, v in flame.state_dict().items() if k.startswith(("visual.", "head."))}
    assert image_side.keys() == flame_side.keys()
    assert all(torch.equal(image_side[k], flame_side[k]) for k in image_side)
    images = torch.randn(3, 3, 32, 32)
    assert torch.allclose(clip.encode_image(images), flame.encode_image(images))


def test_text_embedding_ignores_padding_and_batch_composition():
    torch.manual_seed(0)
    model = ClipBaseline(_small()).eval()
    alone = model.text_encoder().encode(["a red square"])  # (1, 1, D)
    mixed = model.text_encoder().encode(["two shapes: a blue star and an orange circle", "a red square"])
    assert alone.shape == (1, 1, 16)
    torch.testing.assert_close(mixed[1], alone[0], rtol=1e-5, atol=1e-6)
    assert torch.allclose(alone.norm(dim=-1), torch.ones(1, 1))


def test_text_tower_trains():
    torch.manual_seed(0)
    model = ClipBaseline(_small())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert all(p.requires_grad for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    images = torch.randn(4, 3, 32, 32)
    batch = model.tokenize(["a red square", "a blue star", "a green cross", "an orange circle"])
    losses = []
    for _ in range(5):
        out = model(images, batch["input_ids"], batch["attention_mask"])
        opt.zero_grad()
        out["loss"].backward()
        assert model.text.token_embed.weight.grad is not None and model.text_proj.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(out["loss"].item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    for name in ("text.token_embed.weight", "text.blocks.0.attn.in_proj_weight", "text_proj.weight",
                 "visual.patch_embed.weight", "head.net.0.weight"):
        assert not torch.equal(before[name], dict(model.named_parameters())[name]), name


def test_scored_by_flame_evaluation_code(tmp_path):
    torch.manual_seed(0)
    model = ClipBaseline(_small(**{"kind": "byte", "max_length": 32})).eval()
    images = torch.randn(3, 3, 32, 32)
    encoder = model.text_encoder()
    retrieval = score_retrieval(model, encoder, images, ["a", "b", "c", "d"], [0, 1, 2, 2])
    assert retrieval["num_captions"] == 4 and 0 <= retrieval["image_to_text_R@1"] <= 100
    assert retrieval["image_to_text_R@10"] == retrieval["text_to_image_R@10"] == 100.0  # everything in the top 10
    zero_shot = score_zero_shot(model, encoder, images, [0, 1, 1], ["red square", "blue star"], ["a {}."])
    assert zero_shot["num_classes"] == 2 and zero_shot["top5"] == 100.0
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ClipBaseline.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    torch.testing.assert_close(loaded.text_encoder().encode(["x y"]), encoder.encode(["x y"]))
    with pytest.raises(ValueError, match="missing"):
        loaded.load_saved_state_dict({})
