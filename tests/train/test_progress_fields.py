"""What a first-time user reads while training: per-token losses (the weighted sum apart), and a progress bar that
shows loss, lr and samples/s at every update."""

import json
import math

import pytest
from trainfixtures import tiny_config

from frozenvl.train.loop import METRICS_NAME, train


class RecordingBar:
    """Stands in for tqdm: records every set_postfix."""

    postfixes: list[dict] = []

    def __init__(self, *args, **kwargs):
        RecordingBar.postfixes = []

    def update(self, n=1):
        pass

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        RecordingBar.postfixes.append({**(ordered_dict or {}), **kwargs})

    def write(self, text):
        pass

    def close(self):
        pass


def test_metrics_log_per_token_losses_and_the_objective_apart(tmp_path, world):
    cfg, _ = tiny_config(world, tmp_path / "run", steps=2, log_every=1, checkpoint_every=0)
    train(cfg)
    weights = {d.name: d.weight for d in cfg.data.datasets}
    records = [json.loads(line) for line in (tmp_path / "run" / METRICS_NAME).read_text().splitlines()]
    steps = [r for r in records if "objective" in r]
    assert len(steps) == 2
    for r in steps:
        per_dataset = {name: r[f"loss/{name}"] for name in weights}
        objective = sum(weights[n] * v for n, v in per_dataset.items())
        assert r["objective"] == pytest.approx(objective, rel=1e-9)
        assert r["loss"] == pytest.approx(objective / sum(weights.values()), rel=1e-9)
        # per token: between the datasets' per-token losses, not their sum
        assert min(per_dataset.values()) <= r["loss"] <= max(per_dataset.values())


def test_progress_bar_shows_loss_lr_and_samples_per_second_every_time(tmp_path, world, monkeypatch):
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    cfg, _ = tiny_config(world, tmp_path / "run", steps=4, log_every=2, checkpoint_every=0, progress=True)
    train(cfg)
    assert len(RecordingBar.postfixes) == 4 + 2  # every step, and every log_every record
    for fields in RecordingBar.postfixes:
        assert {"loss", "lr", "samples_s"} <= set(fields), fields
        assert float(fields["samples_s"]) > 0 and math.isfinite(float(fields["lr"]))
