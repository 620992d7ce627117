"""experiments/visual_pathway.py on the tiny model: closed gates give no image gain; the oracle code is right."""

import importlib.util
import sys
from pathlib import Path

import torch

from frozenvl.testing import tiny_flamingo

_PATH = Path(__file__).resolve().parents[2] / "experiments" / "visual_pathway.py"
_spec = importlib.util.spec_from_file_location("visual_pathway", _PATH)
vp = importlib.util.module_from_spec(_spec)
sys.modules["visual_pathway"] = vp  # dataclasses look their module up
_spec.loader.exec_module(vp)


def _split(model, n: int, seed: int) -> "vp.Split":
    g = torch.Generator().manual_seed(seed)
    colours = ["red", "blue"]
    texts = [f"<image>a {colours[i % 2]} circle<|endofchunk|>" for i in range(n)]
    feats = torch.randn(n, 4, model.vision.feature_dim, generator=g)
    return vp.Split(feats, texts)


def test_oracle_features_code_the_caption_attributes():
    f = vp.oracle_features(["<image>a red star<|endofchunk|>"], n_feat=3, dim=28)
    vocab = [*vp.COLOURS, *vp.SHAPES]
    on = {vocab[j] for j in range(len(vocab)) if float(f[0, :, 2 * j:2 * j + 2].mean()) > 2}
    assert on == {"red", "star"}
    assert torch.allclose(f[0, 0], f[0, 2], atol=1.0)  # the same code at every feature position


def test_closed_gates_give_no_gain_and_training_opens_them():
    model, processor = tiny_flamingo()
    train, held = _split(model, 16, 0), _split(model, 4, 1)
    history = vp.train_adapters(model, processor, train, held, steps=4, batch_size=4, lr=1e-3, gate_lr=1e-2,
                                warmup=1, eval_every=2, log=lambda _: None)
    assert [h["step"] for h in history] == [0, 2, 4]
    assert history[0]["right"] == history[0]["rolled"]  # gates at 0: the images cannot matter
    gates = [float(p.detach()) for n, p in model.named_parameters() if n.endswith("gate.alpha")]
    assert max(abs(a) for a in gates) > 0.01  # Adam moves a gate ~gate_lr per step; lr alone: <= 4e-3
