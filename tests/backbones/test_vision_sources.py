"""Vision source strings: split at the right places, no silent random tower, every open_clip tower kind, and load
errors that name the model. No network: random builds, the Hub offline with an empty cache, or a recording
stand-in for the library's loader where a download would be needed."""

import pytest
import torch

from frozenvl.backbones.vision import VisionSource, build_vision, parse_vision_source


@pytest.fixture
def empty_offline_hub(tmp_path, monkeypatch):
    """The Hugging Face Hub offline, over an empty cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def _tiny_open_clip_model():
    import open_clip

    return open_clip.create_model("ViT-B-32", pretrained=None, embed_dim=16,
                                  vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
                                  text_cfg=dict(context_length=8, vocab_size=100, width=16, heads=2, layers=1))


@pytest.fixture
def open_clip_calls(monkeypatch):
    """open_clip.create_model replaced by a recorder that returns a tiny random model."""
    import open_clip

    calls = []
    model = _tiny_open_clip_model()  # built before the patch

    def create_model(model_name, pretrained=None, **kwargs):
        calls.append({"model_name": model_name, "pretrained": pretrained, **kwargs})
        return model

    monkeypatch.setattr(open_clip, "create_model", create_model)
    return calls


# ------------------------------------------------------------------------------------------------ grammar
@pytest.mark.parametrize("source, parsed", [
    ("open_clip:hf-hub:timm/ViT-B-16-SigLIP", VisionSource("open_clip", "hf-hub:timm/ViT-B-16-SigLIP")),
    ("open_clip:ViT-B-32/laion2b_s34b_b79k", VisionSource("open_clip", "ViT-B-32", "laion2b_s34b_b79k")),
    ("open_clip:ViT-B-32//weights/clip.pt", VisionSource("open_clip", "ViT-B-32", "/weights/clip.pt")),
    ("open_clip:ViT-B-32/none", VisionSource("open_clip", "ViT-B-32", None, random=True)),
    ("open_clip:local-dir:/models/a/b", VisionSource("open_clip", "local-dir:/models/a/b")),
    ("timm:hf-hub:timm/resnet18.a1_in1k", VisionSource("timm", "hf-hub:timm/resnet18.a1_in1k")),
    ("timm:vit_base_patch16_224.augreg_in21k", VisionSource("timm", "vit_base_patch16_224.augreg_in21k")),
    ("hf:openai/clip-vit-base-patch32", VisionSource("hf", "openai/clip-vit-base-patch32")),
    ("flame:runs/a/b:c", VisionSource("flame", "runs/a/b:c")),
])
def test_source_grammar(source, parsed):
    assert parse_vision_source(source) == parsed


@pytest.mark.parametrize("source, message", [
    ("open_clip:hf-hub:timm", "open_clip:hf-hub:ORG/REPO"),
    ("open_clip:hf-hub:a/b/c", "open_clip:hf-hub:ORG/REPO"),
    ("open_clip:/openai", "no open_clip model name"),
    ("open_clip:", "names no model"),
    ("resnet50", "vision source must be one of"),
    ("ftp:thing", "unknown vision source kind 'ftp'"),
])
def test_bad_source_strings(source, message):
    with pytest.raises(ValueError, match=message):
        parse_vision_source(source)


# ------------------------------------------------------------------------------------------------ open_clip
def test_open_clip_hub_name_is_kept_whole(open_clip_calls):
    encoder = build_vision("open_clip:hf-hub:timm/ViT-B-16-SigLIP")
    assert [c["model_name"] for c in open_clip_calls] == ["hf-hub:timm/ViT-B-16-SigLIP"]
    assert open_clip_calls[0]["pretrained"] is None and open_clip_calls[0]["require_pretrained"] is True
    assert encoder.name == "open_clip:hf-hub:timm/ViT-B-16-SigLIP"


def test_open_clip_tag_and_file(open_clip_calls, tmp_path):
    build_vision("open_clip:ViT-B-32/laion2b_s34b_b79k")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    build_vision(f"open_clip:ViT-B-32/{weights}")
    assert [(c["model_name"], c["pretrained"], c["require_pretrained"]) for c in open_clip_calls] == [
        ("ViT-B-32", "laion2b_s34b_b79k", True), ("ViT-B-32", str(weights), True)]


def test_open_clip_without_pretrained_is_refused_with_its_tags(open_clip_calls):
    with pytest.raises(ValueError, match=r"names no pretrained weights and would build a frozen random tower.*"
                                         r"laion2b_s34b_b79k.*open_clip:ViT-B-32/none"):
        build_vision("open_clip:ViT-B-32")
    with pytest.raises(ValueError, match="'nope' is neither a pretrained tag of ViT-B-32 .*openai"):
        build_vision("open_clip:ViT-B-32/nope")
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'"):
        build_vision("open_clip:ViT-Q-99/openai")
    assert open_clip_calls == []


def test_open_clip_random_on_purpose():
    """``/none`` builds the random tower for real (nothing to download)."""
    encoder = build_vision("open_clip:ViT-S-32/none")
    assert encoder.feature_dim == 384 and encoder.image_size == 224
    with torch.no_grad():
        assert encoder(torch.zeros(1, 3, 224, 224)).shape == (1, 49, 384)


def test_open_clip_offline_hub_error_names_the_model(empty_offline_hub):
    with pytest.raises(OSError, match=r"open_clip model 'hf-hub:timm/ViT-B-16-SigLIP'.*HF_HUB_OFFLINE"):
        build_vision("open_clip:hf-hub:timm/ViT-B-16-SigLIP")
    with pytest.raises(OSError, match=r"open_clip model 'ViT-B-32' \(open_clip:ViT-B-32/openai\)"):
        build_vision("open_clip:ViT-B-32/openai")


# -------------------------------------------------------------------------------------- open_clip towers
def _pixels(size: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 3, size, size)


def test_open_clip_timm_trunk_vit_tower():
    """A SigLIP-style tower (timm ViT trunk, attention-pool head): the trunk's tokens, class token dropped; the
    tower's own pooled output is its head over exactly these features."""
    from open_clip.timm_model import TimmModel

    tower = TimmModel("vit_tiny_patch16_224", embed_dim=16, image_size=224, pool="map", proj="none").eval()
    encoder = build_vision(tower)
    x = _pixels(224)
    with torch.no_grad():
        tokens = encoder(x)
        full = tower.trunk.forward_features(x)  # (2, 1 + 196, 192)
        assert tokens.shape == (2, 196, 192) and encoder.feature_dim == 192
        assert torch.equal(tokens, full[:, 1:])
        assert torch.allclose(tower.head(tower.trunk.forward_head(full)), tower(x), atol=1e-6)


def test_open_clip_convnext_tower():
    from open_clip.timm_model import TimmModel

    tower = TimmModel("convnext_atto", embed_dim=16, image_size=64, pool="", proj="linear").eval()
    encoder = build_vision(tower)
    x = _pixels(64)
    with torch.no_grad():
        tokens = encoder(x)  # (2, 2*2, 320)
        assert tokens.shape == (2, 4, 320) and encoder.feature_dim == 320
        grid = tokens.transpose(1, 2).reshape(2, 320, 2, 2)
        assert torch.allclose(tower.head(tower.trunk.forward_head(grid)), tower(x), atol=1e-6)


def test_open_clip_modified_resnet_tower():
    """RN50-style: the map the attention pool reads; the pool over our tokens is the tower's output."""
    from open_clip.modified_resnet import ModifiedResNet

    torch.manual_seed(0)
    tower = ModifiedResNet(layers=[1, 1, 1, 1], output_dim=16, heads=2, image_size=64, width=8).eval()
    encoder = build_vision(tower)
    x = _pixels(64)
    with torch.no_grad():
        tokens = encoder(x)
        assert tokens.shape == (2, 4, 256) and encoder.feature_dim == 256
        assert torch.allclose(tower.attnpool(tokens.transpose(1, 2).reshape(2, 256, 2, 2)), tower(x), atol=1e-5)


def test_open_clip_unsupported_tower_is_named():
    from open_clip.transformer import TextTransformer

    from frozenvl.backbones.vision import from_open_clip

    text = TextTransformer(context_length=4, vocab_size=10, width=8, heads=2, layers=1, output_dim=4)
    with pytest.raises(ValueError, match="my-model: the open_clip image tower TextTransformer is not supported"):
        from_open_clip(text, name="my-model")


# ------------------------------------------------------------------------------------------------ timm
def test_timm_offline_error_names_the_model(empty_offline_hub):
    with pytest.raises(OSError, match=r"timm model 'resnet18.a1_in1k' \(timm:resnet18.a1_in1k\).*HF_HUB_OFFLINE"):
        build_vision("timm:resnet18.a1_in1k")
    with pytest.raises(ValueError, match="unknown timm model 'resnet_nope'"):
        build_vision("timm:resnet_nope")


def test_timm_hub_name_is_kept_whole(monkeypatch):
    import timm

    calls = []
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: (calls.append((name, kw)), model)[1])
    encoder = build_vision("timm:hf-hub:timm/resnet18.a1_in1k")
    assert calls == [("hf-hub:timm/resnet18.a1_in1k", {"pretrained": True, "num_classes": 0})]
    assert encoder.name == "timm:hf-hub:timm/resnet18.a1_in1k"
