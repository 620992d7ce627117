"""``model.packing``: the Flamingo task's padding-free batches. Oracle: the same task with padded batches."""

import numpy as np
import pytest
import torch
from PIL import Image

from frozenvl.config import ConfigError, from_dict
from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN
from frozenvl.tasks import ModelConfig, build_task
from frozenvl.testing import open_all_gates

TINY_FLAMINGO = dict(cross_attn_every=2, resampler_depth=1, num_latents=4, resampler_dim_head=8, resampler_heads=2,
                     xattn_dim_head=8, xattn_heads=2, ff_mult=2, max_frames=4, max_length=96)


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8))


def _samples() -> list[dict]:
    """A short pair, a page with text before its first image, and a 2-frame video (frame_mask in play)."""
    return [{"key": "p", "kind": "pair", "images": [_image(0)], "text": f"{IMAGE_TOKEN}a red square{END_OF_CHUNK}"},
            {"key": "i", "kind": "interleaved", "images": [_image(1), _image(2)],
             "text": f"a page {IMAGE_TOKEN}one blue circle{END_OF_CHUNK} then {IMAGE_TOKEN}two{END_OF_CHUNK}"},
            {"key": "v", "kind": "video", "images": [[_image(3), _image(4)]],
             "text": f"{IMAGE_TOKEN}a ball moves left{END_OF_CHUNK}"}]


def _task(tmp_path, **model):
    torch.manual_seed(0)
    section = {"kind": "flamingo", "lm": "tiny:llama", "vision": "tiny", "flamingo": TINY_FLAMINGO,
               "feature_cache_dir": str(tmp_path / "features"), **model}
    task = build_task(from_dict(ModelConfig, section, "model"))
    open_all_gates(task.model)  # at 0 the images cannot change the loss
    task.set_train_mode()
    return task


def _loss_and_grads(task, batch):
    task.model.zero_grad(set_to_none=True)
    out = task.loss(task.model, batch)
    out["loss"].backward()
    return out, {n: p.grad.clone() for n, p in task.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("cache", [False, True])
def test_packed_batches_train_as_the_padded_ones(tmp_path, cache):
    padded_task, packed_task = _task(tmp_path, feature_cache=cache), _task(tmp_path, feature_cache=cache,
                                                                           packing=True)
    padded, packed = padded_task.collate(_samples()), packed_task.collate(_samples())
    assert padded["input_ids"].shape[0] == 3 and packed["input_ids"].shape[0] == 1
    assert packed["input_ids"].numel() == int(padded["attention_mask"].sum()) < padded["input_ids"].numel()
    assert packed["frame_mask"].shape[:2] == (1, 4)
    out0, grads0 = _loss_and_grads(padded_task, padded)
    out1, grads1 = _loss_and_grads(packed_task, packed)
    assert int(out1["tokens"]) == int(out0["tokens"]) and int(out1["samples"]) == int(out0["samples"]) == 3
    assert float(out1["loss"].detach()) == pytest.approx(float(out0["loss"].detach()), rel=1e-5)
    assert grads0.keys() == grads1.keys() and any(n.startswith("resampler.") for n in grads0)
    for name, g in grads0.items():
        assert torch.allclose(grads1[name], g, atol=1e-6, rtol=1e-4), name


def test_an_lm_that_mixes_packed_samples_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"model.packing: the LM 'tiny:opt'"):
        _task(tmp_path, lm="tiny:opt", packing=True)


def test_packing_is_a_flamingo_switch():
    with pytest.raises(ConfigError, match="model.packing is for model.kind flamingo"):
        from_dict(ModelConfig, {"kind": "flame", "packing": True}, "model")
