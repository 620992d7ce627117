"""A run with ``model.packing`` (padding-free batches) trains as the same run with padded batches: the same
samples per step, the same per-dataset losses and final weights up to float rounding."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from trainfixtures import tiny_config

from frozenvl.constants import WEIGHTS_NAME
from frozenvl.train import checkpoint as ckpt
from frozenvl.train.loop import CHECKPOINTS_DIR, METRICS_NAME, train


def _logged(run_dir):
    return [json.loads(line) for line in (run_dir / METRICS_NAME).read_text().splitlines() if '"lr"' in line]


def test_a_packed_run_matches_the_padded_run(tmp_path, world):
    padded_cfg, _ = tiny_config(world, tmp_path / "padded", steps=3, checkpoint_every=3, grad_accum=1)
    packed_cfg, _ = tiny_config(world, tmp_path / "packed", ("model.packing=true",), steps=3, checkpoint_every=3,
                                grad_accum=1)
    assert packed_cfg.model.packing and not padded_cfg.model.packing
    train(padded_cfg), train(packed_cfg)
    padded, packed = _logged(tmp_path / "padded"), _logged(tmp_path / "packed")
    assert len(padded) == len(packed) == 3
    for a, b in zip(padded, packed):
        for key in ("loss/pairs", "loss/interleaved", "loss/video", "objective"):
            assert abs(b[key] - a[key]) <= 1e-4 * abs(a[key]), (key, a[key], b[key])
    w_padded = load_file(str(ckpt.step_dir(tmp_path / "padded" / CHECKPOINTS_DIR, 3) / WEIGHTS_NAME))
    w_packed = load_file(str(ckpt.step_dir(tmp_path / "packed" / CHECKPOINTS_DIR, 3) / WEIGHTS_NAME))
    assert w_padded.keys() == w_packed.keys()
    for name, w in w_padded.items():
        assert torch.allclose(w_packed[name], w, atol=1e-4), name
