"""The paper's objective: accumulating every dataset before one step equals the sum of the per-dataset gradients
(weighted by lambda); round robin uses one dataset per step; per-dataset losses are reported."""

from __future__ import annotations

import copy

import torch
from trainfixtures import tiny_config

from frozenvl.train.loop import Trainer


def test_accumulated_gradient_is_the_weighted_sum_of_per_dataset_gradients(tmp_path, world):
    cfg, _ = tiny_config(world, tmp_path / "run", overrides=("optim.grad_clip=null",))
    trainer = Trainer(cfg)
    trainer.task.set_train_mode()
    start = copy.deepcopy(trainer.mixture.state_dict())
    captured = {}

    def capture():  # the optimizer step sees the accumulated gradient
        captured.update({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad})

    trainer.optimizer.step = capture
    metrics = trainer.train_step()
    assert {"loss/pairs", "loss/interleaved", "loss/video"} <= metrics.keys()

    # The same micro-batches, one dataset at a time.
    trainer.mixture.load_state_dict(start)
    per_dataset = {}
    A = cfg.train.grad_accum
    for name, weight in trainer.mixture.weights.items():
        trainer.optimizer.zero_grad(set_to_none=True)
        for a in range(A):
            batch = trainer.mixture.loaders[a][name].next()
            (trainer.task.loss(trainer.model, batch)["loss"] * weight / A).backward()
        per_dataset[name] = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    for n, g in captured.items():
        total = sum(per_dataset[d][n] for d in per_dataset)
        torch.testing.assert_close(g, total, rtol=1e-5, atol=1e-7, msg=n)
    # Each dataset contributes something distinct: dropping one would break the equality above.
    norms = [sum(g.norm() ** 2 for g in per_dataset[d].values()).item() for d in per_dataset]
    assert all(v > 0 for v in norms) and len(set(norms)) == len(norms)
    trainer.close()


def test_round_robin_uses_one_dataset_per_step(tmp_path, world):
    cfg, _ = tiny_config(world, tmp_path / "run", overrides=("data.mixing=round_robin",))
    trainer = Trainer(cfg)
    assert [trainer.mixture.names_for_step(s) for s in range(4)] == [["pairs"], ["interleaved"], ["video"], ["pairs"]]
    m = trainer.train_step()
    assert "loss/pairs" in m and "loss/interleaved" not in m and "loss/video" not in m
    trainer.close()


def test_slots_split_the_data_disjointly(tmp_path, world):
    cfg, _ = tiny_config(world, tmp_path / "run")
    trainer = Trainer(cfg)
    keys = [set(trainer.mixture.loaders[a]["pairs"].next()["keys"]) for a in range(2)]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    trainer.close()
