"""`model.kind: flame` and `model.kind: clip_baseline` in a run config: the shared engine builds and trains them."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from frozenvl.constants import WEIGHTS_NAME
from frozenvl.data import WorldConfig, generate_world
from frozenvl.flame.caption_sources import iter_captions
from frozenvl.flame.store import EmbeddingStore, embed_to_store
from frozenvl.flame.text_encoder import FacetTextEncoder
from frozenvl.tasks import ClipBaselineTask, FlameTask, build_task
from frozenvl.testing import tiny_lm, tiny_tokenizer
from frozenvl.train.config import ConfigError, load_config
from frozenvl.train.loop import METRICS_NAME, train

REPO = Path(__file__).resolve().parents[2]
TOWER = {"preset": "tiny", "image_size": 32, "vision": {"width": 32, "layers": 1, "heads": 2}, "head_hidden": 32}


@pytest.fixture(scope="module")
def world_and_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("flame_engine")
    generate_world(root / "world", WorldConfig(image_size=32, n_pairs=40, n_eval=4, shard_size=20, splits=("pairs",)),
                   progress=False, log=None)
    encoder = FacetTextEncoder(tiny_lm("llama"), tiny_tokenizer(), "short")
    shards = sorted(str(p) for p in (root / "world" / "train").glob("pairs-*.tar"))
    embed_to_store(iter_captions(shards), encoder, root / "store", progress=False)
    return root


def _config_file(root: Path, kind: str, options: dict) -> Path:
    import yaml

    tree = {
        "model": {"kind": kind, kind: options},
        "data": {"datasets": [{"name": "pairs", "shards": str(root / "world/train/pairs-*.tar"), "batch_size": 8}]},
        "optim": {"lr": 1e-3},
        "train": {"run_dir": str(root / f"run-{kind}"), "steps": 3, "log_every": 1, "progress": False,
                  "device": "cpu"},
    }
    path = root / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize("kind", ["flame", "clip_baseline"])
def test_engine_trains_from_a_config(world_and_store, kind):
    root = world_and_store
    options = {**TOWER, "store": str(root / "store")}
    if kind == "flame":
        options["sampled_facets"] = 2
    else:
        options["text"] = {"width": 32, "layers": 1, "heads": 2}
    config = load_config(_config_file(root, kind, options))
    torch.manual_seed(config.train.seed)  # the engine seeds the same way before it builds the task
    initial = build_task(config.model)
    assert isinstance(initial, FlameTask if kind == "flame" else ClipBaselineTask)
    start = {n: p.detach().clone() for n, p in initial.model.named_parameters()}

    result = train(config)
    assert result.step == 3 and result.nonfinite_steps == 0 and torch.isfinite(torch.tensor(result.last_loss))
    ckpt = result.checkpoint
    assert ckpt is not None and (ckpt / WEIGHTS_NAME).is_file()
    weights = load_file(ckpt / WEIGHTS_NAME)
    assert set(weights) == set(start)  # every parameter of both models is trainable and saved
    assert all(weights[n].shape == start[n].shape for n in start)
    for name in ("visual.patch_embed.weight", "head.net.2.weight"):
        assert not torch.equal(weights[name], start[name]), f"{name} did not change"
    if kind == "clip_baseline":
        assert not torch.equal(weights["text.token_embedding.weight"], start["text.token_embedding.weight"])
        assert not torch.equal(weights["text.text_projection"], start["text.text_projection"])
    # The checkpoint is a folder of the model's own save/load contract.
    loaded = type(initial.model).from_pretrained(ckpt)
    assert loaded.config == initial.model.config
    assert all(torch.equal(t, weights[n]) for n, t in loaded.state_dict().items())
    records = [json.loads(line) for line in (Path(config.train.run_dir) / METRICS_NAME).read_text().splitlines()]
    assert all(r["samples_per_s"] > 0 for r in records if "samples_per_s" in r)  # throughput counts samples


def test_flame_text_side_has_no_trainable_parameter(world_and_store):
    task = FlameTask.from_options({**TOWER, "store": str(world_and_store / "store")})
    names = [n for n, p in task.model.named_parameters() if p.requires_grad]
    assert names == [n for n, _ in task.model.named_parameters()]
    # Only the image tower, its head and the loss's temperature/bias: nothing that reads text.
    assert all(n.startswith(("visual.", "head.", "loss.")) for n in names)
    assert task.model.config.text_dim == EmbeddingStore(world_and_store / "store").meta["dim"] == 32
    assert task.model.config.vision.image_size == 32 and task.model.config.vision.width == 32


def test_flame_throughput_counts_samples_without_input_ids(world_and_store):
    task = FlameTask.from_options({**TOWER, "store": str(world_and_store / "store")})
    from PIL import Image

    img = Image.new("RGB", (32, 32))
    key = EmbeddingStore(world_and_store / "store").keys()[0]
    batch = task.collate([{"key": key, "images": [img], "caption": "x"}] * 3)
    assert "input_ids" not in batch and int(task.loss(task.model, batch)["samples"]) == 3


def test_shipped_configs_validate():
    for name, kind in (("flame_tiny_cpu.yaml", "flame"), ("flame_clip_baseline_cpu.yaml", "clip_baseline")):
        config = load_config(REPO / "configs" / name)
        assert config.model.kind == kind and getattr(config.model, kind).image_size == 64


def test_bad_options_name_the_key(tmp_path):
    base = ["data.datasets=[{name: pairs, shards: x.tar}]"]
    with pytest.raises(ConfigError, match=r"unknown key model\.flame\.bogus; FlameTaskOptions has"):
        load_config(None, [*base, "model.kind=flame", "model.flame.store=s", "model.flame.bogus=1"])
    with pytest.raises(ConfigError, match=r"model\.flame\.store is empty"):
        load_config(None, [*base, "model.kind=flame"])
    with pytest.raises(ConfigError, match=r"model\.clip_baseline\.image_size 30 is not a multiple of patch_size 8"):
        load_config(None, [*base, "model.kind=clip_baseline", "model.clip_baseline.image_size=30"])
    with pytest.raises(ConfigError, match="model.kind must be one of"):
        load_config(None, [*base, "model.kind=clip"])
