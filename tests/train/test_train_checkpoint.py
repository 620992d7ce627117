"""Checkpoints: only trainable weights, no pickle, atomic (an interrupted write leaves the last good one), last K
kept, loadable as a Flamingo folder (the save/load contract); init_from reads such folders and refuses others;
NaN/inf steps skipped, counted, and the run stops after the limit."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file
from trainfixtures import tiny_config

from frozenvl.constants import WEIGHTS_NAME
from frozenvl.train import checkpoint as ckpt
from frozenvl.train.loop import METRICS_NAME, NonFiniteLossError, Trainer, train


def test_checkpoint_holds_only_trainable_weights_and_no_pickle(tmp_path, world):
    cfg, _ = tiny_config(world, tmp_path / "run", steps=6, checkpoint_every=2, keep_checkpoints=2)
    result = train(cfg)
    found = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in found] == ["step-00000004", "step-00000006"]  # last K=2 kept
    last = found[-1]
    assert result.checkpoint == last
    assert {p.suffix for p in last.iterdir()} <= {".safetensors", ".json"}  # no pickle anywhere
    weights = load_file(str(last / WEIGHTS_NAME))
    from frozenvl.testing import tiny_flamingo

    architecture = {k: v for k, v in cfg.model.flamingo.to_dict().items() if k not in ("lm", "vision")}
    model, _ = tiny_flamingo(**architecture)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert set(weights) == trainable and not set(weights) & frozen
    opt = load_file(str(last / "optimizer.safetensors"))
    assert {k.rpartition("::")[0] for k in opt} == trainable  # frozen parameters carry no optimizer state
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == 6 and set(state["data"]) == {"0", "1"}  # both slots' positions
    # The folder is a Flamingo folder.
    from frozenvl.flamingo import Flamingo
    from frozenvl.testing import tiny_lm, tiny_tokenizer, tiny_vision

    loaded = Flamingo.from_pretrained(last, lm=tiny_lm(), tokenizer=tiny_tokenizer(), vision=tiny_vision())
    for n, t in loaded.trainable_state_dict().items():
        assert torch.equal(t, weights[n])


@dataclass
class TinyConfig:
    width: int = 2


def test_interrupted_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    w = {"a": torch.ones(2)}
    opt = {"state": {"a": {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 1.0}]}
    rng = [ckpt.capture_rng()]
    ckpt.save_checkpoint(root, 1, "tiny", TinyConfig(), w, opt, rng, {"nonfinite_steps": 0, "data": {}}, keep=3)

    def crash(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt  # a kill in the middle of writing (the model part is written by then)

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(root, 2, "tiny", TinyConfig(), {"a": torch.full((2,), 2.0)}, opt, rng,
                             {"nonfinite_steps": 0, "data": {}}, keep=3)
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-00000001"]
    assert ckpt.latest_checkpoint(root).name == "step-00000001"
    assert not list(root.glob("step-00000002*"))
    c = ckpt.load_checkpoint(ckpt.latest_checkpoint(root), "tiny")
    assert torch.equal(c.weights["a"], torch.ones(2))
    assert torch.equal(c.optimizer["state"]["a"]["exp_avg"], torch.zeros(2))


class NaNAt:
    """Wraps a task: the loss is NaN at the given optimizer steps."""

    def __init__(self, task, steps, trainer_ref):
        self.inner, self.steps, self.ref = task, set(steps), trainer_ref

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def loss(self, model, batch):
        out = self.inner.loss(model, batch)
        if self.ref["trainer"].step in self.steps:
            out["loss"] = out["loss"] * float("nan")
        return out


def _trainer_with_nan(cfg, steps):
    from frozenvl.tasks import build_task

    ref = {}
    task = NaNAt(build_task(cfg.model), steps, ref)
    trainer = Trainer(cfg, task=task)
    ref["trainer"] = trainer
    return trainer


def test_nonfinite_step_is_skipped_and_counted(tmp_path, world):
    cfg, _ = tiny_config(world, tmp_path / "run", steps=3, checkpoint_every=0)
    trainer = _trainer_with_nan(cfg, steps=[1])
    trainer.task.set_train_mode()
    trainer.train_step()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    m = trainer.train_step()  # step 1: NaN
    assert m["skipped"] == 1.0 and trainer.nonfinite_steps == 1
    for n, p in trainer.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, before[n]), n  # no update from a NaN step
            assert p.grad is None
    m = trainer.train_step()
    assert m["skipped"] == 0.0 and torch.isfinite(torch.tensor(m["loss"]))
    trainer.close()


def test_run_stops_after_the_nonfinite_limit(tmp_path, world):
    cfg, _ = tiny_config(world, tmp_path / "run", steps=10, checkpoint_every=0, max_nonfinite_steps=2)
    trainer = _trainer_with_nan(cfg, steps=range(100))
    with pytest.raises(NonFiniteLossError, match="3 steps had a NaN/inf loss.*max_nonfinite_steps=2"):
        trainer.fit()
    assert trainer.step == 3
    trainer.close()
    records = [json.loads(x) for x in (tmp_path / "run" / METRICS_NAME).read_text().splitlines()]
    assert [r["nonfinite_steps"] for r in records if "nonfinite_steps" in r] == [1, 2]  # logged every step


def test_init_from_starts_a_new_run_at_saved_weights(tmp_path, world):
    from frozenvl.tasks import build_task
    from frozenvl.train.config import ConfigError, load_config

    cfg, path = tiny_config(world, tmp_path / "first", steps=2, checkpoint_every=2)
    first = train(cfg).checkpoint
    saved = load_file(str(first / WEIGHTS_NAME))
    fresh = build_task(load_config(path).model).model.trainable_state_dict()
    assert any(not torch.equal(fresh[n], saved[n]) for n in saved)  # training moved them
    task = build_task(load_config(path, (f"model.init_from={first}",)).model)
    for n, t in task.model.trainable_state_dict().items():
        assert torch.equal(t, saved[n]), n
    with pytest.raises(FileNotFoundError, match="init_from"):
        build_task(load_config(path, (f"model.init_from={tmp_path / 'nowhere'}",)).model)
    with pytest.raises(ValueError, match="init_from .*shape"):
        build_task(load_config(path, (f"model.init_from={first}", "model.flamingo.num_latents=3")).model)
    from frozenvl.flame.model import FlameModel, flame_config

    other = tmp_path / "flame"
    FlameModel(flame_config("tiny", text_dim=16)).save_pretrained(other)
    with pytest.raises(ValueError, match=f"init_from {re.escape(str(other))}: .*flame model, not a flamingo model"):
        build_task(load_config(path, (f"model.init_from={other}",)).model)
    with pytest.raises(ConfigError, match="init_from"):
        load_config(path, (f"model.init_from={first}", "model.kind=flame"))
