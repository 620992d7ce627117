"""The CLIP baseline: the same image tower as FLAME, a trainable text tower, FLAME's evaluation API."""

import pytest
import torch

from frozenvl.flame.baseline import ClipBaseline, ClipBaselineConfig, baseline_config
from frozenvl.flame.evaluate import score_retrieval, score_zero_shot
from frozenvl.flame.model import FlameModel, flame_config
from frozenvl.flame.simple_tokenizer import SimpleTokenizer, TokenizerConfig

TEXTS = ["A red square.", "two shapes: a blue star and an ORANGE circle, left of   a green cross", "x"]


def _small(**tok) -> ClipBaselineConfig:
    return baseline_config("tiny", embed_dim=16, text={"width": 32, "layers": 2, "heads": 2},
                           tokenizer={"max_length": 16, **tok})


def test_tokens_are_open_clips():
    import open_clip

    tok = SimpleTokenizer(TokenizerConfig(max_length=12))
    batch = tok(TEXTS)
    expected = open_clip.tokenize(TEXTS, context_length=12)  # (B, 12): [SOT] ... [EOT] 0 ...
    assert torch.equal(batch["input_ids"], expected)
    assert tok.vocab_size == 49408 and tok.eot_id == 49407
    assert batch["input_ids"][1, -1] == tok.eot_id  # the long text is cut, EOT kept
    assert batch["attention_mask"].sum(1).tolist() == [(row != 0).sum().item() for row in expected]
    with pytest.raises(ValueError, match="kind"):
        TokenizerConfig(kind="word")


def test_text_tower_is_open_clips():
    from open_clip.transformer import TextTransformer

    torch.manual_seed(0)
    model = ClipBaseline(_small()).eval()
    assert isinstance(model.text, TextTransformer)
    reference = TextTransformer(context_length=16, vocab_size=49408, width=32, heads=2, layers=2, output_dim=16)
    reference.load_state_dict(model.text.state_dict())  # the same module layout and names
    ids = model.tokenize(TEXTS)["input_ids"]
    with torch.no_grad():
        expected = torch.nn.functional.normalize(reference.eval()(ids), dim=-1)
    torch.testing.assert_close(model.encode_text(ids), expected)


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
        assert model.text.token_embedding.weight.grad is not None and model.text.text_projection.grad.abs().sum() > 0
        opt.step()
        losses.append(out["loss"].item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    for name in ("text.token_embedding.weight", "text.transformer.resblocks.0.attn.in_proj_weight",
                 "text.text_projection",
                 "visual.patch_embed.weight", "head.net.0.weight"):
        assert not torch.equal(before[name], dict(model.named_parameters())[name]), name


def test_scored_by_flame_evaluation_code(tmp_path):
    torch.manual_seed(0)
    model = ClipBaseline(_small(max_length=32)).eval()
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
