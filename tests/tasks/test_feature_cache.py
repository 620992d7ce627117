"""The frozen-encoder feature cache (frozenvl.flamingo.feature_cache) inside the Flamingo training task.

Oracle: the same task with the cache off (the encoder runs on the pixels every step). Tolerance: the cache stores
fp16, so features differ from the encoder's fp32 output by fp16 rounding (relative 2**-11 per value); through a
tiny Flamingo with open gates the test allows 1e-5 relative on the loss and 2e-3 of each tensor's largest gradient
on its gradient (measured: 9e-8 and 1.3e-4). A cache miss and a hit give bitwise the same loss and gradients.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from frozenvl.config import ConfigError, from_dict
from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN
from frozenvl.flamingo.feature_cache import FeatureCache, encoder_identity
from frozenvl.tasks import ModelConfig, build_task
from frozenvl.testing import open_all_gates, tiny_vision

TINY_FLAMINGO = dict(cross_attn_every=2, resampler_depth=1, num_latents=4, resampler_dim_head=8, resampler_heads=2,
                     xattn_dim_head=8, xattn_heads=2, ff_mult=2, max_frames=4, max_length=96)


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8))


def _samples(start: int = 0) -> list[dict]:
    pairs = [{"key": f"k{i}", "kind": "pair", "images": [_image(i)],
              "text": f"{IMAGE_TOKEN}a red square number {i}{END_OF_CHUNK}"} for i in range(start, start + 2)]
    video = {"key": f"v{start}", "kind": "video", "images": [[_image(100 + start), _image(101 + start)]],
             "text": f"{IMAGE_TOKEN}a ball moves left{END_OF_CHUNK}"}
    return pairs + [video]  # an image and a 2-frame video in one batch: frame_mask pads the images


def _task(tmp_path, cache: bool | None, **model):
    torch.manual_seed(0)
    section = {"kind": "flamingo", "lm": "tiny:llama", "vision": "tiny", "flamingo": TINY_FLAMINGO,
               "feature_cache": cache, "feature_cache_dir": str(tmp_path / "features"), **model}
    task = build_task(from_dict(ModelConfig, section, "model"))
    open_all_gates(task.model)  # at 0 the images cannot change the loss
    task.set_train_mode()
    return task


def _count_encoder_calls(task) -> list[int]:
    calls = [0]
    task.model.vision.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _loss_and_grads(task, batch) -> tuple[float, dict[str, torch.Tensor]]:
    task.model.zero_grad(set_to_none=True)
    out = task.loss(task.model, batch)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in task.model.named_parameters() if p.requires_grad}
    return float(out["loss"].detach()), grads


def test_loss_and_gradients_equal_those_without_the_cache(tmp_path):
    plain, cached = _task(tmp_path, cache=False), _task(tmp_path, cache=True)
    assert plain.feature_cache is None and cached.feature_cache is not None
    batch = plain.collate(_samples())
    assert batch["frame_mask"] is not None and not bool(batch["frame_mask"].all())
    loss0, grads0 = _loss_and_grads(plain, batch)
    loss1, grads1 = _loss_and_grads(cached, batch)  # miss: encoded, stored, fed from the stored fp16 values
    loss2, grads2 = _loss_and_grads(cached, batch)  # hit
    assert cached.feature_cache.stats.misses == 4 and cached.feature_cache.stats.hits == 4
    assert loss1 == loss2  # a miss and a hit feed the same numbers
    assert all(torch.equal(grads1[n], grads2[n]) for n in grads1)
    assert loss1 == pytest.approx(loss0, rel=1e-5)
    assert grads0.keys() == grads1.keys()
    moved = 0
    for name, g0 in grads0.items():
        scale = float(g0.abs().max())
        assert float((grads1[name] - g0).abs().max()) <= 2e-3 * scale + 1e-8, name
        moved += scale > 0
    assert moved > len(grads0) // 2  # the gradients compared are real ones, not all zero
    resampler = [n for n in grads0 if n.startswith("resampler.")]
    assert resampler and any(float(grads0[n].abs().max()) > 0 for n in resampler)


def test_second_epoch_reads_the_cache_and_never_runs_the_encoder(tmp_path):
    task = _task(tmp_path, cache=None)  # default: on, the encoder is frozen
    calls = _count_encoder_calls(task)
    epoch = [task.collate(_samples(0)), task.collate(_samples(10))]
    first = [float(task.loss(task.model, b)["loss"].detach()) for b in epoch]
    assert calls[0] == 2 and task.feature_cache.stats.misses == 8
    second = [float(task.loss(task.model, b)["loss"].detach()) for b in epoch]
    assert calls[0] == 2 and task.feature_cache.stats.hits == 8
    assert first == second
    # Another run (a new task, same cache folder) starts warm.
    again = _task(tmp_path, cache=None)
    calls_again = _count_encoder_calls(again)
    assert [float(again.loss(again.model, b)["loss"].detach()) for b in epoch] == first
    assert calls_again[0] == 0 and again.feature_cache.stats.hits == 8


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "garbage"])
def test_a_corrupted_entry_is_recomputed(tmp_path, damage):
    task = _task(tmp_path, cache=True)
    batch = task.collate(_samples())
    expected = float(task.loss(task.model, batch)["loss"].detach())
    files = sorted(task.feature_cache.folder.rglob("*.safetensors"))
    assert len(files) == 4
    victim = files[0]
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        victim.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip_byte":  # same length, valid header: only the stored digest can tell
        data[-3] ^= 0xFF
        victim.write_bytes(bytes(data))
    else:
        victim.write_bytes(b"not a safetensors file")
    calls = _count_encoder_calls(task)
    assert float(task.loss(task.model, batch)["loss"].detach()) == expected
    stats = task.feature_cache.stats
    assert calls[0] == 1 and stats.corrupted == 1 and stats.misses == 4 + 1
    # Rewritten: the next read is a hit.
    task.loss(task.model, batch)
    assert calls[0] == 1 and stats.corrupted == 1


def test_another_encoder_does_not_read_the_entries(tmp_path):
    task = _task(tmp_path, cache=True)
    batch = task.collate(_samples())
    task.loss(task.model, batch)
    other_weights = _task(tmp_path, cache=True)
    other_weights.model.vision = tiny_vision(seed=1)  # same architecture and transform, other weights
    other_weights.feature_cache = FeatureCache(tmp_path / "features", other_weights.model.vision)
    calls = _count_encoder_calls(other_weights)
    other_weights.loss(other_weights.model, batch)
    assert calls[0] == 1 and other_weights.feature_cache.stats.hits == 0
    identities = {encoder_identity(tiny_vision(seed=0)), encoder_identity(tiny_vision(seed=1)),
                  encoder_identity(tiny_vision(seed=0, image_size=48))}  # another transform
    assert len(identities) == 3
    assert encoder_identity(tiny_vision(seed=0)) == task.feature_cache.identity  # stable across instances


def test_config_switch(tmp_path):
    assert _task(tmp_path, cache=None, train_vision=True).feature_cache is None  # default: off when it trains
    assert _task(tmp_path, cache=False).feature_cache is None
    with pytest.raises(ConfigError, match="feature_cache needs a frozen vision encoder"):
        from_dict(ModelConfig, {"feature_cache": True, "train_vision": True}, "model")


def test_entries_do_not_depend_on_autocast(tmp_path):
    vision = tiny_vision(seed=0)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_bf16 = FeatureCache(tmp_path / "a", vision).frames(pixels)
    fp32 = FeatureCache(tmp_path / "b", vision).frames(pixels)
    assert torch.equal(under_bf16, fp32)
    assert torch.equal(fp32, vision(pixels).half().float())  # the encoder's fp32 output, rounded to fp16
