"""The save/load contract (frozenvl.pretrained), the same tests for every model: Flamingo, FLAME's image tower and
the CLIP baseline. Each gets a tiny instance whose saved tensors are moved off their initial values, so a load that
did not happen (or loaded the wrong tensors) shows in the outputs."""

from __future__ import annotations

import json
import re

import pytest
import torch

from frozenvl.config import ConfigError
from frozenvl.constants import CONFIG_NAME, WEIGHTS_NAME
from frozenvl.flame.baseline import ClipBaseline, baseline_config
from frozenvl.flame.model import FlameModel, flame_config
from frozenvl.flamingo import Flamingo
from frozenvl.testing import images, tiny_flamingo, tiny_lm, tiny_tokenizer, tiny_vision

KINDS = ["flamingo", "flame", "clip_baseline"]
CLASSES = {"flamingo": Flamingo, "flame": FlameModel, "clip_baseline": ClipBaseline}
OTHER = {"flamingo": "flame", "flame": "clip_baseline", "clip_baseline": "flamingo"}


def move(model) -> None:
    """Shift every saved tensor a little, in place: the model no longer equals a fresh one."""
    with torch.no_grad():
        for t in model.saved_state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.02)


def tiny(kind: str):
    """(model, outputs(model) -> tensor, backbones() -> the keyword arguments ``from_pretrained`` needs)."""
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    if kind == "flamingo":
        model, processor = tiny_flamingo(open_gates=True)
        batch = processor(["<image>a red cube<|endofchunk|>two"], [images(1)])

        def outputs(m):
            return m(**batch).logits

        def backbones():  # fresh instances: a Flamingo takes its LM apart
            return {"lm": tiny_lm("llama", seed=0), "tokenizer": tiny_tokenizer(), "vision": tiny_vision(seed=0)}
    elif kind == "flame":
        model = FlameModel(flame_config("tiny", text_dim=16, text={"lm": "x", "layer": 2}))

        def outputs(m):
            return m.encode_image(pixels)

        def backbones():
            return {}
    else:
        model = ClipBaseline(baseline_config("tiny", embed_dim=16, text={"width": 32, "layers": 1, "heads": 2},
                                             tokenizer={"max_length": 16}))

        def outputs(m):
            return torch.cat([m.encode_image(pixels), m.encode_text(**m.tokenize(["a red cube", "two stars"]))])

        def backbones():
            return {}
    move(model)
    return model.eval(), outputs, backbones


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_gives_identical_outputs(kind, tmp_path):
    model, outputs, backbones = tiny(kind)
    model.save_pretrained(tmp_path / "saved")
    loaded = CLASSES[kind].from_pretrained(tmp_path / "saved", **backbones()).eval()
    assert type(loaded) is CLASSES[kind] and loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(outputs(loaded), outputs(model))


@pytest.mark.parametrize("kind", KINDS)
def test_folder_holds_the_config_and_the_saved_tensors(kind, tmp_path):
    from safetensors.torch import load_file

    model, _, _ = tiny(kind)
    model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    config = json.loads((tmp_path / "saved" / CONFIG_NAME).read_text())
    assert config["model_type"] == kind == CLASSES[kind].model_type
    saved = load_file(str(tmp_path / "saved" / WEIGHTS_NAME))
    expected = model.saved_state_dict()
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[n], t) for n, t in expected.items())


@pytest.mark.parametrize("kind", KINDS)
def test_a_kill_while_saving_leaves_the_previous_folder(kind, tmp_path, monkeypatch):
    import safetensors.torch

    model, outputs, backbones = tiny(kind)
    model.save_pretrained(tmp_path / "saved")
    with torch.no_grad():
        expected = outputs(model)
    move(model)  # a later state, whose save is killed half-way

    def killed(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path / "saved")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # no temporary folder left behind
    loaded = CLASSES[kind].from_pretrained(tmp_path / "saved", **backbones()).eval()
    with torch.no_grad():
        assert torch.equal(outputs(loaded), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_a_folder_of_another_model_is_refused(kind, tmp_path):
    model, _, _ = tiny(kind)
    model.save_pretrained(tmp_path / "saved")
    other = CLASSES[OTHER[kind]]
    with pytest.raises(ValueError, match=f"saved holds a {kind} model, not a {other.model_type} model"):
        other.from_pretrained(tmp_path / "saved")
    # A config.json without a model type (written before the save/load contract) is refused as well.
    path = tmp_path / "saved" / CONFIG_NAME
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "model_type"}))
    with pytest.raises(ValueError, match=f"no model_type in {CONFIG_NAME}, not a {kind} model"):
        CLASSES[kind].from_pretrained(tmp_path / "saved")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("missing", [CONFIG_NAME, WEIGHTS_NAME])
def test_a_missing_file_is_an_error_naming_the_folder(kind, missing, tmp_path):
    model, _, backbones = tiny(kind)
    model.save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / missing).unlink()
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(tmp_path / 'saved'))} .*{re.escape(missing)}"):
        CLASSES[kind].from_pretrained(tmp_path / "saved", **backbones())


@pytest.mark.parametrize("kind", KINDS)
def test_an_unknown_config_field_is_an_error_naming_it(kind, tmp_path):
    model, _, backbones = tiny(kind)
    model.save_pretrained(tmp_path / "saved")
    path = tmp_path / "saved" / CONFIG_NAME
    path.write_text(json.dumps({**json.loads(path.read_text()), "bogus": 1}))
    with pytest.raises(ConfigError, match=f"{re.escape(str(path))}: unknown key bogus"):
        CLASSES[kind].from_pretrained(tmp_path / "saved", **backbones())
