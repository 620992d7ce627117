"""The task contract (``frozenvl.tasks.base.Task``), checked the same way for every model kind, as the engine uses
it: a task from ``build_task(model config)``; a picklable collator (loader workers get a copy); ``loss(model,
batch)`` with a finite scalar loss and a positive token count; gradients for the trainable parameters only; frozen
backbones kept in eval mode by ``set_train_mode``; the model saved by ``save_pretrained``."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from frozenvl.config import from_dict
from frozenvl.constants import END_OF_CHUNK, IMAGE_TOKEN
from frozenvl.flame.store import EmbeddingStoreWriter, store_meta
from frozenvl.tasks import ModelConfig, build_task

TINY_FLAMINGO = dict(cross_attn_every=2, resampler_depth=1, num_latents=4, resampler_dim_head=8, resampler_heads=2,
                     xattn_dim_head=8, xattn_heads=2, ff_mult=2, max_frames=4, max_length=96)
TOWER = {"preset": "tiny", "image_size": 32, "vision": {"width": 32, "layers": 1, "heads": 2}, "head_hidden": 32}
KINDS = ["flamingo", "flame", "clip_baseline"]


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8))


def _store(root) -> str:
    desc = {"lm": "x", "layer": 3, "num_layers": 4, "prompt_set": "short", "prompt_set_hash": "h", "num_facets": 3,
            "dim": 16, "max_length": 64, "official_compat": False}
    writer = EmbeddingStoreWriter(root / "store", store_meta(desc))
    writer.write_shard(["k0", "k1", "k2"], np.random.default_rng(0).standard_normal((3, 3, 16)).astype(np.float16))
    return str(root / "store")


def _model_section(kind: str, root) -> dict:
    if kind == "flamingo":
        return {"kind": kind, "lm": "tiny:llama", "vision": "tiny", "flamingo": TINY_FLAMINGO}
    if kind == "flame":
        return {"kind": kind, "flame": {**TOWER, "store": _store(root), "sampled_facets": 2}}
    return {"kind": kind, "clip_baseline": {**TOWER, "embed_dim": 16, "text": {"width": 32, "layers": 1, "heads": 2}}}


def _samples() -> list[dict]:
    return [{"key": f"k{i}", "kind": "pair", "images": [_image(i)], "caption": f"a red square number {i}",
             "text": f"{IMAGE_TOKEN}a red square number {i}{END_OF_CHUNK}"} for i in range(3)]


@pytest.fixture(params=KINDS)
def task(request, tmp_path):
    torch.manual_seed(0)
    config = from_dict(ModelConfig, _model_section(request.param, tmp_path), "model")  # checked as it is built
    return build_task(config)


def test_collate_loss_and_gradients(task):
    collate = pickle.loads(pickle.dumps(task.collate))
    batch = collate(_samples())
    task.set_train_mode()
    out = task.loss(task.model, batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and out["tokens"].item() > 0
    out["loss"].backward()
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert trainable
    for name, p in task.model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    assert isinstance(task.token_counter("a red square"), int)


def test_set_train_mode_keeps_frozen_backbones_in_eval_mode(task):
    """Frozen modules stay in eval mode (no dropout, BatchNorm statistics fixed); what trains is in train mode."""
    task.set_train_mode()
    training = 0
    for name, module in task.model.named_modules():
        params = list(module.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params):
            assert not module.training, f"{name} is frozen but in train mode"
        training += bool(params) and module.training
    assert training > 0


def test_save_pretrained_writes_the_trainable_weights(task, tmp_path):
    from safetensors.torch import load_file

    task.save_pretrained(tmp_path / "saved")
    saved = {}
    for f in (tmp_path / "saved").glob("*.safetensors"):
        saved.update(load_file(str(f)))
    for name, p in task.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(saved[name], p.detach()), name
