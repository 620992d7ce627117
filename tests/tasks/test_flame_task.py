import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from frozenvl.flame.model import FlameModel
from frozenvl.flame.store import EmbeddingStoreWriter, store_meta
from frozenvl.tasks import FlameTask


def test_flame_task_collates_from_the_store_and_trains(tmp_path):
    desc = {"lm": "x", "layer": 3, "num_layers": 4, "prompt_set": "short", "prompt_set_hash": "h", "num_facets": 3,
            "dim": 16, "max_length": 64, "official_compat": False}
    writer = EmbeddingStoreWriter(tmp_path / "store", store_meta(desc))
    rng = np.random.default_rng(0)
    writer.write_shard(["a", "b", "c"], rng.standard_normal((3, 3, 16)).astype(np.float16))
    task = FlameTask(tmp_path / "store", "tiny", sampled_facets=2)
    assert task.model.config.text["prompt_set_hash"] == "h"
    collate = pickle.loads(pickle.dumps(task.collate))  # loader workers get a copy
    img = Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8))
    samples = [{"key": k, "images": [img], "caption": "c"} for k in ("a", "zzz", "c")]
    batch = collate(samples)
    assert batch["keys"] == ["a", "c"] and collate.missing == 1
    assert batch["images"].shape == (2, 3, 32, 32) and batch["text_embeddings"].shape == (2, 3, 16)
    task.set_train_mode()
    out = task.loss(task.model, batch)
    out["loss"].backward()
    assert out["tokens"].item() == 2 and task.model.head.net[0].weight.grad is not None
    task.save_pretrained(tmp_path / "ckpt")
    loaded = FlameModel.from_pretrained(tmp_path / "ckpt")
    loaded.load_saved_state_dict({n: p.detach() for n, p in task.model.named_parameters()})
    assert torch.equal(loaded.head.net[0].weight, task.model.head.net[0].weight)
    with pytest.raises(ValueError, match="missing"):
        loaded.load_saved_state_dict({})
