"""`frozenvl generate` says when a model's gates are all closed: an untrained Flamingo ignores its images."""

import pytest
import torch

from frozenvl.cli import generate
from frozenvl.cli.main import main
from frozenvl.testing import tiny_flamingo


@pytest.mark.parametrize("open_gates", [False, True])
def test_generate_warns_when_every_gate_is_closed(monkeypatch, capsys, open_gates):
    model, processor = tiny_flamingo(open_gates=open_gates)
    monkeypatch.setattr(generate, "_load_flamingo", lambda args: (model, processor))
    assert main(["generate", "--prompt", "<image>Output:", "--image", "skimage:coffee", "--max-new-tokens", "2",
                 "--num-beams", "1"]) == 0
    err = capsys.readouterr().err
    assert ("cross-attention gates of this model are closed" in err) is not open_gates


def test_one_open_gate_is_enough_and_gateless_models_say_nothing():
    model, _ = tiny_flamingo()
    assert "all 4 cross-attention gates" in generate.closed_gates_warning(model)  # 2 blocks x (attn, ffw)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("ff_gate.alpha")).fill_(0.05)
    assert generate.closed_gates_warning(model) is None
    ungated, _ = tiny_flamingo(gating="none")
    assert generate.closed_gates_warning(ungated) is None
