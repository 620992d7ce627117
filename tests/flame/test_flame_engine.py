"""FLAME end to end through the shared pieces: synthetic pair shards -> `flame embed` -> the training engine."""

import json
from pathlib import Path

from PIL import Image

from frozenvl.cli.data import main as data_main
from frozenvl.cli.flame import main as flame_main
from frozenvl.flame.model import FlameModel
from frozenvl.tasks import FlameTask
from frozenvl.testing import tiny_lm, tiny_tokenizer
from frozenvl.train.config import RunConfig
from frozenvl.train.loop import train


def test_flame_trains_through_the_shared_engine(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert data_main(["synth", "world", "--pairs", "48", "--interleaved", "0", "--video", "0", "--eval", "8",
                      "--episodes", "1", "--shard-size", "24", "--splits", "pairs", "--image-size", "32",
                      "--quiet"]) == 0
    tiny_lm("llama").save_pretrained("lm")
    tiny_tokenizer().save_pretrained("lm")
    shards = ["world/train/pairs-000000.tar", "world/train/pairs-000001.tar"]
    capsys.readouterr()
    assert flame_main(["embed", "--input", *shards, "--out", "store", "--lm", "lm", "--prompts", "short",
                       "--no-progress", "--shard-size", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 48
    config = RunConfig.from_dict({
        "model": {"lm": "tiny", "vision": "tiny"},
        "data": {"datasets": [{"name": "pairs", "shards": "world/train/pairs-{000000..000001}.tar",
                               "batch_size": 8}], "eval_datasets": []},
        "train": {"run_dir": "run", "steps": 6, "log_every": 1, "precision": "fp32"},
    })
    task = FlameTask("store", "tiny", sampled_facets=2)
    result = train(config, task=task)
    assert result.step == 6 and result.nonfinite_steps == 0
    assert task.collate.missing == 0  # every shard sample found its embeddings by key
    task.save_pretrained("ckpt")
    assert FlameModel.from_pretrained("ckpt").config.text["prompt_set"] == "short"
    # The engine's checkpoint is a FLAME folder: from_pretrained and `frozenvl flame eval` read it.
    assert FlameModel.from_pretrained(result.checkpoint).config == task.model.config
    for name, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        Path("classes", name).mkdir(parents=True)
        Image.new("RGB", (36, 36), colour).save(f"classes/{name}/0.png")
    capsys.readouterr()
    assert flame_main(["eval", "--checkpoint", str(result.checkpoint), "--task", "zero-shot", "--format",
                       "imagefolder", "--data", "classes"]) == 0
    assert json.loads(capsys.readouterr().out)["num_classes"] == 2
