"""The FLAME command-line path end to end: `frozenvl flame embed` -> `frozenvl train` (model.kind: flame) ->
`frozenvl flame eval` on the checkpoint the run wrote, on the synthetic world's evaluation splits; and a killed
`flame embed` keeps what it committed."""

import json
from pathlib import Path

import pytest
import torch
import yaml

import frozenvl.flame.caption_sources as caption_sources
from frozenvl.cli import main
from frozenvl.data import WorldConfig, generate_world
from frozenvl.flame.evaluate import classification_metrics
from frozenvl.flame.inference import encode_image, zero_shot_classifier
from frozenvl.flame.model import FlameModel
from frozenvl.flame.store import EmbeddingStore
from frozenvl.flame.synthetic_eval import with_article, world_classification
from frozenvl.flame.text_encoder import FacetTextEncoder
from frozenvl.testing import tiny_lm, tiny_tokenizer

N_PAIRS = 40


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("flame_path")
    lm = root / "lm"
    tiny_lm("llama").save_pretrained(lm)
    tiny_tokenizer().save_pretrained(lm)
    generate_world(root / "world", WorldConfig(image_size=32, n_pairs=N_PAIRS, n_eval=6, shard_size=20,
                                               splits=("pairs", "classification", "heldout", "retrieval")),
                   progress=False, log=None)
    return root


def _shards(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "world" / "train").glob("pairs-*.tar"))


def _embed_args(root: Path, out: str, *extra: str) -> list[str]:
    return ["flame", "embed", "--input", *_shards(root), "--out", str(root / out), "--lm", str(root / "lm"),
            "--prompts", "short", "--no-progress", *extra]


def test_embed_train_eval_from_the_command_line(world, capsys):
    root = world
    assert main(_embed_args(root, "store")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["written"] == N_PAIRS and report["duplicates"] == 0 and report["already_stored"] == 0
    assert report["shards_written"] == 1 and report["captions_per_s"] > 0  # 40 < --commit-every 256

    tree = {
        "model": {"kind": "flame", "flame": {"store": str(root / "store"), "preset": "tiny", "image_size": 32,
                                             "vision": {"width": 32, "layers": 1, "heads": 2}, "head_hidden": 32,
                                             "sampled_facets": 2}},
        "data": {"datasets": [{"name": "pairs", "shards": str(root / "world/train/pairs-*.tar"), "batch_size": 8}]},
        "optim": {"lr": 1e-3},
        "train": {"run_dir": str(root / "run"), "steps": 3, "checkpoint_every": 2, "log_every": 1,
                  "progress": False, "device": "cpu"},
    }
    (root / "flame.yaml").write_text(yaml.safe_dump(tree))
    assert main(["train", "--config", str(root / "flame.yaml")]) == 0
    latest = root / "run" / "checkpoints" / "step-00000003"
    assert latest.is_dir()
    capsys.readouterr()

    results = {}
    runs = {"classification": ["--task", "zero-shot"], "heldout": ["--task", "zero-shot", "--split", "heldout"],
            "retrieval": ["--task", "retrieval"]}
    for name, extra in runs.items():
        out = root / f"{name}.json"
        # The run folder: its latest checkpoint is evaluated.
        assert main(["flame", "eval", "--checkpoint", str(root / "run"), "--format", "world", "--data",
                     str(root / "world"), *extra, "--out", str(out)]) == 0, capsys.readouterr().err
        results[name] = json.loads(out.read_text())
        assert results[name]["checkpoint"] == str(latest) and results[name]["split"] == name
        # The text encoder is the one the store was made with, read from the checkpoint.
        assert results[name]["text"]["lm"] == str(root / "lm") and results[name]["text"]["layer"] == 3
    for name in ("classification", "heldout"):
        assert results[name]["num_images"] == 6 and results[name]["num_classes"] == 36
        assert results[name]["text"]["prompt_set"] == "raw"
    assert results["retrieval"]["num_images"] == 6 and results["retrieval"]["text"]["prompt_set"] == "short"
    assert 0 <= results["retrieval"]["text_to_image_R@1"] <= 100

    # The step folder itself gives the same numbers; they are the model's own zero-shot scores on the split.
    out = root / "step.json"
    assert main(["flame", "eval", "--checkpoint", str(latest), "--format", "world", "--data", str(root / "world"),
                 "--task", "zero-shot", "--split", "heldout", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["top1"] == results["heldout"]["top1"]
    model = FlameModel.from_pretrained(latest).eval()
    data = world_classification(root / "world", "heldout", 32)
    encoder = FacetTextEncoder.from_source(str(root / "lm"), "raw", layer=3)
    with torch.no_grad():
        logits = encode_image(model, data.images) @ zero_shot_classifier(
            encoder, [with_article(c) for c in data.classnames], ["{}."]).T
    assert classification_metrics(logits, data.labels)["top1"] == pytest.approx(results["heldout"]["top1"])

    # What the command refuses, in one line each.
    assert main(["flame", "eval", "--checkpoint", str(root / "world"), "--format", "world", "--data",
                 str(root / "world"), "--task", "zero-shot"]) == 2
    assert "not a FLAME checkpoint" in capsys.readouterr().err
    assert main(["flame", "eval", "--checkpoint", str(root / "run"), "--format", "world", "--data",
                 str(root / "world"), "--task", "zero-shot", "--split", "retrieval"]) == 2
    assert "zero-shot splits are" in capsys.readouterr().err


def test_killed_embed_keeps_the_committed_captions(world, capsys, monkeypatch):
    root = world
    assert main(_embed_args(root, "full", "--commit-every", "8", "--batch-size", "3")) == 0
    capsys.readouterr()
    real = caption_sources.iter_captions

    def killed_after(n):
        def iter_captions(paths):
            for i, record in enumerate(real(paths)):
                if i == n:
                    raise RuntimeError("killed")
                yield record
        return iter_captions

    monkeypatch.setattr(caption_sources, "iter_captions", killed_after(21))
    with pytest.raises(RuntimeError, match="killed"):
        main(_embed_args(root, "killed", "--commit-every", "8", "--batch-size", "3"))
    assert len(EmbeddingStore(root / "killed")) == 16  # two commits of 8; the 5 uncommitted captions are lost
    monkeypatch.setattr(caption_sources, "iter_captions", real)
    assert main(_embed_args(root, "killed", "--commit-every", "8", "--batch-size", "3")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["already_stored"] == 16 and report["written"] == N_PAIRS - 16 and report["duplicates"] == 0
    files = lambda d: {p.name: p.read_bytes() for p in sorted((root / d).iterdir()) if p.is_file()}  # noqa: E731
    assert files("killed") == files("full")  # the resumed store is the uninterrupted one, byte for byte
