import numpy as np
import pytest
import torch

from frozenvl.backbones.vision import ImageTransform, VisionEncoder, build_vision


def _check(encoder: VisionEncoder, tokens: int, dim: int):
    pixels = torch.stack([encoder.transform(np.full((40, 48, 3), 128, dtype=np.uint8))] * 2)
    assert pixels.shape[1:] == (3, encoder.image_size, encoder.image_size)
    out = encoder(pixels)
    assert out.shape == (2, tokens, dim) and encoder.feature_dim == dim
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.module.training  # a frozen encoder stays in eval mode


def test_timm_cnn_and_vit():
    import timm

    cnn = build_vision(timm.create_model("resnet18", pretrained=False, num_classes=0))
    _check(cnn, 49, 512)
    vit = build_vision(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32))
    _check(vit, 1 + 4, 192)  # class token kept, 2x2 patches


def test_open_clip_patch_tokens():
    from open_clip.transformer import VisionTransformer

    visual = VisionTransformer(image_size=32, patch_size=8, width=32, layers=1, heads=2, mlp_ratio=2.0,
                               output_dim=16)
    _check(build_vision(visual), 16, 32)  # 4x4 patches, class token dropped


def test_open_clip_tower_of_the_caller_is_not_changed():
    """The adapter reads the patch tokens without setting ``output_tokens`` on the caller's tower; they are the
    tokens open_clip itself returns with ``output_tokens=True``."""
    import copy

    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    visual = VisionTransformer(image_size=32, patch_size=8, width=32, layers=1, heads=2, mlp_ratio=2.0,
                               output_dim=16)
    reference = copy.deepcopy(visual).eval()  # the encoder runs its tower in eval mode
    reference.output_tokens = True
    encoder = build_vision(visual)
    assert visual.output_tokens is False
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(encoder(pixels), reference(pixels)[1])
        assert visual(pixels).shape == (2, 16)  # the caller's tower still returns its pooled embedding only


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_transformers_vision_models(kind):
    import transformers as tf

    if kind == "clip":
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                       num_attention_heads=2, image_size=32, patch_size=8))
        _check(build_vision(model), 17, 32)
    else:
        model = tf.SiglipVisionModel(tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                           num_attention_heads=2, image_size=32, patch_size=8))
        enc = build_vision(model)
        assert enc.transform.mean == (0.5, 0.5, 0.5)
        _check(enc, 16, 32)


def test_bad_sources_and_inputs():
    with pytest.raises(ValueError, match="unknown embedded vision encoder 'nope'"):
        build_vision("embedded:nope")
    with pytest.raises(ValueError, match="vision source must be"):
        build_vision("resnet50")
    with pytest.raises(ValueError, match="unknown vision source kind"):
        build_vision("ftp:thing")
    enc = VisionEncoder.from_module(torch.nn.Conv2d(3, 4, 8, stride=8), feature_dim=4, image_size=32)
    with pytest.raises(ValueError, match=r"pixels must be \(N, 3, H, W\)"):
        enc(torch.zeros(1, 1, 32, 32))
    with pytest.raises(TypeError, match="expected a PIL image"):
        ImageTransform(32)("not an image")


def test_language_sources_fail_clearly(tmp_path):
    from frozenvl.backbones.language import load_causal_lm

    with pytest.raises(ValueError, match="unknown embedded LM 'nope'"):
        load_causal_lm("embedded:nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_causal_lm(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="needs its tokenizer"):
        load_causal_lm(torch.nn.Linear(1, 1))


def test_flame_tower_as_a_frozen_encoder(tmp_path):
    from frozenvl.flame.model import FlameModel, flame_config

    flame = FlameModel(flame_config("tiny", text_dim=16))
    flame.save_pretrained(tmp_path / "flame")
    enc = build_vision(f"flame:{tmp_path / 'flame'}")
    _check(enc, 16, 32)  # 32x32 images, 8x8 patches, width 32
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 32)
        assert torch.allclose(enc(x), flame.visual(x), atol=1e-6)
