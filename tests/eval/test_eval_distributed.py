"""Evaluation over several processes: the queries are shared out by rank, every process encodes its own prefixes,
rank 0 scores the gathered predictions; the results equal one process's. Checked in one process (each rank's
share, the gather replaced by the other rank's recorded contribution) and for real under torchrun (2 gloo
processes on the CPU, `frozenvl eval flamingo` end to end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import frozenvl.eval.harness as harness
from frozenvl.cli import main as cli_main
from frozenvl.data import WorldConfig, generate_world
from frozenvl.eval import get_task
from frozenvl.eval.harness import EvalConfig, FewShotHarness, evaluate
from frozenvl.eval.synthetic import synthetic_task_data
from frozenvl.testing import tiny_flamingo


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("world")
    generate_world(path, WorldConfig(seed=0, image_size=32, n_eval=9, splits=("vqa", "classification")),
                   progress=False, log=None)
    return path


@pytest.fixture(scope="module")
def tiny():
    return tiny_flamingo("gpt2", seed=3, open_gates=True)


@pytest.mark.parametrize("task", ["synth_vqa", "synth_classification"])
def test_each_rank_takes_its_share_and_rank_0_gets_every_prediction(world, tiny, task, monkeypatch):
    model, processor = tiny
    spec, data = get_task(task), synthetic_task_data(task, world)
    config = EvalConfig(shots=(0, 2), trials=2, batch_size=2)
    single = FewShotHarness(model, processor, config).run(spec, data, progress=False)

    sent: list = []  # what rank 1 contributes to each gather, in call order
    monkeypatch.setattr(harness, "all_gather_object", lambda obj: sent.append(obj) or [None, obj])
    other = FewShotHarness(model, processor, config, rank=1, world_size=2).run(spec, data, progress=False)
    assert all(run["metrics"] == {} and run["predictions"] == [] for run in other.runs)  # rank 1 writes nothing
    received = iter(sent)
    monkeypatch.setattr(harness, "all_gather_object", lambda obj: [obj, next(received)])
    main = FewShotHarness(model, processor, config, rank=0, world_size=2).run(spec, data, progress=False)

    keys = [r.key for r in data.queries]
    for predictions, _ in sent:  # rank 1 evaluated the queries 1, 3, 5, ... only
        assert sorted(predictions) == sorted(keys[1::2])
    assert main.to_dict() == single.to_dict()


def test_a_rank_outside_the_world_is_refused(tiny):
    with pytest.raises(ValueError, match="rank must be in"):
        FewShotHarness(*tiny, rank=2, world_size=2)


def test_only_rank_0_writes(world, tiny, tmp_path, monkeypatch):
    spec, data = get_task("synth_classification"), synthetic_task_data("synth_classification", world)
    monkeypatch.setattr(harness, "all_gather_object", lambda obj: [None, obj])
    out = evaluate(*tiny, spec, data, EvalConfig(shots=(0,)), tmp_path, progress=False, rank=1, world_size=2)
    assert out.json_path is None and not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ torchrun
@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny Flamingo with open gates saved as a folder, its backbones (a tiny LM, a tiny CLIP vision model)
    saved as folders it references: what `frozenvl eval flamingo --model` loads in each process."""
    import frozenvl.flamingo as fl
    from frozenvl.testing import save_tiny_backbones

    root = tmp_path_factory.mktemp("model")
    lm, vit = save_tiny_backbones(root)
    model, _ = fl.build(lm=str(lm), vision=f"hf:{vit}", cross_attn_every=2, resampler_depth=1,
                        num_latents=4, resampler_dim_head=8, resampler_heads=2, xattn_dim_head=8, xattn_heads=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate.alpha"):
                p.fill_(0.7)  # images matter
    model.save_pretrained(root / "flamingo")
    return root / "flamingo"


def test_torchrun_two_processes_equal_one(world, model_folder, tmp_path):
    args = ["eval", "flamingo", "--model", str(model_folder), "--task", "synth_vqa", "--data", str(world),
            "--shots", "0", "2", "--trials", "2", "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    frozenvl = str(Path(sys.executable).with_name("frozenvl"))
    assert cli_main([*args, "--out", str(tmp_path / "one")]) == 0  # one process: this one
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "--no-python", frozenvl, *args, "--out", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("results:") == 1  # rank 0 alone prints and writes
    results = [json.loads((tmp_path / run / "synth_vqa.json").read_text()) for run in ("one", "two")]
    assert results[0] == results[1]
    assert len(results[0]["runs"]) == 4 and all(len(r["predictions"]) == 9 for r in results[0]["runs"])
