"""Every vision encoder prepares photos exactly as its own library does (<= 1e-4 per value).

The oracles are the libraries' own evaluation transforms, built here independently of frozenvl: timm's
``create_transform(**resolve_data_config(model=...))``, the transform open_clip's ``create_model_and_transforms``
returns, a transformers image processor, open_clip's ``image_transform``. The photos are skimage's (offline),
of several aspect ratios, with a greyscale one. frozenvl's former hand-written transform differed from each by
0.015 to 3.4 on these photos.
"""

import pickle

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from frozenvl.backbones.vision import ImageTransform, VisionEncoder, build_vision, from_transformers

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")  # 512x512, 400x600, 300x451, 427x640, grey
TOL = 1e-4


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: getattr(skimage.data, name)() for name in PHOTOS}


def _rgb(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image).convert("RGB")


def assert_as_library(encoder: VisionEncoder, oracle, photos: dict[str, np.ndarray]) -> None:
    """frozenvl's transform (from the HWC array and from the PIL image) equals ``oracle(RGB PIL image)``."""
    for name, image in photos.items():
        expected = oracle(_rgb(image))  # (3, H, W)
        for given in (image, Image.fromarray(image)):
            ours = encoder.transform(given)
            assert ours.dtype == torch.float32 and ours.shape == expected.shape, name
            assert ours.shape == (3, encoder.image_size, encoder.image_size), name
            diff = (ours - expected).abs().max().item()
            assert diff <= TOL, f"{name}: {diff}"


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])
def test_timm_cnn_and_vit_as_timm(arch, photos):
    import timm
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(arch, pretrained=False, num_classes=0)
    oracle = create_transform(**resolve_data_config(model=model), is_training=False)
    assert_as_library(build_vision(model), oracle, photos)


def test_timm_vit_built_for_another_size_keeps_its_config(photos):
    """A ViT built with img_size=32 gets timm's transform of its config (crop_pct, interpolation) at 32."""
    import timm
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32)
    cfg = {**resolve_data_config(model=model), "input_size": (3, 32, 32)}
    assert_as_library(build_vision(model), create_transform(**cfg, is_training=False), photos)


def _tiny_open_clip(name: str, vision_cfg: dict, **kwargs):
    import open_clip

    text_cfg = dict(context_length=8, vocab_size=100, width=16, heads=2, layers=1)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, embed_dim=16,
                                                                 vision_cfg=vision_cfg, text_cfg=text_cfg, **kwargs)
    return model, preprocess


def test_open_clip_vit_as_open_clip(photos):
    vit = dict(image_size=224, layers=1, width=32, patch_size=32, head_width=16)
    model, preprocess = _tiny_open_clip("ViT-B-32", vit)
    assert_as_library(build_vision(model), preprocess, photos)


def test_open_clip_preprocess_cfg_is_followed(photos):
    """A SigLIP-style preprocess_cfg (squash resize, bilinear, mean/std 0.5) on a timm-trunk tower: all of it."""
    trunk = dict(image_size=224, timm_model_name="vit_tiny_patch16_224", timm_pool="map", timm_proj="none",
                 timm_model_pretrained=False)
    model, preprocess = _tiny_open_clip("ViT-B-16-SigLIP", trunk, image_mean=(0.5,) * 3, image_std=(0.5,) * 3,
                                        image_interpolation="bilinear", image_resize_mode="squash")
    assert_as_library(build_vision(model), preprocess, photos)


def _tiny_clip_vision(image_size: int):
    import transformers as tf

    return tf.CLIPVisionModel(tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                  num_attention_heads=2, image_size=image_size, patch_size=32))


def _processor_oracle(processor):
    return lambda image: processor(images=image, return_tensors="pt")["pixel_values"][0]


def test_transformers_clip_as_its_image_processor(photos):
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor()  # CLIP's: short side 224 (bicubic), centre crop 224, CLIP mean/std
    model = _tiny_clip_vision(224)
    assert_as_library(from_transformers(model, image_processor=processor), _processor_oracle(processor), photos)
    # Without a processor: the one transformers registers for the model type, at the model's size.
    assert_as_library(build_vision(model), _processor_oracle(processor), photos)


def test_transformers_siglip_default_processor(photos):
    import transformers as tf

    model = tf.SiglipVisionModel(tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                       num_attention_heads=2, image_size=64, patch_size=16))
    processor = tf.SiglipImageProcessor(size={"height": 64, "width": 64})  # squash to 64, mean/std 0.5
    assert_as_library(build_vision(model), _processor_oracle(processor), photos)


def test_hf_source_reads_the_checkpoint_processor(tmp_path, photos):
    """``hf:FOLDER`` uses the processor saved with the checkpoint (here not CLIP's default size); a checkpoint
    without one is one error naming it."""
    from transformers import CLIPImageProcessor

    model = _tiny_clip_vision(96)
    model.save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 112}, crop_size={"height": 96, "width": 96}).save_pretrained(
        tmp_path / "clip")
    oracle = _processor_oracle(CLIPImageProcessor.from_pretrained(tmp_path / "clip"))
    assert_as_library(build_vision(f"hf:{tmp_path / 'clip'}"), oracle, photos)

    model.save_pretrained(tmp_path / "bare")
    with pytest.raises(OSError, match="image processor of 'hf:.*bare'"):
        build_vision(f"hf:{tmp_path / 'bare'}")


def test_own_towers_use_open_clip_evaluation_transform(photos):
    """frozenvl's own towers (FLAME, wrapped modules): open_clip's evaluation transform, as FLAME trains."""
    from open_clip import image_transform

    from frozenvl.constants import CLIP_MEAN, CLIP_STD

    encoder = VisionEncoder.from_module(torch.nn.Conv2d(3, 4, 8, stride=8), feature_dim=4, image_size=64,
                                        transform=ImageTransform(64, CLIP_MEAN, CLIP_STD))
    assert_as_library(encoder, image_transform(64, is_train=False, mean=CLIP_MEAN, std=CLIP_STD), photos)


@pytest.mark.slow
def test_embedded_efficientnet_as_timm(photos):
    """The embedded EfficientNet-Lite0 is timm's efficientnet_lite0: timm's transform of its config."""
    import timm
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config(model=timm.create_model("efficientnet_lite0", pretrained=False))
    assert_as_library(build_vision("embedded:efficientnet-lite0"), create_transform(**config, is_training=False),
                      photos)


def test_flamingo_processor_feeds_the_library_transform(photos):
    """The Flamingo processor (and so the data pipeline and the evaluation, which batch through it) gives the
    library's pixels, in its (B, T_img, F, C, H, W) layout."""
    import timm
    from timm.data import create_transform, resolve_data_config

    from frozenvl.flamingo import build
    from frozenvl.testing import TINY_FLAMINGO, tiny_lm, tiny_tokenizer

    vision = timm.create_model("resnet18", pretrained=False, num_classes=0)
    oracle = create_transform(**resolve_data_config(model=vision), is_training=False)
    _, processor = build(lm=tiny_lm(), tokenizer=tiny_tokenizer(), vision=vision, **TINY_FLAMINGO)
    batch = processor(text=["<image>a cat<|endofchunk|>", "<image>coffee<|endofchunk|>"],
                      images=[[photos["chelsea"]], [Image.fromarray(photos["coffee"])]])
    assert batch["pixel_values"].shape == (2, 1, 1, 3, 224, 224)
    for row, name in enumerate(("chelsea", "coffee")):
        expected = oracle(_rgb(photos[name]))
        assert (batch["pixel_values"][row, 0, 0] - expected).abs().max().item() <= TOL


def test_transforms_pickle_and_refuse_bad_inputs(photos):
    """Data loader workers pickle the transforms; grey, one-channel and RGBA arrays become RGB; other inputs are
    one error."""
    import timm
    from transformers import CLIPImageProcessor

    encoders = [build_vision(timm.create_model("resnet18", pretrained=False, num_classes=0)),
                from_transformers(_tiny_clip_vision(224), image_processor=CLIPImageProcessor())]
    image = photos["coffee"]
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 7, np.uint8)], -1)
    grey = photos["camera"]
    for encoder in encoders:
        clone = pickle.loads(pickle.dumps(encoder.transform))
        assert torch.equal(clone(image), encoder.transform(image))
        assert torch.equal(encoder.transform(rgba), encoder.transform(image))
        assert torch.equal(encoder.transform(grey[..., None]), encoder.transform(grey))
        with pytest.raises(TypeError, match="expected a PIL image or an HWC uint8 array"):
            encoder.transform("not an image")
        with pytest.raises(TypeError, match="dtype float32"):
            encoder.transform(image.astype(np.float32) / 255)
